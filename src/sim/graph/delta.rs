//! `GET /v1.0/users/delta` and `/v1.0/users/delta()` (`docs/specs/microsoft-graph.md` §3).
//!
//! A round starts with a call without a token (enumerate every visible user, members and guests)
//! or with a `$deltatoken` (only what changed since that token). Its result is fixed when it
//! starts and served in pages: every page but the last carries an `@odata.nextLink` with an
//! opaque `$skiptoken`, the last one an `@odata.deltaLink` with an opaque `$deltatoken`; never
//! both.
//!
//! Every token holds the sync state it stands for: what the client has been told about each
//! user (the `$select`ed properties, or that the user is soft-deleted) and the version of the
//! directory's change journal at that point. A round compares that state with the directory as
//! reads see it then, so changes made by any means (HTTP, the [`Directory`] seeding methods,
//! `user_mut`) surface, a change to an unselected property does not, and a guest still hidden
//! by the replication delay is neither listed nor lost: it comes in a later round. The journal
//! (every create, update, soft delete, restore and purge through `Directory` or HTTP gets a
//! version) adds what a comparison cannot see: a tracked property changed and changed back, and
//! a user created and deleted between two calls (`@removed`, although the client never saw it).
//!
//! Strict where the spec leaves room: only `$select` and `$filter=id eq '…' or …` (at most 50
//! ids) are accepted, on the first call only; `$top`, `$expand`, `$orderby` and every other
//! option are `400`; a nextLink takes no other option; an unknown or expired token is
//! `410 Gone` with a `Location` to restart from (or, by [`ExpiredTokenAnswer`], `400
//! syncStateNotFound`); properties never set (`null`) are omitted from objects.
//!
//! Must not depend on the clients (`crate::remote`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{
    DEFAULT_PAGE_SIZE, DEFAULT_PROPERTIES, Directory, Sim, SimUser, bad_request, encode,
    error_response, graph_json, host_of, metadata_context, parse_select, unsupported,
};

/// How long a delta or skip token stays valid: 7 days for directory objects (§3).
pub const DELTA_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Most ids a delta `$filter` may name (§3).
pub const MAX_DELTA_FILTER_IDS: usize = 50;

/// The query options a delta request may carry.
const DELTA_OPTIONS: [&str; 4] = ["$select", "$filter", "$skiptoken", "$deltatoken"];

/// How an unknown or expired `$deltatoken`/`$skiptoken` is answered. §3 lists both as
/// possible; the default is the one a client has to do more for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiredTokenAnswer {
    /// `410 Gone` with a `Location` header holding the delta URL with an empty `$deltatoken`
    /// (the first call's `$select`/`$filter` kept when the token is known), body code
    /// `resyncRequired`. The client must restart with a full sync from that URL.
    #[default]
    Gone,
    /// `400` with code `syncStateNotFound` and no `Location`.
    SyncStateNotFound,
}

/// One mutation in the change journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// Created (invited, seeded).
    Created,
    /// These properties were written (not necessarily to a new value).
    Updated(Vec<String>),
    /// Moved to deleted items.
    SoftDeleted,
    /// Restored from deleted items.
    Restored,
    /// Permanently deleted from deleted items.
    Purged,
}

/// A journal entry: the `version`th mutation of the directory.
#[derive(Debug)]
struct JournalEntry {
    version: u64,
    id: String,
    change: Change,
}

/// The first call's query options, encoded into every token of the sync.
#[derive(Debug)]
struct Query {
    /// `$select` as sent (for `Location`).
    raw_select: Option<String>,
    /// `$filter` as sent (for `Location`).
    raw_filter: Option<String>,
    /// Parsed `$select` (`None`: the default property set).
    select: Option<Vec<String>>,
    /// Ids of `$filter=id eq '…' or …` (`None`: every user).
    ids: Option<BTreeSet<String>>,
}

/// What a client has been told about one user.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    /// Present, with these (projected) properties, `null`s included.
    Live(Map<String, Value>),
    /// Reported as `@removed` with reason `changed` (soft-deleted).
    SoftDeleted,
}

type SyncState = BTreeMap<String, Known>;

/// A `$deltatoken`: the sync state at the end of a round.
#[derive(Debug)]
struct DeltaToken {
    query: Arc<Query>,
    known: Arc<SyncState>,
    /// The journal version `known` reflects.
    version: u64,
    expires: Instant,
}

/// One round's result, fixed when the round starts.
#[derive(Debug)]
struct Round {
    query: Arc<Query>,
    entries: Vec<Value>,
    /// The sync state once every entry has been delivered.
    next: Arc<SyncState>,
    /// The journal version `next` reflects.
    version: u64,
    /// The first page is empty (the empty-first-page knob).
    empty_first: bool,
}

/// A `$skiptoken`: a position in a round.
#[derive(Debug)]
struct PageToken {
    round: Arc<Round>,
    offset: usize,
    first: bool,
    expires: Instant,
}

/// The delta tokens issued and the delta knobs.
#[derive(Debug)]
pub(super) struct DeltaState {
    deltas: HashMap<String, DeltaToken>,
    pages: HashMap<String, PageToken>,
    expired_answer: ExpiredTokenAnswer,
    lifetime: Duration,
    /// Every round sends each of its entries twice (§3: replays happen).
    replays: bool,
    /// Version of the last journal entry (0: none yet).
    version: u64,
    journal: Vec<JournalEntry>,
}

