//! `guestops status`: one row per desired user — the guest (invited, pending since, accepted),
//! the portal registration and its role, the last change, ownership. Pure: built from the same
//! observation as a plan, with today's date passed in.

use std::collections::HashMap;
use std::io::{self, Write};

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::desired::spec::{DesiredState, normalize_email};
use crate::reconcile::plan::{GuestIndex, Observed};
use crate::reconcile::state::State;
use crate::remote::graph::DirectoryUser;
use crate::remote::portal::PortalUser;

/// The tenant side of a desired user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestStatus {
    /// No guest or member holds the address.
    Missing,
    /// Invited, not redeemed yet.
    Pending,
    /// Invitation redeemed.
    Accepted,
    /// A guest without an invitation state (e.g. created another way).
    Guest,
    /// An internal member of the tenant: no invitation needed.
    Member,
}

/// One row of `guestops status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    /// The address as written in `users.yaml`.
    pub email: String,
    /// Desired role.
    pub desired_role: String,
    /// The tenant side.
    pub guest: GuestStatus,
    /// Since when the invitation is pending (or when it was accepted).
    pub guest_since: Option<DateTime<Utc>>,
    /// Whether a portal user holds the address.
    pub registered: bool,
    /// The portal role (`unknown(7)` for a code guestops does not know).
    pub portal_role: Option<String>,
    /// Last change guestops applied to this user.
    pub last_change: Option<DateTime<Utc>>,
    /// Whether guestops owns the guest / the portal user.
    pub owned: bool,
    /// Whether the user's `expires` day is past: the entry grants nothing and the
    /// registration is due for removal.
    pub expired: bool,
    /// The user's `expires` day, if any.
    pub expires: Option<NaiveDate>,
    /// Whether the access ends within `policy.expiryNoticeBefore` ([`mark_expiring`]).
    pub expiring: bool,
    /// Whether tenant and portal both match users.yaml (for an expired user: whether the
    /// portal registration is gone).
    pub in_sync: bool,
}

/// The guest that stands for a desired user among the tenant users matching its address: the
/// one recorded in state, else a member (no invitation needed), else the first match.
fn pick<'a>(matches: &[&'a DirectoryUser], recorded: Option<&str>) -> Option<&'a DirectoryUser> {
    matches
        .iter()
        .find(|u| Some(u.id.as_str()) == recorded)
        .or_else(|| matches.iter().find(|u| !u.is_guest()))
        .or_else(|| matches.first())
        .copied()
}

/// Builds the rows, sorted by normalized email. `today` (UTC) decides which `expires` dates
/// are past.
pub fn rows(
    desired: &DesiredState,
    observed: &Observed,
    state: &State,
    today: NaiveDate,
) -> Vec<StatusRow> {
    let index = GuestIndex::new(observed.guests.iter().chain(observed.lookups.iter()));
    // First registration per address, as the portal client and the plan see it.
    let mut portal_by_email: HashMap<String, &PortalUser> =
        HashMap::with_capacity(observed.portal_users.len());
    for user in &observed.portal_users {
        portal_by_email
            .entry(normalize_email(&user.email))
            .or_insert(user);
    }
    desired
        .users
        .iter()
        .map(|(key, user)| {
            let record = state.users.get(key);
            let recorded = record.and_then(|r| r.guest_id.as_deref());
            let matches = index.find(key, recorded);
            let (guest, guest_since) = match pick(&matches, recorded) {
                None => (GuestStatus::Missing, None),
                Some(found) if !found.is_guest() => (GuestStatus::Member, None),
                Some(found) => {
                    let since = found.external_user_state_change_date_time;
                    match found.external_user_state.as_deref() {
                        Some(s) if s.eq_ignore_ascii_case("PendingAcceptance") => {
                            (GuestStatus::Pending, since.or(found.created_date_time))
                        }
                        Some(s) if s.eq_ignore_ascii_case("Accepted") => {
                            (GuestStatus::Accepted, since)
                        }
                        _ => (GuestStatus::Guest, None),
                    }
                }
            };
            let portal = portal_by_email.get(key.as_str()).copied();
            let portal_role = portal.map(|p| match (p.role, p.role_code) {
                (Some(role), _) => role.as_str().to_owned(),
                (None, Some(code)) => format!("unknown({code})"),
                (None, None) => "unknown".to_owned(),
            });
            let expired = user.expires.is_some_and(|e| e < today);
            let in_sync = if expired {
                portal.is_none()
            } else {
                guest != GuestStatus::Missing
                    && portal.is_some_and(|p| p.role == Some(user.role) && p.name == user.name)
            };
            StatusRow {
                email: user.email.as_str().to_owned(),
                desired_role: user.role.as_str().to_owned(),
                guest,
                guest_since,
                registered: portal.is_some(),
                portal_role,
                last_change: record.and_then(|r| r.last_change),
                owned: record.is_some_and(|r| r.guest_owned || r.portal_owned),
                expired,
                expires: user.expires,
                expiring: false,
                in_sync,
            }
        })
        .collect()
}

