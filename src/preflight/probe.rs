//! `guestops probe portal`: the one-time write probe of `docs/specs/power-embedded.md` §6,
//! made safe.
//!
//! With a throw-away address the operator names, [`run`] records what the portal really does
//! where the spec says "unknown": the page size, the `email` filter's semantics, the answer to
//! a `POST` and to a duplicate `POST`, whether a minimal `PUT` keeps the groups, flags and
//! nullable fields it does not send, and the codes of deleting a user twice. The facts go to
//! `state.dir/portal-facts.json` ([`FACTS_FILE`]).
//!
//! Safety:
//! - nothing is written unless the role-code check passes (a wrong mapping could make the
//!   "viewer" an administrator) and the address is not registered yet;
//! - the throw-away user is created as a viewer without welcome e-mail and stays a viewer;
//! - whatever step fails, the user is deleted at the end, and the outcome says whether that
//!   worked ([`Cleanup`]).
//!
//! Must not: touch any other portal user, or the tenant.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Check, role_code_check};
use crate::config::Config;
use crate::desired::spec::Role;
use crate::reconcile::plan::ProbedPut;
use crate::remote::portal::{Portal as _, PortalClient, RawAnswer};

/// The facts file inside `state.dir`.
pub const FACTS_FILE: &str = "portal-facts.json";

/// The display name of the throw-away user (renamed by the `PUT` step to [`RENAMED`]).
pub const PROBE_NAME: &str = "guestops probe";
/// The name the minimal `PUT` gives the throw-away user.
pub const RENAMED: &str = "guestops probe (renamed)";
/// The `department` the throw-away user is created with, to see whether a `PUT` keeps it.
pub const PROBE_DEPARTMENT: &str = "guestops-probe";
/// A visible flag the throw-away user is created with (`true`), to see whether a `PUT` keeps it.
pub const PROBE_FLAG: &str = "hideAddressBook";

/// What to probe with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The throw-away address (must not be registered).
    pub test_email: String,
    /// A portal group id to link the user to (`--test-group`), to see whether a `PUT` keeps
    /// groups.
    pub test_group: Option<String>,
    /// When the probe runs (recorded).
    pub now: DateTime<Utc>,
}

/// One request and its answer, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exchange {
    /// HTTP status.
    pub status: u16,
    /// The body: JSON when it parses, else the text (truncated), `null` when empty.
    pub body: Value,
}

impl Exchange {
    fn of(answer: &RawAnswer) -> Exchange {
        let body = match answer.json() {
            Some(json) => json,
            None if answer.body.is_empty() => Value::Null,
            None => Value::String(answer.text()),
        };
        Exchange {
            status: answer.status,
            body,
        }
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What the `email` filter of `GET /api/user` matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterFacts {
    /// The partial address sent (a part of `portal.knownAdmin`).
    pub partial: String,
    /// Whether the partial address found the known administrator (a contains match).
    pub contains: bool,
    /// Whether the address in upper case found them (a case-insensitive match).
    pub case_insensitive: bool,
}

/// Whether a minimal `PUT` (only `id`, `email`, `name`, `role`) kept what it did not send.
/// `None`: not observable in this run (e.g. no `--test-group`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PutFacts {
    /// The `PUT` itself.
    pub status: Option<u16>,
    /// Whether the new name was stored.
    pub name_changed: Option<bool>,
    /// Whether the linked test group survived.
    pub keeps_groups: Option<bool>,
    /// Whether direct report grants survived (the probe links none: always `None`).
    pub keeps_reports: Option<bool>,
    /// Whether the visible flag set at creation ([`PROBE_FLAG`]) survived.
    pub keeps_flags: Option<bool>,
    /// Whether the nullable field set at creation (`department`) survived.
    pub keeps_nullable_fields: Option<bool>,
}

/// The deletion of the throw-away user at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cleanup {
    /// Whether the user is gone at the end (checked with a lookup).
    pub user_removed: bool,
    /// What happened, for people.
    pub detail: String,
}