impl Default for DeltaState {
    fn default() -> Self {
        Self {
            deltas: HashMap::new(),
            pages: HashMap::new(),
            expired_answer: ExpiredTokenAnswer::default(),
            lifetime: DELTA_TOKEN_LIFETIME,
            replays: false,
            version: 0,
            journal: Vec::new(),
        }
    }
}

impl Directory {
    /// Appends a mutation of user `id` to the change journal.
    pub(super) fn record_change(&mut self, id: &str, change: Change) {
        // Every journaled mutation may change an address.
        self.address_changed(id);
        self.delta.version += 1;
        self.delta.journal.push(JournalEntry {
            version: self.delta.version,
            id: id.to_owned(),
            change,
        });
    }

    /// Makes every issued `$deltatoken` and delta `$skiptoken` expired: the next request with
    /// one is answered as [`Directory::set_expired_delta_token_answer`] says.
    pub fn expire_delta_tokens(&mut self) {
        let now = Instant::now();
        for token in self.delta.deltas.values_mut() {
            token.expires = now;
        }
        for token in self.delta.pages.values_mut() {
            token.expires = now;
        }
    }

    /// How unknown or expired delta tokens are answered (default [`ExpiredTokenAnswer::Gone`]).
    pub fn set_expired_delta_token_answer(&mut self, answer: ExpiredTokenAnswer) {
        self.delta.expired_answer = answer;
    }

    /// Makes every round send each of its entries a second time, after all of them (so, with
    /// small pages, on a later page): "the same entity can appear more than once" (§3). Off by
    /// default.
    pub fn set_delta_replays(&mut self, on: bool) {
        self.delta.replays = on;
    }

    /// Lifetime of delta tokens issued from now on (default [`DELTA_TOKEN_LIFETIME`]).
    pub fn set_delta_token_lifetime(&mut self, lifetime: Duration) {
        self.delta.lifetime = lifetime;
    }
}

/// `GET /v1.0/users/delta` and `/v1.0/users/delta()`.
pub(super) async fn users_delta(State(sim): State<Sim>, headers: HeaderMap, uri: Uri) -> Response {
    let mut state = sim.state();
    delta_locked(&mut state.graph, &headers, &uri)
}

fn delta_locked(dir: &mut Directory, headers: &HeaderMap, uri: &Uri) -> Response {
    let options = match super::read_prologue(dir, headers, uri, &DELTA_OPTIONS, |key| {
        unsupported(&format!(
            "Query option '{key}' is not supported with delta queries on users (only $select and $filter=id eq '…')."
        ))
    }) {
        Ok(options) => options,
        Err(response) => return response,
    };
    let host = host_of(headers);
    let minimal = headers
        .get_all("Prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("return=minimal"));
    let now = Instant::now();
    let given_query = options.contains_key("$select") || options.contains_key("$filter");

    if let Some(skip) = options.get("$skiptoken") {
        if options.contains_key("$deltatoken") {
            return bad_request("$skiptoken and $deltatoken cannot be used together.");
        }
        if given_query {
            return bad_request(
                "Query options other than $skiptoken are not supported on a delta nextLink: they are encoded in the token. Follow @odata.nextLink verbatim.",
            );
        }
        let Some(page) = dir.delta.pages.get(skip).filter(|p| now < p.expires) else {
            let query = dir.delta.pages.get(skip).map(|p| p.round.query.clone());
            return expired(dir, &host, query.as_deref());
        };
        let (round, offset, first) = (page.round.clone(), page.offset, page.first);
        return serve_page(dir, &host, round, offset, first);
    }

    let (query, (known, since)) = match options.get("$deltatoken").map(String::as_str) {
        Some(token) if token != "latest" && !token.is_empty() => {
            if given_query {
                return bad_request(
                    "Query options must be given on the first delta call only: they are encoded in the $deltatoken. Follow @odata.deltaLink verbatim.",
                );
            }
            let Some(delta) = dir.delta.deltas.get(token).filter(|d| now < d.expires) else {
                let query = dir.delta.deltas.get(token).map(|d| d.query.clone());
                return expired(dir, &host, query.as_deref());
            };
            (
                delta.query.clone(),
                (delta.known.clone(), Some(delta.version)),
            )
        }
        // A first call: no token, `latest`, or the empty token of a 410's Location.
        _ => match parse_query(&options) {
            Ok(query) => (Arc::new(query), (Arc::new(SyncState::new()), None)),
            Err(response) => return response,
        },
    };

    if options.get("$deltatoken").map(String::as_str) == Some("latest") {
        let current = current_state(dir, &query, now);
        let version = dir.delta.version;
        let token = issue_delta(dir, query.clone(), Arc::new(current), version);
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            json!(metadata_context(&host, query.select.as_deref(), false)),
        );
        body.insert("@odata.deltaLink".into(), json!(delta_link(&host, &token)));
        body.insert("value".into(), json!([]));
        let listing = listing_name(&query);
        return crate::sim::listing_page(
            graph_json(StatusCode::OK, Value::Object(body)),
            listing,
            true,
            true,
        );
    }

    let round = start_round(dir, query, &known, since, minimal, now);
    serve_page(dir, &host, Arc::new(round), 0, true)
}

impl Query {
    /// Whether delta tracks property `name` for this query.
    fn tracks(&self, name: &str) -> bool {
        name == "id"
            || match &self.select {
                Some(select) => select.iter().any(|p| p == name),
                None => DEFAULT_PROPERTIES.contains(&name),
            }
    }
}

