//! Operator edits of guestops' own state (issue 10) — suspend, resume, forget — and the
//! read-only view of what guestops owns (`guestops state list|show`).
//!
//! Pure functions over [`State`] and a desired state: the caller holds the instance lock (the
//! daemon, asked through its control socket, or the CLI when no daemon runs), saves the state
//! and appends the audit line. Nothing here talks to Graph or the portal: `forget` leaves the
//! user as it is remotely, and a user guestops does not own is never removed by it.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::reconcile::Desired;
use crate::reconcile::plan::System;
use crate::reconcile::plan::owned::{Acquired, State, Suspension, UserRecord};
use crate::reconcile::state::{AuditRecord, AuditResult};
use crate::remote::identity::normalize_email;

/// Suspends reconciles: `Ok` with the new suspension, `Err` with the one already in force
/// (left as it is).
pub fn suspend(
    state: &mut State,
    reason: Option<String>,
    by: String,
    now: DateTime<Utc>,
) -> Result<Suspension, Suspension> {
    if let Some(already) = &state.suspended {
        return Err(already.clone());
    }
    let suspension = Suspension {
        since: now,
        reason: reason.filter(|r| !r.trim().is_empty()),
        by,
    };
    state.suspended = Some(suspension.clone());
    Ok(suspension)
}

/// Lifts the suspension; returns it (`None`: nothing was suspended).
pub fn resume(state: &mut State) -> Option<Suspension> {
    state.suspended.take()
}

/// One sentence about a suspension: `suspended since … by … (reason: …)`.
pub fn describe_suspension(s: &Suspension) -> String {
    let mut text = format!(
        "suspended since {} by {}",
        s.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        s.by
    );
    if let Some(reason) = &s.reason {
        text.push_str(&format!(" (reason: {reason})"));
    }
    text
}

/// Why `forget` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    /// The state holds no record of the address.
    #[error(
        "guestops holds no record of {email}: it owns nothing of it (`guestops state list` shows what it owns)"
    )]
    NotOwned {
        /// The address as given.
        email: String,
    },
    /// The address is still in `users.yaml`: the next reconcile would adopt it again.
    #[error(
        "{email} is still in users.yaml at {revision}: the next reconcile would adopt it again; remove the entry from users.yaml (a pull request) first, then forget it"
    )]
    StillDesired {
        /// The address as given.
        email: String,
        /// The revision that lists it (short form).
        revision: String,
    },
}

/// Drops guestops' record of `email` (ownership, progress, intents), refused while
/// `desired` (the source's current revision) lists it. The user is left untouched remotely;
/// without a record guestops never removes it (it removes only what it owns). Returns the
/// dropped record, for the audit line.
pub fn forget(
    state: &mut State,
    email: &str,
    desired: &Desired,
) -> Result<UserRecord, ForgetError> {
    let key = normalize_email(email);
    if desired.state.users.contains_key(&key) {
        return Err(ForgetError::StillDesired {
            email: email.to_owned(),
            revision: desired.revision.short.clone(),
        });
    }
    state
        .users
        .remove(&key)
        .ok_or_else(|| ForgetError::NotOwned {
            email: email.to_owned(),
        })
}

/// The audit line of a `forget`: action `forget`, system `state`, no remote write.
pub fn forget_audit(
    record: &UserRecord,
    revision: &str,
    by: &str,
    now: DateTime<Utc>,
) -> AuditRecord {
    let mut left = Vec::new();
    if let Some(id) = &record.guest_id {
        left.push(format!("guest {id}"));
    }
    if let Some(id) = &record.portal_id {
        left.push(format!("portal user {id}"));
    }
    let left = if left.is_empty() {
        "nothing remote was touched".to_owned()
    } else {
        format!(
            "{} left as they are; guestops never removes them",
            left.join(" and ")
        )
    };
    AuditRecord {
        time: now,
        revision: Some(revision.to_owned()),
        author: None,
        action: "forget".to_owned(),
        system: System::State,
        user: record.email.clone(),
        result: AuditResult::Ok,
        detail: Some(format!("ownership dropped by {by}; {left}")),
        request_id: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The view: `guestops state list|show`

/// One side (guest or portal user) of a record, as `state list|show` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    /// Whether guestops owns it (and may remove it when it leaves `users.yaml`).
    pub owned: bool,
    /// The remote id (Graph object id, portal id), when known.
    pub id: Option<String>,
    /// How and when ownership was taken (`None` for records older than state version 3).
    pub acquired: Option<Acquired>,
}

/// What guestops remembers of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The address as last written in `users.yaml`.
    pub email: String,
    /// The tenant guest.
    pub guest: Side,
    /// The portal registration.
    pub portal: Side,
    /// When guestops first invited the guest.
    pub invited_at: Option<DateTime<Utc>>,
    /// Invitations re-sent.
    pub resend_count: u32,
    /// The last change guestops applied to the user.
    pub last_change: Option<DateTime<Utc>>,
    /// Since when a removal waits (refused, failing, or `prune` off).
    pub removal_pending_since: Option<DateTime<Utc>>,
    /// An open write-ahead intent (an invitation or registration whose outcome the next
    /// reconcile resolves by observation), since.
    pub open_intent_since: Option<DateTime<Utc>>,
    /// guestops disabled the guest at a removal (and enables it again if granted again).
    pub guest_disabled: bool,
}