/// Everything the probe learnt, as written to [`FACTS_FILE`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    /// When the probe ran.
    pub time: DateTime<Utc>,
    /// `portal.baseUrl`.
    pub portal_base_url: String,
    /// The throw-away address.
    pub test_email: String,
    /// Whether every step ran; `false` with [`Facts::stopped`] saying where it stopped.
    pub complete: bool,
    /// The step that failed and why.
    pub stopped: Option<String>,
    /// The role code the portal reports for `portal.knownAdmin` (= `roleCodes.administrator`).
    pub known_admin_role: Option<i64>,
    /// Users on page 1 of `GET /api/user`.
    pub page_size: Option<usize>,
    /// Whether there was a second page: without one, [`Facts::page_size`] is only a lower
    /// bound.
    pub page_size_is_lower_bound: Option<bool>,
    /// The `email` filter's semantics.
    pub email_filter: Option<FilterFacts>,
    /// `POST /api/user` of the throw-away user.
    pub create: Option<Exchange>,
    /// Whether the fields sent on `POST` besides email/name/role (`department`, a flag) were
    /// stored.
    pub create_stores_extra_fields: Option<bool>,
    /// The same `POST` again.
    pub duplicate_create: Option<Exchange>,
    /// Whether the duplicate `POST` created a second user with the address.
    pub duplicate_creates_second_user: Option<bool>,
    /// `PUT /api/user/link-groups` (with `--test-group`).
    pub link_groups: Option<Exchange>,
    /// The minimal `PUT /api/user`.
    pub put: PutFacts,
    /// `DELETE /api/user/{email}` of the existing user.
    pub delete: Option<Exchange>,
    /// The same `DELETE` again ("already gone").
    pub delete_again: Option<Exchange>,
    /// The deletion at the end.
    pub cleanup: Option<Cleanup>,
    /// What the API cannot show.
    pub notes: Vec<String>,
}

/// How the probe ended.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing was written: the check says why and what to do.
    Refused(Check),
    /// The probe wrote (and cleaned up); the facts are in `path`.
    Ran {
        /// What was learnt (`complete` says whether every step ran).
        facts: Box<Facts>,
        /// Where they were written.
        path: PathBuf,
    },
}

/// Why a step stopped the probe.
struct Stop(String);

/// Runs the probe (see the module header); progress lines go to `progress`.
///
/// # Errors
/// Only writing `progress` or the facts file; every portal failure is an outcome.
pub async fn run(
    config: &Config,
    portal: &PortalClient,
    settings: &Settings,
    progress: &mut dyn Write,
) -> io::Result<Outcome> {
    let email = settings.test_email.trim().to_owned();
    if !email_address::EmailAddress::is_valid(&email) {
        return Ok(Outcome::Refused(Check::failed(
            "probe.testEmail",
            format!("{email} is not an e-mail address — nothing was written"),
            "name a throw-away address nobody uses with --test-email",
        )));
    }
    // Step 0: the role mapping, and an address nobody uses.
    writeln!(
        progress,
        "step 0: checking the role mapping (portal.knownAdmin)…"
    )?;
    let check = role_code_check(config, portal).await;
    if !check.is_ok() {
        let mut refused = check;
        refused.message = format!("{} — nothing was written", refused.message);
        return Ok(Outcome::Refused(refused));
    }
    match portal.find_user(&email).await {
        Ok(None) => {}
        Ok(Some(user)) => {
            return Ok(Outcome::Refused(Check::failed(
                "probe.testEmail",
                format!(
                    "{email} is already registered in the portal (as {}) — nothing was written",
                    user.name
                ),
                "name a throw-away address nobody uses with --test-email",
            )));
        }
        Err(err) => {
            return Ok(Outcome::Refused(Check::failed(
                "probe.testEmail",
                format!(
                    "cannot look up {email}: {} — nothing was written",
                    crate::error::chain(&err)
                ),
                "run guestops doctor and fix the portal access first",
            )));
        }
    }

    let mut facts = Facts {
        time: settings.now,
        portal_base_url: config.portal.base_url.to_string(),
        test_email: email.clone(),
        complete: false,
        stopped: None,
        known_admin_role: Some(config.portal.role_codes.administrator),
        page_size: None,
        page_size_is_lower_bound: None,
        email_filter: None,
        create: None,
        create_stores_extra_fields: None,
        duplicate_create: None,
        duplicate_creates_second_user: None,
        link_groups: None,
        put: PutFacts::default(),
        delete: None,
        delete_again: None,
        cleanup: None,
        notes: vec![
            "bypassFirewall and canExportReportOtherPages are write-only: GET never returns them, so whether a PUT keeps them cannot be observed through the API".to_owned(),
            "reports: the probe links no report, so whether a PUT keeps direct report grants is not observed (keepsReports is null)".to_owned(),
        ],
    };
    let mut created = false;
    match steps(
        config,
        portal,
        settings,
        &email,
        &mut facts,
        &mut created,
        progress,
    )
    .await
    {
        Ok(()) => facts.complete = true,
        Err(Stop(why)) => {
            writeln!(progress, "stopped: {why}")?;
            facts.stopped = Some(why);
        }
    }
    if created {
        writeln!(progress, "cleanup: making sure {email} is deleted…")?;
        facts.cleanup = Some(cleanup(portal, &email).await);
    }
    let path = write_facts(&config.state.dir, &facts)?;
    Ok(Outcome::Ran {
        facts: Box::new(facts),
        path,
    })
}

