//! What Graph answers, read without I/O: a page of a user listing, a page of a delta round, a
//! `$batch` answer, a user, an invitation and an error body, each parsed from the bytes of the
//! answer into the typed result (or the [`GraphError`] the client returns), and the check of a
//! link Graph hands out against the Graph root. [`super::client`] calls these and nothing else
//! to read a body; the fuzz targets (`fuzz/`, [`crate::fuzzing`]) call the same functions.
//!
//! Every function takes what it names in its errors: the operation being done and the answer's
//! `request-id` header (`None` when there is none).
//!
//! Must not: send requests, read the clock (a `Retry-After` date is read against a `now`
//! passed in), or decide what to retry (the client does).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::error::GraphError;
use super::{DeltaChange, DirectoryUser, Invited, ObjectIdentity, RemovedReason};
use crate::remote::http;

/// A [`GraphError::Malformed`] of `operation`.
fn malformed(operation: &str, detail: String, request_id: Option<&str>) -> GraphError {
    GraphError::Malformed {
        operation: operation.to_owned(),
        detail,
        request_id: request_id.map(str::to_owned),
    }
}

/// Parses a link Graph hands out (`annotation` names it in errors: `@odata.nextLink`,
/// `@odata.deltaLink`) without rebuilding it, and refuses one that leaves the origin of `root`
/// (the bearer token must not be sent elsewhere); a relative link is taken relative to `root`.
pub(crate) fn check_link(
    root: &Url,
    annotation: &str,
    link: &str,
    operation: &str,
    request_id: Option<&str>,
) -> Result<Url, GraphError> {
    // Graph sends absolute links; a relative one is taken relative to the Graph root.
    let url = Url::parse(link)
        .or_else(|_| root.join(link))
        .map_err(|err| {
            malformed(
                operation,
                format!("{annotation} is not a URL ({err})"),
                request_id,
            )
        })?;
    if url.origin() != root.origin() && !same_loopback_service(&url, root) {
        return Err(malformed(
            operation,
            format!(
                "{annotation} points to {} instead of the Graph endpoint {}",
                url.origin().ascii_serialization(),
                root.origin().ascii_serialization()
            ),
            request_id,
        ));
    }
    Ok(url)
}

/// Whether `a` and `b` are the same port on this machine under two loopback names (`localhost`
/// and `127.0.0.1`): a local Graph double may name itself either way, and the token stays on
/// the machine.
pub(crate) fn same_loopback_service(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.port_or_known_default() == b.port_or_known_default()
        && http::is_loopback(a)
        && http::is_loopback(b)
}

/// One page of a user collection, read: its users and the page after it.
#[derive(Debug)]
pub(crate) struct UserPage {
    /// The users of the page, in order.
    pub(crate) users: Vec<DirectoryUser>,
    /// The `@odata.nextLink`, checked against the Graph root ([`check_link`]).
    pub(crate) next: Option<Url>,
}

/// Parses one page of a user collection (`{"value":[…],"@odata.nextLink":…}`); `what` names
/// it in errors (`page 3`, `the batched lookup`), `root` is the Graph root its nextLink must
/// stay on.
pub(crate) fn parse_user_page(
    bytes: &[u8],
    what: &str,
    root: &Url,
    operation: &str,
    request_id: Option<&str>,
) -> Result<UserPage, GraphError> {
    let page: Page = serde_json::from_slice(bytes).map_err(|err| {
        malformed(
            operation,
            format!("{what} is not a user collection: {err}"),
            request_id,
        )
    })?;
    let next = page
        .next_link
        .map(|link| check_link(root, "@odata.nextLink", &link, operation, request_id))
        .transpose()?;
    Ok(UserPage {
        users: page.value.into_iter().map(DirectoryUser::from).collect(),
        next,
    })
}

/// How a page of a delta round ends.
#[derive(Debug)]
pub(crate) enum DeltaEnd {
    /// `@odata.nextLink`: more pages of this round (checked against the Graph root).
    Next(Url),
    /// `@odata.deltaLink`: the last page; where the next round starts, as Graph sent it (checked
    /// against the Graph root, so that a link that could never be followed is not kept).
    Delta(String),
}

