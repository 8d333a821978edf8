//! `guestops status`: one row per desired user — the guest (invited, pending since, accepted),
//! the portal registration and its role, the last change, ownership. Pure: built from the same
//! observation as a plan.

use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::plan::{GuestIndex, Observed};
use crate::spec::{DesiredState, normalize_email};
use crate::state::State;

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
    /// Whether tenant and portal both match users.yaml.
    pub in_sync: bool,
}

/// Builds the rows, sorted by normalized email.
pub fn rows(desired: &DesiredState, observed: &Observed, state: &State) -> Vec<StatusRow> {
    let index = GuestIndex::new(observed.guests.iter().chain(observed.lookups.iter()));
    desired
        .users
        .iter()
        .map(|(key, user)| {
            let record = state.users.get(key);
            let matches = index.find(key, record.and_then(|r| r.guest_id.as_deref()));
            let (guest, guest_since) = if matches.iter().any(|u| !u.is_guest()) {
                (GuestStatus::Member, None)
            } else if let Some(found) = matches.first() {
                let since = found.external_user_state_change_date_time;
                match found.external_user_state.as_deref() {
                    Some(s) if s.eq_ignore_ascii_case("PendingAcceptance") => {
                        (GuestStatus::Pending, since.or(found.created_date_time))
                    }
                    Some(s) if s.eq_ignore_ascii_case("Accepted") => (GuestStatus::Accepted, since),
                    _ => (GuestStatus::Guest, None),
                }
            } else {
                (GuestStatus::Missing, None)
            };
            let portal = observed
                .portal_users
                .iter()
                .find(|p| normalize_email(&p.email) == *key);
            let portal_role = portal.map(|p| match (p.role, p.role_code) {
                (Some(role), _) => role.as_str().to_owned(),
                (None, Some(code)) => format!("unknown({code})"),
                (None, None) => "unknown".to_owned(),
            });
            let in_sync = guest != GuestStatus::Missing
                && portal.is_some_and(|p| p.role == Some(user.role) && p.name == user.name);
            StatusRow {
                email: user.email.as_str().to_owned(),
                desired_role: user.role.as_str().to_owned(),
                guest,
                guest_since,
                registered: portal.is_some(),
                portal_role,
                last_change: record.and_then(|r| r.last_change),
                owned: record.is_some_and(|r| r.guest_owned || r.portal_owned),
                in_sync,
            }
        })
        .collect()
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
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let guest = match r.guest {
                GuestStatus::Missing => "not invited".to_owned(),
                GuestStatus::Pending => format!("pending since {}", day(r.guest_since)),
                GuestStatus::Accepted => "accepted".to_owned(),
                GuestStatus::Guest => "guest".to_owned(),
                GuestStatus::Member => "member".to_owned(),
            };
            let portal = match (&r.portal_role, r.registered) {
                (Some(role), true) if *role == r.desired_role => role.clone(),
                (Some(role), true) => format!("{role} (wants {})", r.desired_role),
                _ => "not registered".to_owned(),
            };
            [
                r.email.clone(),
                guest,
                portal,
                day(r.last_change),
                if r.owned { "yes" } else { "no" }.to_owned(),
                if r.in_sync { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let header = [
        "USER",
        "GUEST",
        "PORTAL ROLE",
        "LAST CHANGE",
        "OWNED",
        "IN SYNC",
    ];
    let mut widths = header.map(|h| h.chars().count());
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6], out: &mut dyn Write| -> io::Result<()> {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(header, out)?;
    for row in &table {
        line(row.each_ref().map(String::as_str), out)?;
    }
    let synced = rows.iter().filter(|r| r.in_sync).count();
    writeln!(out, "\n{synced} of {} users in sync.", rows.len())
}