/// Steps 1 to 5. `created` turns true as soon as a `POST` was sent (it may have worked even
/// when its answer was lost), so that the caller cleans up.
async fn steps(
    config: &Config,
    portal: &PortalClient,
    settings: &Settings,
    email: &str,
    facts: &mut Facts,
    created: &mut bool,
    progress: &mut dyn Write,
) -> Result<(), Stop> {
    let codes = config.portal.role_codes;
    // The role check passed, so knownAdmin is set.
    let known = config.portal.known_admin.clone().unwrap_or_default();

    // Step 1: the page size.
    say(progress, "step 1: GET /api/user?pageNumber=1 (page size)…");
    let page = get(portal, &[("pageNumber", "1")]).await?;
    if !(200..300).contains(&page.status) {
        return Err(Stop(format!("GET /api/user answered {}", page.status)));
    }
    let body = page.json().unwrap_or(Value::Null);
    facts.page_size = body.get("data").and_then(Value::as_array).map(Vec::len);
    facts.page_size_is_lower_bound = body
        .get("hasNextPage")
        .and_then(Value::as_bool)
        .map(|next| !next);

    // Step 2: the filter.
    say(
        progress,
        "step 2: GET /api/user?email=<part of knownAdmin> (filter semantics)…",
    );
    let partial = partial_of(&known);
    let contains = lists(portal, &partial, &known).await?;
    let case_insensitive = lists(portal, &known.to_uppercase(), &known).await?;
    facts.email_filter = Some(FilterFacts {
        partial,
        contains,
        case_insensitive,
    });

    // Step 3: create, twice.
    say(
        progress,
        &format!("step 3: POST /api/user {email} as a viewer, twice…"),
    );
    let body = json!({
        "email": email,
        "name": PROBE_NAME,
        "role": codes.code(Role::Viewer),
        "sendWelcomeEmail": false,
        "department": PROBE_DEPARTMENT,
        PROBE_FLAG: true,
    });
    *created = true;
    let create = Exchange::of(&send(portal, Method::POST, &[], Some(&body)).await?);
    let create_ok = create.ok();
    facts.create = Some(create);
    if !create_ok {
        return Err(Stop("the first POST /api/user was refused".to_owned()));
    }
    facts.duplicate_create = Some(Exchange::of(
        &send(portal, Method::POST, &[], Some(&body)).await?,
    ));
    let users = matching(portal, email).await?;
    facts.duplicate_creates_second_user = Some(users.len() > 1);
    let Some(user) = users.into_iter().next() else {
        return Err(Stop(format!("{email} is not listed after the POST")));
    };
    let viewer = codes.code(Role::Viewer);
    if user.get("role").and_then(Value::as_i64) != Some(viewer) {
        return Err(Stop(format!(
            "{email} is listed with role {} after a POST with the viewer code {viewer}",
            user.get("role")
                .map_or("(none)".to_owned(), Value::to_string)
        )));
    }
    let extra_stored = user.get("department").and_then(Value::as_str) == Some(PROBE_DEPARTMENT)
        && user.get(PROBE_FLAG).and_then(Value::as_bool) == Some(true);
    facts.create_stores_extra_fields = Some(extra_stored);
    let id = user
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Stop(format!("{email} is listed without a string id")))?;

    // Step 4: link a group, then a minimal PUT.
    let mut group_linked = false;
    if let Some(group) = &settings.test_group {
        say(
            progress,
            &format!("step 4: PUT /api/user/link-groups {group}…"),
        );
        let link = Exchange::of(
            &send(
                portal,
                Method::PUT,
                &["link-groups"],
                Some(&json!({ "userEmail": email, "groups": [group] })),
            )
            .await?,
        );
        let link_ok = link.ok();
        facts.link_groups = Some(link);
        if !link_ok {
            return Err(Stop(format!("linking the group {group} was refused")));
        }
        let after = matching(portal, email).await?;
        group_linked = after.first().is_some_and(|u| has_group(u, group));
        if !group_linked {
            return Err(Stop(format!(
                "the group {group} is not listed on {email} after link-groups"
            )));
        }
    }
    say(
        progress,
        "step 4: PUT /api/user with only id, email, name and role…",
    );
    let minimal = json!({ "id": id, "email": email, "name": RENAMED, "role": viewer });
    let put = send(portal, Method::PUT, &[], Some(&minimal)).await?;
    facts.put.status = Some(put.status);
    if !put.is_success() {
        return Err(Stop(format!(
            "the minimal PUT /api/user answered {}: {}",
            put.status,
            put.text()
        )));
    }
    let after = matching(portal, email)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Stop(format!("{email} is not listed after the PUT")))?;
    facts.put.name_changed = Some(after.get("name").and_then(Value::as_str) == Some(RENAMED));
    if let Some(group) = settings.test_group.as_deref().filter(|_| group_linked) {
        facts.put.keeps_groups = Some(has_group(&after, group));
    }
    if extra_stored {
        facts.put.keeps_flags = Some(after.get(PROBE_FLAG).and_then(Value::as_bool) == Some(true));
        facts.put.keeps_nullable_fields =
            Some(after.get("department").and_then(Value::as_str) == Some(PROBE_DEPARTMENT));
    }

    // Step 5: delete, twice.
    say(
        progress,
        &format!("step 5: DELETE /api/user/{email}, twice…"),
    );
    facts.delete = Some(Exchange::of(
        &send(portal, Method::DELETE, &[email], None).await?,
    ));
    facts.delete_again = Some(Exchange::of(
        &send(portal, Method::DELETE, &[email], None).await?,
    ));
    Ok(())
}