/// Parses a first call's `$select` and `$filter`.
fn parse_query(options: &BTreeMap<String, String>) -> Result<Query, Response> {
    let select = parse_select(options.get("$select"))?;
    let ids = options
        .get("$filter")
        .map(|raw| parse_id_filter(raw))
        .transpose()?;
    Ok(Query {
        raw_select: options.get("$select").cloned(),
        raw_filter: options.get("$filter").cloned(),
        select,
        ids,
    })
}

/// `id eq '…'` terms combined with `or`, at most [`MAX_DELTA_FILTER_IDS`] of them; nothing else
/// (no parentheses, no `in`, no other property: delta cannot be filtered by `userType`).
fn parse_id_filter(raw: &str) -> Result<BTreeSet<String>, Response> {
    let refuse = || {
        unsupported(&format!(
            "Unsupported $filter on users/delta: '{raw}'. Only id eq '{{id}}' terms combined with 'or' (at most {MAX_DELTA_FILTER_IDS}) are supported."
        ))
    };
    let normalized = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut ids = BTreeSet::new();
    let mut terms = 0;
    for term in normalized.split(" or ") {
        let id = term
            .strip_prefix("id eq '")
            .and_then(|rest| rest.strip_suffix('\''))
            .filter(|id| !id.is_empty() && !id.contains(['\'', ' ']))
            .ok_or_else(refuse)?;
        terms += 1;
        ids.insert(id.to_owned());
    }
    if terms > MAX_DELTA_FILTER_IDS {
        return Err(unsupported(&format!(
            "Too many ids in $filter on users/delta: {terms}; at most {MAX_DELTA_FILTER_IDS} are supported."
        )));
    }
    Ok(ids)
}