/// Marks the rows of the users in `expiring` (the access that ends within
/// `policy.expiryNoticeBefore`: [`crate::reconcile::plan::expiring_access`]).
pub fn mark_expiring(rows: &mut [StatusRow], expiring: &[crate::reconcile::plan::ExpiringAccess]) {
    for row in rows {
        let key = normalize_email(&row.email);
        row.expiring = expiring.iter().any(|e| e.key == key);
    }
}

/// How status is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    /// An aligned table.
    Text,
    /// A JSON array of rows.
    Json,
}

fn day(time: Option<DateTime<Utc>>) -> String {
    time.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d").to_string())
}

/// Writes the rows in `format`.
pub fn render(rows: &[StatusRow], format: StatusFormat, out: &mut dyn Write) -> io::Result<()> {
    if format == StatusFormat::Json {
        serde_json::to_writer_pretty(&mut *out, rows)?;
        return writeln!(out);
    }
    // The EXPIRES column only when some user has an `expires` day.
    let with_expiry = rows.iter().any(|r| r.expires.is_some());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let guest = match r.guest {
                GuestStatus::Missing => "not invited".to_owned(),
                GuestStatus::Pending => format!("pending since {}", day(r.guest_since)),
                GuestStatus::Accepted => match r.guest_since {
                    Some(_) => format!("accepted {}", day(r.guest_since)),
                    None => "accepted".to_owned(),
                },
                GuestStatus::Guest => "guest".to_owned(),
                GuestStatus::Member => "member".to_owned(),
            };
            let portal = match (&r.portal_role, r.registered, r.expired) {
                (Some(role), true, true) => format!("{role} (expired: to remove)"),
                (_, false, true) => "not registered (expired)".to_owned(),
                (Some(role), true, false) if *role == r.desired_role => role.clone(),
                (Some(role), true, false) => format!("{role} (wants {})", r.desired_role),
                _ => "not registered".to_owned(),
            };
            let mut row = vec![r.email.clone(), guest, portal];
            if with_expiry {
                row.push(match (r.expires, r.expiring) {
                    (None, _) => "-".to_owned(),
                    (Some(date), true) => format!("{date} (soon)"),
                    (Some(date), false) => date.to_string(),
                });
            }
            row.extend([
                day(r.last_change),
                if r.owned { "yes" } else { "no" }.to_owned(),
                if r.in_sync { "yes" } else { "no" }.to_owned(),
            ]);
            row
        })
        .collect();
    let mut header = vec!["USER", "GUEST", "PORTAL ROLE"];
    if with_expiry {
        header.push("EXPIRES");
    }
    header.extend(["LAST CHANGE", "OWNED", "IN SYNC"]);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str], out: &mut dyn Write| -> io::Result<()> {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(&header, out)?;
    for row in &table {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells, out)?;
    }
    let soon: Vec<&str> = rows
        .iter()
        .filter(|r| r.expiring)
        .map(|r| r.email.as_str())
        .collect();
    if !soon.is_empty() {
        writeln!(
            out,
            "\nAccess ending soon (policy.expiryNoticeBefore): {}; extend `expires` in users.yaml to keep it.",
            soon.join(", ")
        )?;
    }
    let synced = rows.iter().filter(|r| r.in_sync).count();
    writeln!(
        out,
        "\n{synced} of {} in sync.",
        crate::markup::count(rows.len(), "user")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::spec::{self, Role, SpecPolicy};
    use crate::reconcile::state::UserRecord;

    const USERS: &str = "apiVersion: guestops/v1
users:
  - email: Ana@Partner.example
    name: Ana
  - email: old@partner.example
    name: Old
    expires: 2025-01-31
";

    fn desired() -> DesiredState {
        let parsed = spec::parse(USERS.as_bytes(), &SpecPolicy::default());
        parsed.desired.unwrap_or_default()
    }

    fn guest(id: &str, mail: &str, state: &str) -> DirectoryUser {
        DirectoryUser {
            id: id.to_owned(),
            mail: Some(mail.to_owned()),
            user_type: Some("Guest".to_owned()),
            external_user_state: Some(state.to_owned()),
            ..DirectoryUser::default()
        }
    }

    fn portal(email: &str, name: &str, role: Option<Role>, code: i64) -> PortalUser {
        PortalUser {
            id: format!("p-{email}"),
            email: email.to_owned(),
            name: name.to_owned(),
            role_code: Some(code),
            role,
        }
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
    }

    #[test]
    fn recorded_guest_wins_over_another_match() {
        let observed = Observed {
            guests: vec![
                guest("a-first", "ana@partner.example", "PendingAcceptance"),
                guest("b-recorded", "ana@partner.example", "Accepted"),
            ],
            ..Observed::default()
        };
        let mut state = State::default();
        state.users.insert(
            "ana@partner.example".to_owned(),
            UserRecord {
                guest_id: Some("b-recorded".to_owned()),
                guest_owned: true,
                ..UserRecord::default()
            },
        );
        let rows = rows(&desired(), &observed, &state, day(2025, 1, 1));
        assert_eq!(rows[0].email, "Ana@Partner.example");
        assert_eq!(rows[0].guest, GuestStatus::Accepted);
        assert!(rows[0].owned);
    }

    #[test]
    fn expired_user_is_in_sync_only_once_unregistered() {
        let observed = Observed {
            portal_users: vec![portal(
                "OLD@partner.example",
                "Old",
                Some(Role::Administrator),
                1,
            )],
            ..Observed::default()
        };
        let state = State::default();
        let before = rows(&desired(), &observed, &state, day(2025, 1, 31));
        assert!(!before[1].expired, "access lasts until the end of the day");
        assert!(!before[1].in_sync, "no guest yet");
        let after = rows(&desired(), &observed, &state, day(2025, 2, 1));
        assert!(after[1].expired);
        assert!(!after[1].in_sync);
        let mut out = Vec::new();
        render(&after, StatusFormat::Text, &mut out).unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("administrator (expired: to remove)"),
            "{text}"
        );
        let gone = rows(&desired(), &Observed::default(), &state, day(2025, 2, 1));
        assert!(gone[1].in_sync);
    }

    #[test]
    fn member_unknown_role_code_and_wrong_role_are_shown() {
        let observed = Observed {
            lookups: vec![DirectoryUser {
                id: "m".to_owned(),
                mail: Some("ana@partner.example".to_owned()),
                user_type: Some("Member".to_owned()),
                ..DirectoryUser::default()
            }],
            portal_users: vec![
                portal("ana@partner.example", "Ana", None, 7),
                portal("old@partner.example", "Old", Some(Role::Viewer), 3),
            ],
            ..Observed::default()
        };
        let rows = rows(&desired(), &observed, &State::default(), day(2025, 1, 1));
        assert_eq!(rows[0].guest, GuestStatus::Member);
        assert_eq!(rows[0].portal_role.as_deref(), Some("unknown(7)"));
        assert!(!rows[0].in_sync);
        let mut out = Vec::new();
        render(&rows, StatusFormat::Text, &mut out).unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("unknown(7) (wants administrator)"), "{text}");
        assert!(text.contains("viewer (wants administrator)"), "{text}");
        assert!(text.contains("not invited"), "{text}");
        assert!(text.ends_with("0 of 2 users in sync.\n"), "{text}");
    }

    #[test]
    fn expiring_access_is_a_column_and_a_line() {
        let text = "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: Ana\n    expires: 2026-12-04\n  - email: bob@partner.example\n    name: Bob\n";
        let desired = spec::parse(text.as_bytes(), &SpecPolicy::default())
            .desired
            .unwrap_or_default();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let mut rows = rows(
            &desired,
            &Observed::default(),
            &State::default(),
            now.date_naive(),
        );
        let week = Some(std::time::Duration::from_secs(7 * 86_400));
        let expiring = crate::reconcile::plan::expiring_access(&desired, now, week);
        mark_expiring(&mut rows, &expiring);
        assert!(rows[0].expiring && !rows[1].expiring, "{rows:?}");
        let mut out = Vec::new();
        render(&rows, StatusFormat::Text, &mut out).unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.lines().next().unwrap_or_default().contains("EXPIRES"),
            "{text}"
        );
        assert!(text.contains("2026-12-04 (soon)"), "{text}");
        assert!(
            text.contains("Access ending soon (policy.expiryNoticeBefore): ana@partner.example;"),
            "{text}"
        );
        // Without any `expires`, no column.
        let mut out = Vec::new();
        render(&rows[1..], StatusFormat::Text, &mut out).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&out).contains("EXPIRES"));
    }
}