/// A progress line; best effort: a closed stderr must not skip the cleanup.
fn say(progress: &mut dyn Write, text: &str) {
    let _ = writeln!(progress, "{text}");
}

/// A part of `email` that is not all of it: without its first and last characters.
fn partial_of(email: &str) -> String {
    let chars: Vec<char> = email.chars().collect();
    if chars.len() > 2 {
        chars[1..chars.len() - 1].iter().collect()
    } else {
        email.to_owned()
    }
}

fn has_group(user: &serde_json::Map<String, Value>, group: &str) -> bool {
    user.get("groups")
        .and_then(Value::as_array)
        .is_some_and(|g| {
            g.iter()
                .any(|g| g.as_str().is_some_and(|g| g.eq_ignore_ascii_case(group)))
        })
}

async fn send(
    portal: &PortalClient,
    method: Method,
    segments: &[&str],
    body: Option<&Value>,
) -> Result<RawAnswer, Stop> {
    let what = format!(
        "{method} /api/user{}",
        if segments.is_empty() { "" } else { "/…" }
    );
    portal
        .raw(method, segments, &[], body)
        .await
        .map_err(|err| Stop(format!("{what}: {}", crate::error::chain(&err))))
}

async fn get(portal: &PortalClient, query: &[(&str, &str)]) -> Result<RawAnswer, Stop> {
    portal
        .raw(Method::GET, &[], query, None)
        .await
        .map_err(|err| Stop(format!("GET /api/user: {}", crate::error::chain(&err))))
}

/// Whether `GET /api/user?email=<filter>&pageNumber=1` lists `wanted`.
async fn lists(portal: &PortalClient, filter: &str, wanted: &str) -> Result<bool, Stop> {
    let answer = get(portal, &[("email", filter), ("pageNumber", "1")]).await?;
    if !answer.is_success() {
        return Err(Stop(format!(
            "GET /api/user?email= answered {}",
            answer.status
        )));
    }
    Ok(users_of(&answer).iter().any(|u| email_is(u, wanted)))
}