/// The projection delta tracks for `user`.
fn project(user: &SimUser, query: &Query) -> Map<String, Value> {
    match user.project(query.select.as_deref()) {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// What reads see now, as sync state: live, visible users matching the query.
fn current_state(dir: &Directory, query: &Query, now: Instant) -> SyncState {
    dir.users
        .values()
        .filter(|u| u.is_visible(now))
        .filter(|u| query.ids.as_ref().is_none_or(|ids| ids.contains(&u.id)))
        .map(|u| (u.id.clone(), Known::Live(project(u, query))))
        .collect()
}

/// Compares what the client knows with the directory now: the round's entries and the state
/// after them.
fn start_round(
    dir: &Directory,
    query: Arc<Query>,
    known: &Arc<SyncState>,
    since: Option<u64>,
    minimal: bool,
    now: Instant,
) -> Round {
    let current = current_state(dir, &query, now);
    let mut next = current.clone();
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    // What the journal says happened since the token (nothing for a first call).
    let mut journaled: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for entry in dir
        .delta
        .journal
        .iter()
        .filter(|e| since.is_some_and(|v| e.version > v))
        .filter(|e| query.ids.as_ref().is_none_or(|ids| ids.contains(&e.id)))
    {
        let written = journaled.entry(entry.id.as_str()).or_default();
        if let Change::Updated(props) = &entry.change {
            written.extend(props.iter().map(String::as_str).filter(|p| query.tracks(p)));
        }
    }
    for (id, state) in &current {
        let Known::Live(props) = state else { continue };
        match known.get(id) {
            Some(Known::Live(before)) if before == props => {
                // Written since, to the same value in the end: Graph reports the object.
                let Some(written) = journaled.get(id.as_str()).filter(|w| !w.is_empty()) else {
                    continue;
                };
                let shown = props.iter().filter(|(k, v)| {
                    *k == "id"
                        || if minimal {
                            written.contains(k.as_str())
                        } else {
                            !v.is_null()
                        }
                });
                entries.insert(id.clone(), object(shown));
            }
            Some(Known::Live(before)) => {
                let shown = props.iter().filter(|(k, v)| {
                    *k == "id"
                        || if minimal {
                            before.get(*k) != Some(*v)
                        } else {
                            !v.is_null() || before.get(*k).is_some_and(|b| !b.is_null())
                        }
                });
                entries.insert(id.clone(), object(shown));
            }
            // New, restored, or replicated since: a normal object.
            Some(Known::SoftDeleted) | None => {
                let shown = props.iter().filter(|(k, v)| *k == "id" || !v.is_null());
                entries.insert(id.clone(), object(shown));
            }
        }
    }
    for (id, state) in known.iter() {
        if current.contains_key(id) {
            continue;
        }
        let soft_deleted = dir.deleted.contains_key(id);
        match (state, soft_deleted) {
            (Known::Live(_), true) => {
                entries.insert(id.clone(), removed(id, "changed"));
                next.insert(id.clone(), Known::SoftDeleted);
            }
            (Known::SoftDeleted, true) => {
                next.insert(id.clone(), Known::SoftDeleted);
            }
            // Live but not visible to reads (cannot be observed as gone yet): keep it.
            _ if dir.users.contains_key(id) => {
                next.insert(id.clone(), state.clone());
            }
            // Permanently deleted (also after a purge from deleted items).
            _ => {
                entries.insert(id.clone(), removed(id, "deleted"));
            }
        }
    }
    // Created and removed since the token: never seen by the client, reported anyway.
    for id in journaled.keys() {
        if current.contains_key(*id) || known.contains_key(*id) || dir.users.contains_key(*id) {
            continue;
        }
        if dir.deleted.contains_key(*id) {
            entries.insert((*id).to_owned(), removed(id, "changed"));
            next.insert((*id).to_owned(), Known::SoftDeleted);
        } else {
            entries.insert((*id).to_owned(), removed(id, "deleted"));
        }
    }
    let mut entries: Vec<Value> = entries.into_values().collect();
    if dir.delta.replays {
        entries.extend_from_within(..);
    }
    Round {
        query,
        entries,
        // Unchanged: share the state (a daemon polling a quiet tenant holds one copy).
        next: if next == **known {
            known.clone()
        } else {
            Arc::new(next)
        },
        version: dir.delta.version,
        empty_first: dir.empty_first_page,
    }
}

fn object<'a>(props: impl Iterator<Item = (&'a String, &'a Value)>) -> Value {
    Value::Object(props.map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn removed(id: &str, reason: &str) -> Value {
    json!({"id": id, "@removed": {"reason": reason}})
}

fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn issue_delta(
    dir: &mut Directory,
    query: Arc<Query>,
    known: Arc<SyncState>,
    version: u64,
) -> String {
    let token = new_token();
    let expires = Instant::now() + dir.delta.lifetime;
    dir.delta.deltas.insert(
        token.clone(),
        DeltaToken {
            query,
            known,
            version,
            expires,
        },
    );
    token
}

fn delta_link(host: &str, token: &str) -> String {
    format!("http://{host}/v1.0/users/delta()?$deltatoken={token}")
}

/// One page of `round` from `offset`, with a nextLink or (last page) a deltaLink.
fn serve_page(
    dir: &mut Directory,
    host: &str,
    round: Arc<Round>,
    offset: usize,
    first: bool,
) -> Response {
    let size = dir
        .page_size_cap
        .map_or(DEFAULT_PAGE_SIZE, |cap| cap.min(DEFAULT_PAGE_SIZE));
    let size = if first && round.empty_first { 0 } else { size };
    let end = (offset + size).min(round.entries.len());
    let page: Vec<Value> = round.entries[offset..end].to_vec();
    let listing = listing_name(&round.query);
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(metadata_context(host, round.query.select.as_deref(), false)),
    );
    // An empty first page always has a nextLink, even when the round is empty.
    if end < round.entries.len() || size == 0 {
        let token = new_token();
        let expires = Instant::now() + dir.delta.lifetime;
        dir.delta.pages.insert(
            token.clone(),
            PageToken {
                round: round.clone(),
                offset: end,
                first: false,
                expires,
            },
        );
        body.insert(
            "@odata.nextLink".into(),
            json!(format!(
                "http://{host}/v1.0/users/delta()?$skiptoken={token}"
            )),
        );
    } else {
        let token = issue_delta(dir, round.query.clone(), round.next.clone(), round.version);
        body.insert("@odata.deltaLink".into(), json!(delta_link(host, &token)));
    }
    let last = body.contains_key("@odata.deltaLink");
    body.insert("value".into(), Value::Array(page));
    crate::sim::listing_page(
        graph_json(StatusCode::OK, Value::Object(body)),
        listing,
        first,
        last,
    )
}

/// The [`crate::sim::ListingPage::listing`] of a delta round of `query`.
fn listing_name(query: &Query) -> String {
    format!(
        "graph delta {}",
        query.raw_filter.as_deref().unwrap_or_default()
    )
}

/// The answer to an unknown or expired token (`query`: the sync's options, when known).
fn expired(dir: &Directory, host: &str, query: Option<&Query>) -> Response {
    match dir.delta.expired_answer {
        ExpiredTokenAnswer::SyncStateNotFound => error_response(
            StatusCode::BAD_REQUEST,
            "syncStateNotFound",
            "The sync state of this delta token was not found or has expired. Restart with a full synchronization.",
        ),
        ExpiredTokenAnswer::Gone => {
            let mut location = format!("http://{host}/v1.0/users/delta()?");
            if let Some(query) = query {
                for (key, value) in [
                    ("$select", &query.raw_select),
                    ("$filter", &query.raw_filter),
                ] {
                    if let Some(value) = value {
                        location.push_str(&format!("{key}={}&", encode(value)));
                    }
                }
            }
            location.push_str("$deltatoken=");
            let mut response = error_response(
                StatusCode::GONE,
                "resyncRequired",
                "The delta token has expired or is unknown. Restart with a full synchronization from the Location URL.",
            );
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::sim::FailRule;
    use crate::sim::graph::DEFAULT_PROPERTIES;

    const HOST: &str = "sim.test";
    const BEARER: &str = "sim.delta-test-token";

    /// A simulator with a valid bearer token.
    fn sim() -> Sim {
        let sim = Sim::new();
        sim.state()
            .graph
            .insert_token(BEARER, Duration::from_secs(24 * 3600));
        sim
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Value,
    }

    /// `GET` of `target` (a path or an absolute link) through the router and its fault layer.
    async fn get_with(sim: &Sim, target: &str, prefer: Option<&str>) -> Answer {
        let path = target
            .strip_prefix(&format!("http://{HOST}"))
            .unwrap_or(target);
        let mut request = Request::get(path)
            .header(header::HOST, HOST)
            .header(header::AUTHORIZATION, format!("Bearer {BEARER}"));
        if let Some(prefer) = prefer {
            request = request.header("Prefer", prefer);
        }
        let response = sim
            .router()
            .oneshot(request.body(Body::empty()).expect("a request"))
            .await
            .expect("the router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(sim: &Sim, target: &str) -> Answer {
        get_with(sim, target, None).await
    }

    /// One round followed to its end: the entries of every page, the deltaLink, the page count.
    async fn round(sim: &Sim, start: &str) -> (Vec<Value>, String, usize) {
        let mut entries = Vec::new();
        let mut target = start.to_owned();
        let mut pages = 0;
        loop {
            let answer = get(sim, &target).await;
            assert_eq!(answer.status, StatusCode::OK, "{:#}", answer.body);
            pages += 1;
            let body = answer.body;
            entries.extend(body["value"].as_array().expect("value").iter().cloned());
            match (
                body["@odata.nextLink"].as_str(),
                body["@odata.deltaLink"].as_str(),
            ) {
                (Some(next), None) => {
                    assert!(next.contains("$skiptoken="), "{next}");
                    assert!(!next.contains("$select") && !next.contains("$filter"));
                    target = next.to_owned();
                }
                (None, Some(delta)) => {
                    assert!(delta.contains("$deltatoken="), "{delta}");
                    return (entries, delta.to_owned(), pages);
                }
                _ => panic!("a page has exactly one of nextLink and deltaLink: {body:#}"),
            }
        }
    }

    fn ids(entries: &[Value]) -> BTreeSet<String> {
        entries
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect()
    }

    fn entry<'a>(entries: &'a [Value], id: &str) -> &'a Value {
        entries
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {entries:#?}"))
    }

    fn error_code(answer: &Answer) -> &str {
        answer.body["error"]["code"].as_str().unwrap_or("")
    }

    #[tokio::test]
    async fn the_first_round_enumerates_members_and_guests_in_pages() {
        let sim = sim();
        let mut expected = BTreeSet::new();
        {
            let mut state = sim.state();
            for n in 0..5 {
                expected.insert(
                    state
                        .graph
                        .add_guest(&format!("g{n}@partner.example"), &format!("G{n}")),
                );
            }
            expected.insert(state.graph.add_member(
                "dana@sim.onmicrosoft.com",
                Some("dana@contoso.example"),
                "Dana",
            ));
            expected.insert(
                state
                    .graph
                    .add_member("eve@sim.onmicrosoft.com", None, "Eve"),
            );
            state.graph.set_page_size_cap(Some(3));
        }
        let (entries, _, pages) = round(&sim, "/v1.0/users/delta").await;
        assert_eq!(pages, 3, "7 users in pages of 3");
        assert_eq!(entries.len(), 7, "no user twice");
        assert_eq!(ids(&entries), expected);
        for user in &entries {
            let map = user.as_object().expect("an object");
            assert!(map.keys().all(|k| DEFAULT_PROPERTIES.contains(&k.as_str())));
            assert!(
                map.values().all(|v| !v.is_null()),
                "never-set properties are omitted: {user}"
            );
            assert!(user.get("@removed").is_none());
        }
        // The `()` form is the same function.
        let (again, _, _) = round(&sim, "/v1.0/users/delta()").await;
        assert_eq!(ids(&again), expected);
    }

    #[tokio::test]
    async fn a_delta_link_returns_only_the_changes_since() {
        let sim = sim();
        let (ana, bob) = {
            let mut state = sim.state();
            for n in 0..4 {
                state
                    .graph
                    .add_guest(&format!("g{n}@partner.example"), &format!("G{n}"));
            }
            let ana = state.graph.add_guest("ana@partner.example", "Ana");
            (ana, state.graph.add_guest("bob@partner.example", "Bob"))
        };
        let (_, delta, _) = round(&sim, "/v1.0/users/delta?$select=displayName,userType").await;
        let (carla, dan) = {
            let mut state = sim.state();
            state.graph.user_mut(&ana).expect("ana").display_name = Some("Ana Silva".into());
            state.graph.accept_invitation(&bob); // externalUserState: not selected
            state.graph.set_page_size_cap(Some(1));
            (
                state.graph.add_guest("carla@partner.example", "Carla"),
                state
                    .graph
                    .add_member("dan@sim.onmicrosoft.com", None, "Dan"),
            )
        };
        let (entries, next_delta, pages) = round(&sim, &delta).await;
        assert_eq!(pages, 3, "the changes are paged too");
        assert_eq!(ids(&entries), BTreeSet::from([ana.clone(), carla, dan]));
        assert_eq!(
            entry(&entries, &ana),
            &json!({"id": ana, "displayName": "Ana Silva", "userType": "Guest"})
        );
        let (entries, _, pages) = round(&sim, &next_delta).await;
        assert!(entries.is_empty(), "nothing changed since: {entries:#?}");
        assert_eq!(pages, 1);
        // A deltaLink can be called again: the same changes.
        let (entries, _, _) = round(&sim, &delta).await;
        assert_eq!(entries.len(), 3);
    }

    #[tokio::test]
    async fn a_change_to_an_unselected_property_does_not_surface() {
        let sim = sim();
        let ana = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let (_, delta, _) = round(&sim, "/v1.0/users/delta?$select=id,mail").await;
        sim.state().graph.user_mut(&ana).expect("ana").job_title = Some("Buyer".into());
        let (entries, delta, _) = round(&sim, &delta).await;
        assert!(entries.is_empty(), "{entries:#?}");
        sim.state().graph.user_mut(&ana).expect("ana").mail = Some("ana@new.example".into());
        let (entries, _, _) = round(&sim, &delta).await;
        assert_eq!(entries, vec![json!({"id": ana, "mail": "ana@new.example"})]);
    }

    /// `PATCH /v1.0/users/{id}` through the router.
    async fn patch(sim: &Sim, id: &str, body: Value) {
        let request = Request::patch(format!("/v1.0/users/{id}"))
            .header(header::HOST, HOST)
            .header(header::AUTHORIZATION, format!("Bearer {BEARER}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("a request");
        let response = sim.router().oneshot(request).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn the_journal_reports_changes_a_comparison_cannot_see() {
        let sim = sim();
        {
            let mut state = sim.state();
            state.graph.grant_permission("User.ReadWrite.All");
            state
                .graph
                .insert_token(BEARER, Duration::from_secs(24 * 3600));
        }
        let ana = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let (_, delta, _) = round(&sim, "/v1.0/users/delta?$select=displayName").await;
        // Changed and changed back: still reported, with the selected properties.
        patch(&sim, &ana, json!({"displayName": "Ana S"})).await;
        patch(&sim, &ana, json!({"displayName": "Ana"})).await;
        // An unselected property written over HTTP: not reported.
        let (entries, delta, _) = round(&sim, &delta).await;
        assert_eq!(entries, vec![json!({"id": ana, "displayName": "Ana"})]);
        patch(&sim, &ana, json!({"jobTitle": "Buyer"})).await;
        let (entries, delta, _) = round(&sim, &delta).await;
        assert!(entries.is_empty(), "{entries:#?}");
        // Created and removed between two calls: the client never saw them, @removed anyway.
        let (bob, carla) = {
            let mut state = sim.state();
            let bob = state.graph.add_guest("bob@partner.example", "Bob");
            state.graph.delete_user(&bob);
            state.graph.purge_deleted();
            let carla = state.graph.add_guest("carla@partner.example", "Carla");
            state.graph.delete_user(&carla);
            (bob, carla)
        };
        let (entries, delta, _) = round(&sim, &delta).await;
        assert_eq!(entries.len(), 2, "{entries:#?}");
        assert_eq!(entry(&entries, &bob)["@removed"]["reason"], "deleted");
        assert_eq!(entry(&entries, &carla)["@removed"]["reason"], "changed");
        // Carla is known as soft-deleted now: her purge is reported once more, as deleted.
        sim.state().graph.purge_deleted();
        let (entries, _, _) = round(&sim, &delta).await;
        assert_eq!(
            entries,
            vec![json!({"id": carla, "@removed": {"reason": "deleted"}})]
        );
    }

    #[tokio::test]
    async fn replays_send_every_entry_twice_and_merge_to_the_same_state() {
        let sim = sim();
        let (ana, bob) = {
            let mut state = sim.state();
            (
                state.graph.add_guest("ana@partner.example", "Ana"),
                state.graph.add_guest("bob@partner.example", "Bob"),
            )
        };
        let (plain, delta, _) = round(&sim, "/v1.0/users/delta").await;
        {
            let mut state = sim.state();
            state.graph.set_delta_replays(true);
            state.graph.set_page_size_cap(Some(1));
            state.graph.delete_user(&bob);
        }
        let (replayed, _, pages) = round(&sim, "/v1.0/users/delta").await;
        assert_eq!(pages, 2, "one user, sent twice, in pages of one");
        assert_eq!(replayed, vec![entry(&plain, &ana).clone(); 2]);
        let (changes, _, _) = round(&sim, &delta).await;
        let removed = json!({"id": bob, "@removed": {"reason": "changed"}});
        assert_eq!(changes, vec![removed.clone(), removed]);
    }

    #[tokio::test]
    async fn prefer_return_minimal_returns_only_changed_properties() {
        let sim = sim();
        let ana = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let (_, delta, _) = round(&sim, "/v1.0/users/delta?$select=displayName,mail").await;
        sim.state().graph.user_mut(&ana).expect("ana").display_name = Some("Ana S".into());
        let full = get(&sim, &delta).await;
        assert_eq!(
            full.body["value"],
            json!([{"id": ana, "displayName": "Ana S", "mail": "ana@partner.example"}])
        );
        let minimal = get_with(&sim, &delta, Some("return=minimal")).await;
        assert_eq!(
            minimal.body["value"],
            json!([{"id": ana, "displayName": "Ana S"}])
        );
    }

    #[tokio::test]
    async fn a_soft_deleted_user_is_removed_changed_then_deleted_after_the_purge() {
        let sim = sim();
        let (ana, bob) = {
            let mut state = sim.state();
            (
                state.graph.add_guest("ana@partner.example", "Ana"),
                state.graph.add_guest("bob@partner.example", "Bob"),
            )
        };
        let (_, delta, _) = round(&sim, "/v1.0/users/delta").await;
        sim.state().graph.delete_user(&ana);
        let (entries, delta, _) = round(&sim, &delta).await;
        assert_eq!(
            entries,
            vec![json!({"id": ana, "@removed": {"reason": "changed"}})]
        );
        let (entries, delta, _) = round(&sim, &delta).await;
        assert!(entries.is_empty(), "reported once: {entries:#?}");
        {
            let mut state = sim.state();
            state.graph.purge_deleted();
            // Bob is deleted and purged between two calls: straight to `deleted`.
            state.graph.delete_user(&bob);
            state.graph.purge_deleted();
        }
        let (entries, _, _) = round(&sim, &delta).await;
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entry(&entries, &ana),
            &json!({"id": ana, "@removed": {"reason": "deleted"}})
        );
        assert_eq!(
            entry(&entries, &bob),
            &json!({"id": bob, "@removed": {"reason": "deleted"}})
        );
    }

    #[tokio::test]
    async fn a_restored_user_reappears_as_a_normal_object() {
        let sim = sim();
        let ana = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let (_, delta, _) = round(&sim, "/v1.0/users/delta?$select=mail,userType").await;
        sim.state().graph.delete_user(&ana);
        let (entries, delta, _) = round(&sim, &delta).await;
        assert_eq!(entries[0]["@removed"]["reason"], "changed");
        assert!(sim.state().graph.restore_user(&ana));
        let (entries, _, _) = round(&sim, &delta).await;
        assert_eq!(
            entries,
            vec![json!({"id": ana, "mail": "ana@partner.example", "userType": "Guest"})]
        );
    }

    #[tokio::test]
    async fn latest_gives_only_a_delta_link_and_syncs_from_now() {
        let sim = sim();
        sim.state().graph.add_guest("ana@partner.example", "Ana");
        sim.state().graph.set_page_size_cap(Some(1));
        let answer = get(&sim, "/v1.0/users/delta?$select=mail&$deltatoken=latest").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body["value"], json!([]));
        assert!(answer.body.get("@odata.nextLink").is_none());
        let delta = answer.body["@odata.deltaLink"]
            .as_str()
            .expect("a deltaLink")
            .to_owned();
        let bob = sim.state().graph.add_guest("bob@partner.example", "Bob");
        let (entries, _, _) = round(&sim, &delta).await;
        assert_eq!(
            entries,
            vec![json!({"id": bob, "mail": "bob@partner.example"})]
        );
    }

    #[tokio::test]
    async fn expired_and_unknown_tokens_are_gone_with_a_location_to_restart() {
        let sim = sim();
        let ana = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let (_, delta, _) = round(&sim, "/v1.0/users/delta?$select=id,mail").await;
        sim.state().graph.expire_delta_tokens();
        let answer = get(&sim, &delta).await;
        assert_eq!(answer.status, StatusCode::GONE);
        assert_eq!(error_code(&answer), "resyncRequired");
        let location = answer
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("a Location header")
            .to_owned();
        assert!(location.ends_with("$deltatoken="), "{location}");
        assert!(location.contains("$select=id,mail"), "{location}");
        // Following it is a full sync with the first call's options.
        let (entries, _, _) = round(&sim, &location).await;
        assert_eq!(
            entries,
            vec![json!({"id": ana, "mail": "ana@partner.example"})]
        );

        let answer = get(&sim, "/v1.0/users/delta?$deltatoken=not-a-token").await;
        assert_eq!(answer.status, StatusCode::GONE);
        let location = answer.headers[header::LOCATION].to_str().expect("ASCII");
        assert_eq!(
            location,
            format!("http://{HOST}/v1.0/users/delta()?$deltatoken=")
        );
        let answer = get(&sim, "/v1.0/users/delta?$skiptoken=not-a-token").await;
        assert_eq!(answer.status, StatusCode::GONE);

        sim.state()
            .graph
            .set_expired_delta_token_answer(ExpiredTokenAnswer::SyncStateNotFound);
        let answer = get(&sim, &delta).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&answer), "syncStateNotFound");
        assert!(answer.headers.get(header::LOCATION).is_none());
    }

    #[tokio::test]
    async fn skip_tokens_expire_too_and_a_zero_lifetime_expires_at_once() {
        let sim = sim();
        {
            let mut state = sim.state();
            state.graph.add_guest("ana@partner.example", "Ana");
            state.graph.add_guest("bob@partner.example", "Bob");
            state.graph.set_page_size_cap(Some(1));
        }
        let first = get(&sim, "/v1.0/users/delta").await;
        let next = first.body["@odata.nextLink"].as_str().expect("nextLink");
        sim.state().graph.expire_delta_tokens();
        assert_eq!(get(&sim, next).await.status, StatusCode::GONE);

        // Tokens issued with a zero lifetime are expired at once.
        sim.state().graph.set_delta_token_lifetime(Duration::ZERO);
        sim.state().graph.set_page_size_cap(None);
        let answer = get(&sim, "/v1.0/users/delta").await;
        let delta = answer.body["@odata.deltaLink"].as_str().expect("deltaLink");
        assert_eq!(get(&sim, delta).await.status, StatusCode::GONE);
    }

    #[tokio::test]
    async fn filter_is_limited_to_id_eq_terms_combined_with_or() {
        let sim = sim();
        let (ana, bob) = {
            let mut state = sim.state();
            state.graph.add_guest("carla@partner.example", "Carla");
            (
                state.graph.add_guest("ana@partner.example", "Ana"),
                state.graph.add_guest("bob@partner.example", "Bob"),
            )
        };
        let (entries, delta, _) = round(
            &sim,
            &format!("/v1.0/users/delta?$filter=id%20eq%20'{ana}'%20or%20id%20eq%20'{bob}'"),
        )
        .await;
        assert_eq!(ids(&entries), BTreeSet::from([ana.clone(), bob.clone()]));
        // The filter is kept in the token: a new user outside it does not surface.
        sim.state().graph.add_guest("dan@partner.example", "Dan");
        sim.state().graph.user_mut(&bob).expect("bob").display_name = Some("Bob S".into());
        let (entries, _, _) = round(&sim, &delta).await;
        assert_eq!(ids(&entries), BTreeSet::from([bob.clone()]));

        let fifty: Vec<String> = (0..50).map(|n| format!("id%20eq%20'{n}'")).collect();
        let answer = get(
            &sim,
            &format!("/v1.0/users/delta?$filter={}", fifty.join("%20or%20")),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "50 ids are allowed");
        let refused = [
            "$filter=userType%20eq%20'Guest'".to_owned(),
            format!("$filter=id%20in%20('{ana}')"),
            format!("$filter=(id%20eq%20'{ana}')"),
            format!("$filter=id%20eq%20'{ana}'%20and%20id%20eq%20'{bob}'"),
            "$filter=mail%20eq%20'ana@partner.example'".to_owned(),
            format!("$filter={}%20or%20id%20eq%20'50'", fifty.join("%20or%20")),
            "$top=10".to_owned(),
            "$orderby=id".to_owned(),
            "$expand=manager".to_owned(),
            "$count=true".to_owned(),
        ];
        for query in refused {
            let answer = get(&sim, &format!("/v1.0/users/delta?{query}")).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(error_code(&answer), "Request_UnsupportedQuery", "{query}");
            assert!(answer.body["error"]["message"].is_string());
        }
    }

    #[tokio::test]
    async fn query_options_belong_to_the_first_call_only() {
        let sim = sim();
        sim.state().graph.add_guest("ana@partner.example", "Ana");
        sim.state().graph.add_guest("bob@partner.example", "Bob");
        sim.state().graph.set_page_size_cap(Some(1));
        let first = get(&sim, "/v1.0/users/delta?$select=mail").await;
        let next = first.body["@odata.nextLink"]
            .as_str()
            .expect("nextLink")
            .to_owned();
        let (_, delta, _) = round(&sim, &next).await;
        for target in [
            format!("{next}&$select=mail"),
            format!("{delta}&$select=mail"),
            format!("{delta}&$filter=id%20eq%20'x'"),
            format!("{next}&$deltatoken=latest"),
        ] {
            let answer = get(&sim, &target).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{target}");
            assert_eq!(error_code(&answer), "Request_BadRequest", "{target}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn guests_hidden_by_the_replication_delay_are_hidden_from_delta_too() {
        let sim = sim();
        sim.state().graph.add_guest("ana@partner.example", "Ana");
        let (_, delta, _) = round(&sim, "/v1.0/users/delta?$select=mail").await;
        sim.state()
            .graph
            .set_replication_delay(Duration::from_secs(30));
        let invitation = Request::post("/v1.0/invitations")
            .header(header::HOST, HOST)
            .header(header::AUTHORIZATION, format!("Bearer {BEARER}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({
                    "invitedUserEmailAddress": "bob@partner.example",
                    "inviteRedirectUrl": "https://portal.example",
                })
                .to_string(),
            ))
            .expect("a request");
        let response = sim
            .router()
            .oneshot(invitation)
            .await
            .expect("the router answers");
        assert_eq!(response.status(), StatusCode::CREATED);
        let bob = sim.state().graph.invitations()[0].user_id.clone();
        let (entries, early_delta, _) = round(&sim, &delta).await;
        assert!(entries.is_empty(), "not replicated yet: {entries:#?}");
        let (entries, _, _) = round(&sim, "/v1.0/users/delta?$select=mail").await;
        assert!(!ids(&entries).contains(&bob), "not in a full sync either");
        tokio::time::advance(Duration::from_secs(31)).await;
        // The round that did not see Bob did not lose him: he comes now.
        let (entries, _, _) = round(&sim, &early_delta).await;
        assert_eq!(
            entries,
            vec![json!({"id": bob, "mail": "bob@partner.example"})]
        );
    }

    #[tokio::test]
    async fn a_failing_page_can_be_retried_from_the_last_good_next_link() {
        let sim = sim();
        {
            let mut state = sim.state();
            for n in 0..5 {
                state
                    .graph
                    .add_guest(&format!("g{n}@partner.example"), &format!("G{n}"));
            }
            state.graph.set_page_size_cap(Some(2));
            state.graph_faults.fail.push(FailRule {
                method: Some("GET".into()),
                path_prefix: "/v1.0/users/delta".into(),
                query_contains: Some("$skiptoken".into()),
                status: 503,
                times: Some(1),
                after_processing: false,
            });
        }
        let first = get(&sim, "/v1.0/users/delta").await;
        assert_eq!(first.status, StatusCode::OK);
        let next = first.body["@odata.nextLink"].as_str().expect("nextLink");
        let failed = get(&sim, next).await;
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&failed), "serviceNotAvailable");
        let (rest, _, _) = round(&sim, next).await;
        let mut all: Vec<Value> = first.body["value"].as_array().expect("value").clone();
        all.extend(rest);
        assert_eq!(all.len(), 5, "no user lost or repeated: {all:#?}");
        assert_eq!(ids(&all).len(), 5);
        assert_eq!(sim.state().counters.injected_failures, 1);
    }

    #[tokio::test]
    async fn an_empty_first_page_still_leads_to_every_user() {
        let sim = sim();
        sim.state().graph.add_guest("ana@partner.example", "Ana");
        sim.state().graph.set_empty_first_page(true);
        let first = get(&sim, "/v1.0/users/delta").await;
        assert_eq!(first.body["value"], json!([]));
        assert!(first.body["@odata.nextLink"].is_string());
        let (entries, delta, pages) = round(&sim, "/v1.0/users/delta").await;
        assert_eq!((entries.len(), pages), (1, 2));
        let (entries, _, pages) = round(&sim, &delta).await;
        assert_eq!((entries.len(), pages), (0, 2), "every round starts empty");
    }
}