impl Entry {
    /// The view of `record`.
    pub fn of(record: &UserRecord) -> Entry {
        Entry {
            email: record.email.clone(),
            guest: Side {
                owned: record.guest_owned,
                id: record.guest_id.clone(),
                acquired: record.guest_acquired.clone(),
            },
            portal: Side {
                owned: record.portal_owned,
                id: record.portal_id.clone(),
                acquired: record.portal_acquired.clone(),
            },
            invited_at: record.invited_at,
            resend_count: record.resend_count,
            last_change: record.last_change,
            removal_pending_since: record.removal_pending_since,
            open_intent_since: record
                .invitation_unconfirmed_at
                .max(record.registration_unconfirmed_at),
            guest_disabled: record.guest_disabled,
        }
    }
}

/// The whole state, as `state list --format json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    /// The schema version of `state.json`.
    pub version: u32,
    /// The last fully applied revision.
    pub revision: Option<String>,
    /// The suspension in force.
    pub suspended: Option<Suspension>,
    /// One entry per record, by address.
    pub users: Vec<Entry>,
}

/// The listing of `state`.
pub fn listing(state: &State) -> Listing {
    Listing {
        version: state.version,
        revision: state.revision.clone(),
        suspended: state.suspended.clone(),
        users: state.users.values().map(Entry::of).collect(),
    }
}

/// The entry of `email` (any spelling), if guestops has a record of it.
pub fn entry(state: &State, email: &str) -> Option<Entry> {
    state.users.get(&normalize_email(email)).map(Entry::of)
}

/// A commit id cut to 7 characters; a file's content hash `sha256:…` keeps its prefix.
fn short(revision: &str) -> String {
    let (prefix, hash) = match revision.strip_prefix("sha256:") {
        Some(hash) => ("sha256:", hash),
        None => ("", revision),
    };
    format!("{prefix}{}", hash.get(..7).unwrap_or(hash))
}

fn minute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// `invited 2026-12-01 10:00 @1a2b3c4`, `adopted …`, `owned` (how unknown), `-` (not owned).
fn side_cell(side: &Side, disabled: bool) -> String {
    match (&side.acquired, side.owned) {
        (Some(a), true) => {
            let mut cell = format!("{} {}", a.how.name(), minute(a.at));
            if let Some(rev) = &a.revision {
                cell.push_str(&format!(" @{}", short(rev)));
            }
            cell
        }
        (None, true) => "owned".to_owned(),
        _ if disabled => "disabled, released".to_owned(),
        _ => "-".to_owned(),
    }
}

/// `state list` as text: one line about the state, then one row per user.
pub fn write_list_text(state: &State, out: &mut dyn Write) -> std::io::Result<()> {
    let owned = state
        .users
        .values()
        .filter(|r| r.guest_owned || r.portal_owned)
        .count();
    writeln!(
        out,
        "{} records, {owned} users owned; last applied revision {}.",
        state.users.len(),
        state.revision.as_deref().map_or("none".to_owned(), short)
    )?;
    if let Some(s) = &state.suspended {
        writeln!(out, "Reconciles are {}.", describe_suspension(s))?;
    }
    if state.users.is_empty() {
        return Ok(());
    }
    let rows: Vec<[String; 4]> = state
        .users
        .values()
        .map(Entry::of)
        .map(|e| {
            let mut notes = Vec::new();
            if let Some(since) = e.removal_pending_since {
                notes.push(format!("removal pending since {}", minute(since)));
            }
            if let Some(since) = e.open_intent_since {
                notes.push(format!("intent open since {}", minute(since)));
            }
            let last = e.last_change.map_or("-".to_owned(), minute);
            let last = if notes.is_empty() {
                last
            } else {
                format!("{last} ({})", notes.join(", "))
            };
            [
                e.email.clone(),
                side_cell(&e.guest, e.guest_disabled),
                side_cell(&e.portal, false),
                last,
            ]
        })
        .collect();
    let header = ["EMAIL", "GUEST", "PORTAL", "LAST CHANGE"].map(str::to_owned);
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    for row in std::iter::once(&header).chain(rows.iter()) {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )?;
    }
    Ok(())
}