/// The users listed for `email` whose address is exactly it (page 1 of the filter).
async fn matching(
    portal: &PortalClient,
    email: &str,
) -> Result<Vec<serde_json::Map<String, Value>>, Stop> {
    let answer = get(portal, &[("email", email), ("pageNumber", "1")]).await?;
    if !answer.is_success() {
        return Err(Stop(format!(
            "GET /api/user?email= answered {}",
            answer.status
        )));
    }
    Ok(users_of(&answer)
        .into_iter()
        .filter(|u| email_is(u, email))
        .collect())
}

fn users_of(answer: &RawAnswer) -> Vec<serde_json::Map<String, Value>> {
    let body = answer.json().unwrap_or(Value::Null);
    let items = match &body {
        Value::Array(items) => items.clone(),
        other => other
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    };
    items
        .into_iter()
        .filter_map(|u| match u {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .collect()
}

fn email_is(user: &serde_json::Map<String, Value>, email: &str) -> bool {
    user.get("email")
        .and_then(Value::as_str)
        .is_some_and(|e| e.trim().eq_ignore_ascii_case(email.trim()))
}

/// Deletes the throw-away user if it still exists, and checks that it is gone.
async fn cleanup(portal: &PortalClient, email: &str) -> Cleanup {
    let by_hand = format!(
        "delete {email} by hand in the Administration Portal (Users) within a day, or the portal bills it"
    );
    match portal.find_user(email).await {
        Ok(None) => {
            return Cleanup {
                user_removed: true,
                detail: format!("{email} is gone"),
            };
        }
        Ok(Some(_)) => {}
        Err(err) => {
            return Cleanup {
                user_removed: false,
                detail: format!(
                    "cannot tell whether {email} still exists ({}): {by_hand}",
                    crate::error::chain(&err)
                ),
            };
        }
    }
    if let Err(err) = portal.delete_user(email).await {
        return Cleanup {
            user_removed: false,
            detail: format!(
                "could not delete {email} ({}): {by_hand}",
                crate::error::chain(&err)
            ),
        };
    }
    match portal.find_user(email).await {
        Ok(None) => Cleanup {
            user_removed: true,
            detail: format!("{email} was deleted"),
        },
        _ => Cleanup {
            user_removed: false,
            detail: format!("{email} is still listed after DELETE: {by_hand}"),
        },
    }
}

/// Writes the facts to `dir/portal-facts.json` (through a temporary file and a rename).
fn write_facts(dir: &Path, facts: &Facts) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FACTS_FILE);
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut file, facts).map_err(io::Error::other)?;
    writeln!(file)?;
    file.persist(&path).map_err(|err| err.error)?;
    Ok(path)
}

/// What a previous probe observed of the minimal `PUT`, for the plan's `write-only-flags` note:
/// `dir/portal-facts.json` when it exists, parses and was recorded for `base_url` (facts of
/// another portal say nothing about this one). Anything else is `None` (logged at debug).
pub fn read_put_facts(dir: &Path, base_url: &url::Url) -> Option<ProbedPut> {
    let path = dir.join(FACTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => {
            tracing::debug!(path = %path.display(), error = %err, "no portal probe facts");
            return None;
        }
    };
    let facts: Value = match serde_json::from_str(&text) {
        Ok(facts) => facts,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "the portal probe facts are not JSON: ignored");
            return None;
        }
    };
    if facts.get("portalBaseUrl").and_then(Value::as_str) != Some(base_url.as_str()) {
        tracing::debug!(path = %path.display(), "the portal probe facts are of another portal.baseUrl: ignored");
        return None;
    }
    let time = facts
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())?
        .with_timezone(&Utc);
    let put = facts.get("put");
    let fact = |name: &str| put.and_then(|p| p.get(name)).and_then(Value::as_bool);
    Some(ProbedPut {
        time,
        keeps_flags: fact("keepsFlags"),
        keeps_groups: fact("keepsGroups"),
        keeps_nullable_fields: fact("keepsNullableFields"),
    })
}