/// One page of a delta round, read.
#[derive(Debug)]
pub(crate) struct DeltaPageRead {
    /// The entries of the page, in order.
    pub(crate) changes: Vec<DeltaChange>,
    /// Whether the round goes on, and where.
    pub(crate) end: DeltaEnd,
}

/// Parses the `number`th page of a delta round: its entries, and exactly one of
/// `@odata.nextLink` and `@odata.deltaLink` (a page with both or neither is malformed: the
/// round would be incomplete), checked against `root`.
pub(crate) fn parse_delta_page(
    bytes: &[u8],
    number: usize,
    root: &Url,
    operation: &str,
    request_id: Option<&str>,
) -> Result<DeltaPageRead, GraphError> {
    let page: DeltaPage = serde_json::from_slice(bytes).map_err(|err| {
        malformed(
            operation,
            format!("delta page {number} is not a user collection: {err}"),
            request_id,
        )
    })?;
    let end = match (page.next_link, page.delta_link) {
        (Some(next), None) => DeltaEnd::Next(check_link(
            root,
            "@odata.nextLink",
            &next,
            operation,
            request_id,
        )?),
        (None, Some(delta)) => {
            check_link(root, "@odata.deltaLink", &delta, operation, request_id)?;
            DeltaEnd::Delta(delta)
        }
        (Some(_), Some(_)) => {
            return Err(malformed(
                operation,
                format!("delta page {number} has both an @odata.nextLink and an @odata.deltaLink"),
                request_id,
            ));
        }
        (None, None) => {
            return Err(malformed(
                operation,
                format!(
                    "delta page {number} has neither an @odata.nextLink nor an @odata.deltaLink, so the round is incomplete"
                ),
                request_id,
            ));
        }
    };
    Ok(DeltaPageRead {
        changes: page.value.into_iter().map(WireUser::into_change).collect(),
        end,
    })
}

/// Parses one user (or directory object: `noun` names what was expected in errors, e.g.
/// `user object`).
pub(crate) fn parse_user(
    bytes: &[u8],
    noun: &str,
    operation: &str,
    request_id: Option<&str>,
) -> Result<DirectoryUser, GraphError> {
    let user: WireUser = serde_json::from_slice(bytes)
        .map_err(|err| malformed(operation, format!("not a {noun}: {err}"), request_id))?;
    Ok(user.into())
}

/// Parses the answer of `POST /invitations`; an answer without `invitedUser.id` is malformed
/// (the caller looks the guest up by email).
pub(crate) fn parse_invitation(
    bytes: &[u8],
    operation: &str,
    request_id: Option<&str>,
) -> Result<Invited, GraphError> {
    let parsed: InvitationResponse = serde_json::from_slice(bytes).map_err(|err| {
        malformed(
            operation,
            format!("not an invitation object: {err}"),
            request_id,
        )
    })?;
    let user = parsed.invited_user.unwrap_or(InvitedUserRef {
        id: None,
        user_principal_name: None,
    });
    let user_id = user.id.filter(|id| !id.is_empty()).ok_or_else(|| {
        malformed(
            operation,
            "the invitation has no invitedUser.id; look the guest up by email".into(),
            request_id,
        )
    })?;
    Ok(Invited {
        user_id,
        user_principal_name: user.user_principal_name,
        status: parsed.status,
        request_id: request_id.map(str::to_owned),
    })
}

/// One inner answer of a `$batch`.
#[derive(Debug)]
pub(crate) struct Inner {
    /// The inner status.
    pub(crate) status: StatusCode,
    /// The inner `Retry-After`, read against the `now` of [`parse_batch`].
    pub(crate) retry_after: Option<Duration>,
    /// The inner `request-id` header.
    pub(crate) request_id: Option<String>,
    /// The inner body (`null` when absent).
    pub(crate) body: Value,
}