/// `state show EMAIL` as text.
pub fn write_show_text(entry: &Entry, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{}", entry.email)?;
    let side = |name: &str, side: &Side, out: &mut dyn Write| -> std::io::Result<()> {
        let id = side.id.as_deref().unwrap_or("unknown");
        match (&side.acquired, side.owned) {
            (Some(a), true) => {
                write!(
                    out,
                    "  {name}owned: {} at {}",
                    a.how.name(),
                    a.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )?;
                match &a.revision {
                    Some(rev) => write!(out, ", revision {rev}")?,
                    None => write!(out, ", revision not recorded")?,
                }
                writeln!(out, " (id {id})")
            }
            (None, true) => writeln!(
                out,
                "  {name}owned (id {id}; how and when not recorded: taken before state version 3)"
            ),
            _ => writeln!(out, "  {name}not owned"),
        }
    };
    side("guest:   ", &entry.guest, out)?;
    side("portal:  ", &entry.portal, out)?;
    if let Some(at) = entry.invited_at {
        writeln!(
            out,
            "  invited: {} ({} re-sent)",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            entry.resend_count
        )?;
    }
    if entry.guest_disabled {
        writeln!(
            out,
            "  guestops disabled the guest at a removal; it enables it again if the user is granted again"
        )?;
    }
    if let Some(at) = entry.last_change {
        writeln!(
            out,
            "  last change: {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
    }
    if let Some(at) = entry.removal_pending_since {
        writeln!(
            out,
            "  removal pending since {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
    }
    if let Some(at) = entry.open_intent_since {
        writeln!(
            out,
            "  an invitation or registration of unknown outcome since {} (resolved by the next reconcile)",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::source::Revision;
    use crate::desired::spec::{self, SpecPolicy};

    fn desired(yaml: &str) -> Desired {
        let parsed = spec::parse(yaml.as_bytes(), &SpecPolicy::default());
        Desired {
            state: parsed.desired.expect("valid"),
            revision: Revision {
                id: "1234567890abcdef".into(),
                short: "1234567".into(),
                author: String::new(),
                time: DateTime::<Utc>::UNIX_EPOCH,
                subject: String::new(),
            },
            branch: None,
        }
    }

    fn state_with(email: &str) -> State {
        let mut state = State::default();
        state.users.insert(
            normalize_email(email),
            UserRecord {
                email: email.into(),
                guest_id: Some("g-1".into()),
                guest_owned: true,
                ..UserRecord::default()
            },
        );
        state
    }

    const ANA_ONLY: &str =
        "apiVersion: guestops/v1\nusers:\n  - email: ana@x.example\n    name: Ana\n";

    #[test]
    fn forget_drops_a_record_no_longer_desired_and_refuses_one_still_listed() {
        let mut state = state_with("Bob@x.example");
        state.users.extend(state_with("ana@x.example").users);
        let err = forget(&mut state, "ANA@x.example", &desired(ANA_ONLY)).unwrap_err();
        assert!(matches!(err, ForgetError::StillDesired { .. }), "{err:?}");
        assert!(err.to_string().contains("1234567"), "{err}");
        assert_eq!(state.users.len(), 2, "nothing dropped");

        let dropped = forget(&mut state, "bob@X.example", &desired(ANA_ONLY)).unwrap();
        assert_eq!(dropped.email, "Bob@x.example");
        assert!(!state.users.contains_key("bob@x.example"));
        assert!(
            state.users.contains_key("ana@x.example"),
            "only bob is dropped"
        );

        let err = forget(&mut state, "bob@x.example", &desired(ANA_ONLY)).unwrap_err();
        assert!(matches!(err, ForgetError::NotOwned { .. }), "{err:?}");

        let audit = forget_audit(
            &dropped,
            "1234567890",
            "ops (uid 0)",
            DateTime::<Utc>::UNIX_EPOCH,
        );
        assert_eq!(audit.action, "forget");
        assert_eq!(audit.system, System::State);
        let detail = audit.detail.unwrap_or_default();
        assert!(
            detail.contains("guest g-1") && detail.contains("ops (uid 0)"),
            "{detail}"
        );
    }

    #[test]
    fn revisions_are_shortened_with_their_kind() {
        assert_eq!(short("1234567890abcdef"), "1234567");
        assert_eq!(short("sha256:1ffbc2f3a802fc6c"), "sha256:1ffbc2f");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn suspend_keeps_the_first_suspension_and_resume_lifts_it() {
        let mut state = State::default();
        let t = DateTime::<Utc>::UNIX_EPOCH;
        let first = suspend(&mut state, Some("CHG-1".into()), "ana".into(), t).unwrap();
        let again = suspend(&mut state, Some("other".into()), "bob".into(), t).unwrap_err();
        assert_eq!(again, first, "the suspension in force is kept");
        assert!(describe_suspension(&first).contains("by ana (reason: CHG-1)"));
        assert_eq!(resume(&mut state), Some(first));
        assert_eq!(resume(&mut state), None);
    }

    #[test]
    fn a_version_2_state_without_the_new_fields_lists_as_owned_how_unknown() {
        let state: State = serde_json::from_str(
            r#"{"version":2,"users":{"ana@x.example":{"email":"ana@x.example","guestId":"g","guestOwned":true}}}"#,
        )
        .unwrap();
        assert_eq!(state.suspended, None);
        let mut text = Vec::new();
        write_list_text(&state, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("ana@x.example  owned "), "{text}");
        let mut show = Vec::new();
        write_show_text(&entry(&state, "ANA@x.example").unwrap(), &mut show).unwrap();
        let show = String::from_utf8(show).unwrap();
        assert!(show.contains("not recorded"), "{show}");
    }
}