/// A summary of the facts for people.
pub fn render_summary(facts: &Facts, path: &Path, out: &mut dyn Write) -> io::Result<()> {
    let shown = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not observed",
    };
    let status = |e: &Option<Exchange>| {
        e.as_ref()
            .map_or_else(|| "not sent".to_owned(), |e| e.status.to_string())
    };
    writeln!(out, "Portal facts of {}:", facts.portal_base_url)?;
    writeln!(
        out,
        "  page size            {}{}",
        facts
            .page_size
            .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
        if facts.page_size_is_lower_bound == Some(true) {
            " (at least: one page only)"
        } else {
            ""
        }
    )?;
    if let Some(filter) = &facts.email_filter {
        writeln!(
            out,
            "  email filter         {}, {}",
            if filter.contains { "contains" } else { "exact" },
            if filter.case_insensitive {
                "case-insensitive"
            } else {
                "case-sensitive"
            }
        )?;
    }
    writeln!(out, "  POST                 {}", status(&facts.create))?;
    writeln!(
        out,
        "  duplicate POST       {}{}",
        status(&facts.duplicate_create),
        if facts.duplicate_creates_second_user == Some(true) {
            " (created a second user!)"
        } else {
            ""
        }
    )?;
    if facts.link_groups.is_some() {
        writeln!(out, "  link-groups          {}", status(&facts.link_groups))?;
    }
    writeln!(
        out,
        "  minimal PUT          {}",
        facts
            .put
            .status
            .map_or_else(|| "not sent".to_owned(), |s| s.to_string())
    )?;
    writeln!(
        out,
        "    keeps groups       {}",
        shown(facts.put.keeps_groups)
    )?;
    writeln!(
        out,
        "    keeps reports      {}",
        shown(facts.put.keeps_reports)
    )?;
    writeln!(
        out,
        "    keeps flags        {}",
        shown(facts.put.keeps_flags)
    )?;
    writeln!(
        out,
        "    keeps department   {}",
        shown(facts.put.keeps_nullable_fields)
    )?;
    writeln!(
        out,
        "  DELETE, again        {}, {}",
        status(&facts.delete),
        status(&facts.delete_again)
    )?;
    if let Some(cleanup) = &facts.cleanup {
        writeln!(out, "  cleanup              {}", cleanup.detail)?;
    }
    if let Some(stopped) = &facts.stopped {
        writeln!(out, "  stopped early        {stopped}")?;
    }
    for note in &facts.notes {
        writeln!(out, "  note: {note}")?;
    }
    writeln!(out, "Recorded in {}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_facts_are_read_back_for_the_same_portal_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let base = url::Url::parse("https://api.powerembedded.com.br/").expect("url");
        assert_eq!(read_put_facts(dir.path(), &base), None, "no file");
        let facts = Facts {
            time: DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
                .expect("a time")
                .with_timezone(&Utc),
            portal_base_url: base.to_string(),
            test_email: "probe@contoso.example".to_owned(),
            complete: true,
            stopped: None,
            known_admin_role: Some(1),
            page_size: None,
            page_size_is_lower_bound: None,
            email_filter: None,
            create: None,
            create_stores_extra_fields: Some(true),
            duplicate_create: None,
            duplicate_creates_second_user: None,
            link_groups: None,
            put: PutFacts {
                keeps_flags: Some(false),
                keeps_groups: Some(true),
                ..PutFacts::default()
            },
            delete: None,
            delete_again: None,
            cleanup: None,
            notes: Vec::new(),
        };
        write_facts(dir.path(), &facts).expect("written");
        assert_eq!(
            read_put_facts(dir.path(), &base),
            Some(ProbedPut {
                time: facts.time,
                keeps_flags: Some(false),
                keeps_groups: Some(true),
                keeps_nullable_fields: None,
            })
        );
        let other = url::Url::parse("https://pe.example/").expect("url");
        assert_eq!(read_put_facts(dir.path(), &other), None, "another portal");
    }

    #[test]
    fn the_partial_address_is_a_strict_part() {
        assert_eq!(partial_of("admin@contoso.example"), "dmin@contoso.exampl");
        assert_eq!(partial_of("ab"), "ab");
    }
}