impl Inner {
    /// The inner body as bytes, for the parsers of this module.
    pub(crate) fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

/// Parses a `$batch` answer to the requests whose ids are the indexes in `pending`: one inner
/// answer per id, each exactly once, in any order (an unknown id, an id answered twice, an id
/// not answered or a status that is not HTTP make the answer malformed). `now` is the time an
/// inner `Retry-After` date is read against.
pub(crate) fn parse_batch(
    bytes: &[u8],
    pending: &[usize],
    now: SystemTime,
    operation: &str,
    request_id: Option<&str>,
) -> Result<Vec<(usize, Inner)>, GraphError> {
    let malformed = |detail: String| malformed(operation, detail, request_id);
    let parsed: BatchResponse = serde_json::from_slice(bytes)
        .map_err(|err| malformed(format!("not a batch response: {err}")))?;
    let mut answered: Vec<(usize, Inner)> = Vec::with_capacity(pending.len());
    for response in parsed.responses {
        let index = response
            .id
            .parse::<usize>()
            .ok()
            .filter(|i| pending.contains(i))
            .ok_or_else(|| malformed(format!("an answer to unknown request `{}`", response.id)))?;
        if answered.iter().any(|(i, _)| *i == index) {
            return Err(malformed(format!(
                "request `{}` was answered twice",
                response.id
            )));
        }
        let status = StatusCode::from_u16(response.status)
            .map_err(|_| malformed(format!("inner status {} is not HTTP", response.status)))?;
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
        };
        let retry_after = header("retry-after").and_then(|v| http::parse_retry_after(v, now));
        let request_id = header("request-id").map(str::to_owned);
        answered.push((
            index,
            Inner {
                status,
                retry_after,
                request_id,
                body: response.body,
            },
        ));
    }
    if answered.len() != pending.len() {
        return Err(malformed(format!(
            "{} of {} batch requests were not answered",
            pending.len() - answered.len(),
            pending.len()
        )));
    }
    Ok(answered)
}

/// The error of a failed inner answer of `operation` (fail closed: never "not found").
pub(crate) fn inner_error(operation: &str, inner: &Inner) -> GraphError {
    if inner.status == StatusCode::TOO_MANY_REQUESTS {
        return GraphError::Throttled {
            operation: operation.to_owned(),
            retry_after: inner.retry_after,
            request_id: inner.request_id.clone(),
        };
    }
    let error = parse_error(&inner.body_bytes());
    GraphError::Api {
        operation: operation.to_owned(),
        status: inner.status.as_u16(),
        code: error.code,
        message: error.message,
        request_id: error.request_id.or_else(|| inner.request_id.clone()),
    }
}

/// What an error body says.
#[derive(Debug)]
pub(crate) struct ParsedError {
    /// `error.code`, or `(no error code)`.
    pub(crate) code: String,
    /// `error.message`, else the start of the body (200 characters), or `(empty body)`.
    pub(crate) message: String,
    /// `error.innerError.request-id`.
    pub(crate) request_id: Option<String>,
}

/// Reads `{"error":{"code","message","innerError":{"request-id"}}}`; tolerates other bodies.
pub(crate) fn parse_error(bytes: &[u8]) -> ParsedError {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let error = &value["error"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let code = text(&error["code"]).unwrap_or_else(|| "(no error code)".into());
    let message = text(&error["message"]).unwrap_or_else(|| {
        let raw = String::from_utf8_lossy(bytes);
        let raw: String = raw.chars().take(200).collect();
        if raw.trim().is_empty() {
            "(empty body)".into()
        } else {
            raw
        }
    });
    let inner = if error["innerError"].is_object() {
        &error["innerError"]
    } else {
        &error["innererror"]
    };
    ParsedError {
        code,
        message,
        request_id: text(&inner["request-id"]),
    }
}

/// One page of a user collection.
#[derive(Deserialize)]
struct Page {
    value: Vec<WireUser>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// One page of a delta round.
#[derive(Deserialize)]
struct DeltaPage {
    value: Vec<WireUser>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink", default)]
    delta_link: Option<String>,
}

/// `@removed` of a delta entry.
#[derive(Deserialize)]
struct WireRemoved {
    #[serde(default)]
    reason: Option<String>,
}

/// A user as Graph sends it; tolerant of `null` collections.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUser {
    id: String,
    /// Only in delta rounds.
    #[serde(rename = "@removed", default)]
    removed: Option<WireRemoved>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    other_mails: Option<Vec<String>>,
    #[serde(default)]
    user_principal_name: Option<String>,
    #[serde(default)]
    user_type: Option<String>,
    #[serde(default)]
    external_user_state: Option<String>,
    #[serde(default)]
    external_user_state_change_date_time: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    creation_type: Option<String>,
    #[serde(default)]
    identities: Option<Vec<ObjectIdentity>>,
    #[serde(default)]
    account_enabled: Option<bool>,
    #[serde(default)]
    created_date_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl WireUser {
    /// A delta entry: `@removed` or the user as it is now.
    fn into_change(self) -> DeltaChange {
        match &self.removed {
            Some(removed) => DeltaChange::Removed {
                reason: match removed.reason.as_deref() {
                    Some(r) if r.eq_ignore_ascii_case("deleted") => RemovedReason::Deleted,
                    // `changed` (soft delete), or a reason this client does not know: either
                    // way the user has left the directory's listing.
                    _ => RemovedReason::Changed,
                },
                id: self.id,
            },
            None => DeltaChange::Upsert(self.into()),
        }
    }
}

impl From<WireUser> for DirectoryUser {
    fn from(w: WireUser) -> Self {
        DirectoryUser {
            id: w.id,
            display_name: w.display_name,
            mail: w.mail,
            other_mails: w.other_mails.unwrap_or_default(),
            user_principal_name: w.user_principal_name,
            user_type: w.user_type,
            external_user_state: w.external_user_state,
            external_user_state_change_date_time: w.external_user_state_change_date_time,
            creation_type: w.creation_type,
            identities: w.identities.unwrap_or_default(),
            account_enabled: w.account_enabled,
            created_date_time: w.created_date_time,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvitationResponse {
    #[serde(default)]
    invited_user: Option<InvitedUserRef>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvitedUserRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    user_principal_name: Option<String>,
}

/// `{"responses":[{"id","status","headers","body"}]}`.
#[derive(Deserialize)]
struct BatchResponse {
    responses: Vec<BatchAnswer>,
}

#[derive(Deserialize)]
struct BatchAnswer {
    id: String,
    status: u16,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    #[serde(default)]
    body: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_link_may_name_the_same_local_service_another_way_but_never_another_host() {
        let root = Url::parse("http://127.0.0.1:8080/").unwrap();
        let same = |link: &str| same_loopback_service(&Url::parse(link).unwrap(), &root);
        assert!(same("http://localhost:8080/v1.0/users?$skiptoken=x"));
        assert!(same("http://[::1]:8080/v1.0/users"));
        assert!(!same("http://localhost:9090/v1.0/users"), "another port");
        assert!(!same("https://localhost:8080/v1.0/users"), "another scheme");
        assert!(
            !same("http://graph.example:8080/v1.0/users"),
            "another host"
        );
        let graph = Url::parse("https://graph.microsoft.com/").unwrap();
        assert!(!same_loopback_service(
            &Url::parse("https://evil.example/v1.0/users").unwrap(),
            &graph
        ));
    }

    #[test]
    fn error_bodies_keep_code_and_request_id() {
        let body = br#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation.","innerError":{"request-id":"abc","date":"2025-02-13T10:17:05"}}}"#;
        let parsed = parse_error(body);
        assert_eq!(parsed.code, "Authorization_RequestDenied");
        assert_eq!(parsed.request_id.as_deref(), Some("abc"));
        let err = GraphError::Api {
            operation: "invite a@b.example".into(),
            status: 403,
            code: parsed.code,
            message: parsed.message,
            request_id: parsed.request_id,
        };
        assert!(err.to_string().contains("User.Invite.All"));
        assert!(!err.is_ambiguous());
    }
}
