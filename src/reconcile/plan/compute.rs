//! The plan function (design §7): desired + observed + state + policy + now → [`Plan`].
//!
//! Pure and deterministic: no I/O, no clock, no randomness. Linear in the number of users:
//! the observed guests and portal users are indexed once in hash maps
//! ([`GuestIndex`], a private portal index), then every desired user and every state record is
//! looked at once.
//!
//! # Order of the changes
//!
//! Changes are grouped by user, users sorted by normalized email (ascending). Within one user the
//! order is fixed, so that the executor can run them front to back:
//!
//! | rank | action | system |
//! |---|---|---|
//! | 1 | `adopt-guest` | state (ownership of the tenant guest) |
//! | 2 | `restore-guest` | tenant |
//! | 3 | `invite` | tenant |
//! | 4 | `resend-invitation` | tenant |
//! | 5 | `disable-guest` | tenant |
//! | 6 | `delete-guest` | tenant |
//! | 7 | `adopt-portal` | state (ownership of the portal user) |
//! | 8 | `register` | portal |
//! | 9 | `update-portal` | portal |
//! | 10 | `unregister` | portal |
//! | 11 | `release-guest` | state only |
//!
//! That is: tenant actions, then portal actions, then state-only actions, with each adoption
//! placed first among the actions of the system it adopts from.
//!
//! # Order of refusals and notices
//!
//! Plan-wide refusals (`empty-desired`, then `max-deletions`) come first, then per-user refusals
//! by key. Notices are sorted by key (plan-wide ones first), in the order they were found within
//! one user.

use std::borrow::Cow;
use std::collections::BTreeMap;

// Fast non-cryptographic hashing: the maps are only probed, never iterated, so the output does
// not depend on the hasher; keys are addresses and ids read from the tenant and the portal.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use super::MAX_RESENDS;
use super::{
    Action, Change, GuestOnRemoval, HiddenFields, Notice, Observed, Plan, Policy, Refusal,
    RefusalScope,
};
use super::{State, UserRecord};
use crate::desired::spec::{DesiredState, DesiredUser};
use crate::remote::graph::DirectoryUser;
use crate::remote::portal::PortalUser;

/// The rank of an action within one user's changes (see the module documentation).
pub(crate) fn action_rank(action: &Action) -> u8 {
    match action {
        Action::AdoptGuest { .. } => 1,
        Action::RestoreGuest { .. } => 2,
        Action::EnableGuest { .. } => 3,
        Action::Invite { .. } => 4,
        Action::ResendInvitation { .. } => 5,
        Action::DisableGuest { .. } => 6,
        Action::DeleteGuest { .. } => 7,
        Action::AdoptPortal { .. } => 8,
        Action::Register { .. } => 9,
        Action::UpdatePortal { .. } => 10,
        Action::Unregister { .. } => 11,
        Action::ReleaseGuest { .. } => 12,
    }
}

use crate::remote::identity::{self, Key, normalized as lower, with_normalized as with_lower};

/// One or more positions under one key (most keys hold exactly one user).
#[derive(Debug, Clone)]
enum Slot {
    One(u32),
    Many(Vec<u32>),
}

impl Slot {
    fn as_slice(&self) -> &[u32] {
        match self {
            Slot::One(i) => std::slice::from_ref(i),
            Slot::Many(v) => v,
        }
    }
}

/// A hash multimap from lower-cased keys to positions.
#[derive(Debug, Clone, Default)]
struct MultiIndex<'a> {
    map: HashMap<Cow<'a, str>, Slot>,
}

impl<'a> MultiIndex<'a> {
    fn insert(&mut self, key: Cow<'a, str>, pos: u32) {
        if key.is_empty() {
            return;
        }
        match self.map.get_mut(key.as_ref()) {
            None => {
                self.map.insert(key, Slot::One(pos));
            }
            Some(slot) => match slot {
                Slot::One(i) if *i == pos => {}
                Slot::One(i) => *slot = Slot::Many(vec![*i, pos]),
                Slot::Many(v) => {
                    if !v.contains(&pos) {
                        v.push(pos);
                    }
                }
            },
        }
    }

    fn get(&self, key: &str) -> &[u32] {
        self.map.get(key).map_or(&[], Slot::as_slice)
    }
}

/// Tenant users (guests and looked-up members) indexed for matching a desired email
/// (design §7 step 1).
///
/// Keys are [`identity::keys`], all trimmed and lower-cased: `mail`, every `otherMails`, every
/// `identities[].issuerAssignedId`, and the user principal name. A guest UPN
/// `local_domain#EXT#@tenant` (any case) is indexed by its `local_domain` part, which matches a
/// desired address `e` when it equals `e` with `@` replaced by `_`; a UPN without that form
/// matches as is. Users are also
/// found by object id (the guest id recorded in state).
///
/// Users are de-duplicated by id: the first occurrence wins (build it from
/// `observed.guests` then `observed.lookups`).
#[derive(Debug, Clone, Default)]
pub struct GuestIndex<'a> {
    users: Vec<&'a DirectoryUser>,
    by_id: HashMap<&'a str, u32>,
    by_address: MultiIndex<'a>,
    by_ext_upn: MultiIndex<'a>,
}

impl<'a> GuestIndex<'a> {
    /// Indexes `users` (typically `observed.guests` chained with `observed.lookups`).
    pub fn new(users: impl IntoIterator<Item = &'a DirectoryUser>) -> Self {
        let iter = users.into_iter();
        let mut index = GuestIndex {
            users: Vec::with_capacity(iter.size_hint().0),
            by_id: HashMap::default(),
            by_address: MultiIndex::default(),
            by_ext_upn: MultiIndex::default(),
        };
        for user in iter {
            if index.by_id.contains_key(user.id.as_str()) {
                continue;
            }
            let Ok(pos) = u32::try_from(index.users.len()) else {
                // More than 4 billion users cannot come from one tenant; ignore the excess.
                break;
            };
            index.users.push(user);
            index.by_id.insert(user.id.as_str(), pos);
            for key in identity::keys(user) {
                match key {
                    Key::Address(address) => index.by_address.insert(address, pos),
                    Key::GuestUpn(local) => index.by_ext_upn.insert(local, pos),
                }
            }
        }
        index
    }

    /// Every indexed user matching the normalized address `email_normalized` (trimmed,
    /// lower-cased), or whose id is `known_id`; de-duplicated and sorted by id.
    pub fn find(&self, email_normalized: &str, known_id: Option<&str>) -> Vec<&'a DirectoryUser> {
        let mut positions: Vec<u32> = self.by_address.get(email_normalized).to_vec();
        if email_normalized.contains('@') {
            let ext = identity::guest_upn_local_part(email_normalized);
            positions.extend_from_slice(self.by_ext_upn.get(&ext));
        }
        if let Some(pos) = known_id.and_then(|id| self.by_id.get(id)) {
            positions.push(*pos);
        }
        positions.sort_unstable();
        positions.dedup();
        let mut found: Vec<&'a DirectoryUser> = positions
            .into_iter()
            .map(|p| self.users[p as usize])
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }

    /// The indexed user with object id `id`.
    pub fn get(&self, id: &str) -> Option<&'a DirectoryUser> {
        self.by_id.get(id).map(|p| self.users[*p as usize])
    }

    /// Number of distinct users indexed.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The keys `plan` can ask about: every address of users.yaml and state (also in the guest
/// UPN form) and every guest id recorded in state.
struct Relevant<'k> {
    addresses: HashSet<&'k str>,
    ext_upns: HashSet<String>,
    ids: HashSet<&'k str>,
}

impl<'k> Relevant<'k> {
    fn new(desired: &'k DesiredState, state: &'k State) -> Self {
        let keys = || desired.users.keys().chain(state.users.keys());
        Relevant {
            addresses: keys().map(String::as_str).collect(),
            ext_upns: keys().map(|k| identity::guest_upn_local_part(k)).collect(),
            ids: state
                .users
                .values()
                .filter_map(|r| r.guest_id.as_deref())
                .collect(),
        }
    }

    /// Whether any key of `u` (as [`GuestIndex`] indexes it) is relevant.
    fn directory_user(&self, u: &DirectoryUser) -> bool {
        self.ids.contains(u.id.as_str())
            || identity::keys(u).any(|key| match key {
                Key::Address(address) => self.addresses.contains(address.as_ref()),
                Key::GuestUpn(local) => self.ext_upns.contains(local.as_ref()),
            })
    }
}

/// Portal users indexed by normalized email (exact, case-insensitive match).
struct PortalIndex<'a> {
    users: Vec<&'a PortalUser>,
    by_email: MultiIndex<'a>,
}

impl<'a> PortalIndex<'a> {
    fn new(users: impl Iterator<Item = &'a PortalUser>) -> Self {
        let mut seen: HashSet<&str> = HashSet::default();
        let mut index = PortalIndex {
            users: Vec::new(),
            by_email: MultiIndex::default(),
        };
        for user in users {
            if !seen.insert(user.id.as_str()) {
                continue;
            }
            let Ok(pos) = u32::try_from(index.users.len()) else {
                break;
            };
            index.users.push(user);
            index.by_email.insert(lower(&user.email), pos);
        }
        index
    }

    /// Every portal user with this normalized email, sorted by id.
    fn find(&self, email_normalized: &str) -> Vec<&'a PortalUser> {
        let mut found: Vec<&'a PortalUser> = self
            .by_email
            .get(email_normalized)
            .iter()
            .map(|p| self.users[*p as usize])
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }
}

/// Picks among sorted candidates: the one with `preferred` id if present, else the first
/// (smallest id).
fn pick<'c, T>(
    candidates: &[&'c T],
    preferred: Option<&str>,
    id: impl Fn(&T) -> &str,
) -> Option<&'c T> {
    preferred
        .and_then(|p| candidates.iter().find(|c| id(c) == p).copied())
        .or_else(|| candidates.first().copied())
}

/// How a desired user's tenant side resolved.
enum TenantMatch<'a> {
    /// One or more guests match; `chosen` is the one guestops uses.
    Guest {
        chosen: &'a DirectoryUser,
        all: Vec<&'a DirectoryUser>,
    },
    /// No guest, but an internal account (member) matches.
    Member(&'a DirectoryUser),
    /// Nothing matches.
    Nothing,
}

fn resolve_tenant<'a>(
    index: &GuestIndex<'a>,
    key: &str,
    record: Option<&UserRecord>,
) -> TenantMatch<'a> {
    let known = record.and_then(|r| r.guest_id.as_deref());
    let found = index.find(key, known);
    let guests: Vec<&DirectoryUser> = found.iter().copied().filter(|u| u.is_guest()).collect();
    if let Some(chosen) = pick(&guests, known, |u| u.id.as_str()) {
        return TenantMatch::Guest {
            chosen,
            all: guests,
        };
    }
    match found.first() {
        Some(member) => TenantMatch::Member(member),
        None => TenantMatch::Nothing,
    }
}

/// Whether `d` expired before `today` (access ends at the end of the `expires` day, UTC).
fn expired_on(d: &DesiredUser, today: NaiveDate) -> Option<NaiveDate> {
    d.expires.filter(|e| *e < today)
}

/// Accumulates the plan's parts.
#[derive(Default)]
struct Builder {
    changes: BTreeMap<String, Vec<Change>>,
    notices: Vec<Notice>,
    user_refusals: Vec<Refusal>,
    refused_changes: Vec<Change>,
    removed_users: usize,
}

impl Builder {
    fn change(&mut self, key: &str, email: &str, action: Action, reason: Option<&str>) {
        self.changes
            .entry(key.to_owned())
            .or_default()
            .push(Change {
                key: key.to_owned(),
                email: email.to_owned(),
                action,
                reason: reason.map(str::to_owned),
            });
    }

    fn notice(&mut self, key: &str, code: &str, message: String) {
        self.notices.push(Notice {
            key: Some(key.to_owned()),
            code: code.to_owned(),
            message,
        });
    }
}

fn list_ids<'x>(ids: impl Iterator<Item = &'x str>) -> String {
    let mut s = String::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(id);
    }
    s
}

/// Computes the plan that makes `observed` equal `desired` under `policy` at `now`.
///
/// Semantics are those of design §7 (see the module documentation for the order of changes):
///
/// - tenant: a matching member needs no invitation (notice `member`); a matching guest is
///   adopted unless already owned; several matching guests → state's id, else the smallest id
///   (notice `ambiguous-guest`); no match → `invite`, unless state recorded an invitation
///   within `policy.replication_grace`, or an invitation whose outcome was ambiguous
///   (`invitation_unconfirmed_at`), in which case notice `awaiting-replication`; a pending guest whose last
///   invitation is older than `policy.resend_after` → `resend-invitation`, at most
///   [`MAX_RESENDS`] times (then notice `invitation-pending`);
/// - portal: exact case-insensitive email; none → `register`; not owned → `adopt-portal`;
///   another name or role → `update-portal` (never delete and re-create);
/// - removals (an owned user not in `users.yaml`, or expired): only with `policy.prune`
///   (else notice `prune-disabled`); `unregister` the owned portal user; the owned guest per
///   `policy.guest_on_removal`; a guest still used by a desired user is only released
///   (notice `guest-shared`), and an account that is not a guest is only released (notice
///   `not-a-guest`); users guestops does not own are never touched;
/// - refusals: `domain-not-allowed` (cannot be forced), `max-deletions` (more removed users
///   than `policy.max_deletions`), `empty-desired` (prune with an empty `users.yaml` while
///   guestops owns users); the last two are lifted by `policy.force`.
pub fn plan(
    desired: &DesiredState,
    observed: &Observed,
    state: &State,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Plan {
    let today = now.date_naive();
    // Only observed users that can matter are indexed: a tenant or a portal may hold far more
    // users than users.yaml and state mention, and a set lookup is cheaper than an index insert.
    let relevant = Relevant::new(desired, state);
    let guests = GuestIndex::new(
        observed
            .guests
            .iter()
            .chain(observed.lookups.iter())
            .filter(|u| relevant.directory_user(u)),
    );
    let portal = PortalIndex::new(
        observed
            .portal_users
            .iter()
            .filter(|p| with_lower(&p.email, |e| relevant.addresses.contains(e))),
    );
    // Soft-deleted users: observation looked up only the desired addresses no live user holds.
    let deleted = GuestIndex::new(
        observed
            .deleted
            .iter()
            .filter(|u| u.is_guest() && relevant.directory_user(u)),
    );
    let mut b = Builder::default();

    // Resolve every active desired user's guest first: a guest in use by a desired user is
    // never disabled or deleted because another (removed) user also owned it.
    let mut active: Vec<(&str, &DesiredUser, Option<&UserRecord>, TenantMatch<'_>)> =
        Vec::with_capacity(desired.users.len());
    let mut in_use: HashSet<&str> = HashSet::default();
    for (key, d) in &desired.users {
        if expired_on(d, today).is_some() {
            continue;
        }
        let record = state.users.get(key);
        let tenant = resolve_tenant(&guests, key, record);
        match &tenant {
            TenantMatch::Guest { all, .. } => in_use.extend(all.iter().map(|g| g.id.as_str())),
            TenantMatch::Member(m) => {
                in_use.insert(m.id.as_str());
            }
            TenantMatch::Nothing => {}
        }
        active.push((key.as_str(), d, record, tenant));
    }

    let mut in_sync = 0;
    for (key, d, record, tenant) in &active {
        let before = b.changes.get(*key).map_or(0, Vec::len);
        plan_desired(
            &mut b, key, d, *record, tenant, &deleted, &portal, desired, policy, now,
        );
        if let Some(refusal) = domain_refusal(d, policy) {
            // Refused for this user only: the changes are shown, never made.
            if let Some(mut refused) = b.changes.remove(*key) {
                refused.sort_by_key(|c| action_rank(&c.action));
                b.refused_changes.append(&mut refused);
            }
            b.user_refusals.push(refusal);
        } else if b.changes.get(*key).map_or(0, Vec::len) == before && policy.targets(key) {
            in_sync += 1;
        }
    }

    // Removals: owned users no longer in users.yaml, and expired users.
    for (key, record) in &state.users {
        if !desired.users.contains_key(key) {
            let email = if record.email.is_empty() {
                key.as_str()
            } else {
                record.email.as_str()
            };
            plan_removal(
                &mut b,
                key,
                email,
                Some(record),
                "removed from users.yaml",
                &guests,
                &portal,
                &in_use,
                policy,
            );
        }
    }
    for (key, d) in &desired.users {
        if let Some(date) = expired_on(d, today) {
            let reason = format!("expired on {date}");
            plan_removal(
                &mut b,
                key,
                d.email.as_str(),
                state.users.get(key),
                &reason,
                &guests,
                &portal,
                &in_use,
                policy,
            );
        }
    }

    let mut refusals = Vec::new();
    if policy.prune && desired.users.is_empty() && state.owns_anything() && !policy.force {
        let owned = state
            .users
            .values()
            .filter(|u| u.guest_owned || u.portal_owned)
            .count();
        refusals.push(Refusal {
            code: "empty-desired".to_owned(),
            scope: RefusalScope::Plan,
            email: None,
            message: format!(
                "users.yaml lists no user while guestops owns {owned} user{}: applying would remove every one of them",
                if owned == 1 { "" } else { "s" }
            ),
            help: "check that the configured source points at the right users.yaml; if removing everyone is intended, run again with --force".to_owned(),
        });
    }
    if b.removed_users > policy.max_deletions && !policy.force {
        refusals.push(Refusal {
            code: "max-deletions".to_owned(),
            scope: RefusalScope::Plan,
            email: None,
            message: format!(
                "{} would be removed, more than policy.maxDeletions ({})",
                crate::markup::count(b.removed_users, "user"),
                policy.max_deletions
            ),
            help: "review the removals listed with this plan; if they are intended, run again with --force or raise policy.maxDeletions in the host configuration".to_owned(),
        });
    }
    refusals.append(&mut b.user_refusals);

    for access in super::expiring_access(desired, now, policy.expiry_notice_before) {
        let message = access.message(now);
        b.notice(&access.key, "expiring", message);
    }

    // `--only`: the guards above counted every user; keep only the targeted users' parts.
    if policy.only.is_some() {
        b.changes.retain(|key, _| policy.targets(key));
        b.refused_changes.retain(|c| policy.targets(&c.key));
        b.notices
            .retain(|n| n.key.as_deref().is_none_or(|key| policy.targets(key)));
        refusals.retain(|r| {
            r.scope == RefusalScope::Plan
                || r.email.as_deref().is_none_or(|e| policy.targets(&lower(e)))
        });
    }

    let mut notices = std::mem::take(&mut b.notices);
    let updates = b
        .changes
        .values()
        .flatten()
        .filter(|c| matches!(c.action, Action::UpdatePortal { .. }))
        .count();
    notices.extend(write_only_note(updates, &policy.hidden_fields));
    notices.sort_by(|a, b| a.key.cmp(&b.key));

    let mut changes = Vec::new();
    for (_, mut user_changes) in std::mem::take(&mut b.changes) {
        user_changes.sort_by_key(|c| action_rank(&c.action));
        changes.append(&mut user_changes);
    }

    Plan {
        generated_at: now,
        desired_users: desired.users.len(),
        in_sync,
        changes,
        refused_changes: b.refused_changes,
        refusals,
        notices,
    }
}

/// The one plan-wide notice `write-only-flags`: `updates` portal updates while write-only flags
/// are not stated, so their `PUT`s cannot send them; with what the portal probe observed of a
/// `PUT` that leaves fields out, when it ran.
fn write_only_note(updates: usize, hidden: &HiddenFields) -> Option<Notice> {
    let flags = &hidden.unstated_flags;
    if updates == 0 || flags.is_empty() {
        return None;
    }
    let (names, it, is) = match flags.as_slice() {
        [one] => (one.clone(), "it", "is"),
        many => (many.join(" and "), "them", "are"),
    };
    let (n, s) = (updates, if updates == 1 { "" } else { "s" });
    let mut message = format!(
        "{names} {is} not stated in portal.writeOnlyFlags: the portal does not return {it}, so guestops does not send {it}, and the PUT of the {n} portal update{s} in this plan may reset {it}"
    );
    match &hidden.probed_put {
        None => message.push_str(
            "; whether this portal's PUT keeps what it is not sent is unknown (guestops probe portal observes it)",
        ),
        Some(probe) => {
            let day = probe.time.format("%Y-%m-%d");
            let observed = match probe.keeps_flags {
                Some(true) => format!(
                    "; guestops probe portal ({day}) observed that a PUT keeps the flags it is not sent (put.keepsFlags: true), so {it} probably stay{}",
                    if flags.len() == 1 { "s" } else { "" }
                ),
                Some(false) => format!(
                    "; guestops probe portal ({day}) observed that a PUT resets the flags it is not sent (put.keepsFlags: false), so {it} will be reset"
                ),
                None => format!(
                    "; guestops probe portal ({day}) could not observe whether a PUT keeps the flags it is not sent (put.keepsFlags: null)"
                ),
            };
            message.push_str(&observed);
        }
    }
    let _ = write!(
        message,
        "; state {} value{} in portal.writeOnlyFlags to have {it} sent on every create and update",
        if flags.len() == 1 { "its" } else { "their" },
        if flags.len() == 1 { "" } else { "s" }
    );
    Some(Notice {
        key: None,
        code: "write-only-flags".to_owned(),
        message,
    })
}

/// The per-user refusal of a desired user whose domain `policy.allowedDomains` does not list.
fn domain_refusal(d: &DesiredUser, policy: &Policy) -> Option<Refusal> {
    if policy.allowed_domains.is_empty() {
        return None;
    }
    let domain = d.email.domain();
    if policy
        .allowed_domains
        .iter()
        .any(|a| a.trim().eq_ignore_ascii_case(domain))
    {
        return None;
    }
    Some(Refusal {
        code: "domain-not-allowed".to_owned(),
        scope: RefusalScope::User,
        email: Some(d.email.as_str().to_owned()),
        message: format!(
            "{}: domain {domain} is not in policy.allowedDomains ({})",
            d.email,
            policy.allowed_domains.join(", ")
        ),
        help: format!(
            "remove {} from users.yaml, or add {domain} to policy.allowedDomains in the host configuration (--force does not override this); the other users are not affected",
            d.email
        ),
    })
}

/// Changes for one active (desired, not expired) user.
#[allow(clippy::too_many_arguments)]
fn plan_desired(
    b: &mut Builder,
    key: &str,
    d: &DesiredUser,
    record: Option<&UserRecord>,
    tenant: &TenantMatch<'_>,
    deleted: &GuestIndex<'_>,
    portal: &PortalIndex<'_>,
    desired: &DesiredState,
    policy: &Policy,
    now: DateTime<Utc>,
) {
    let email = d.email.as_str();
    let reason = d.reason.as_deref();
    match tenant {
        TenantMatch::Guest { chosen, all } => {
            if all.len() > 1 {
                b.notice(
                    key,
                    "ambiguous-guest",
                    format!(
                        "{} guests match {email} ({}); guestops uses {}. Delete or merge the others in Entra ID.",
                        all.len(),
                        list_ids(all.iter().map(|g| g.id.as_str())),
                        chosen.id
                    ),
                );
            }
            let same_guest = record.filter(|r| r.guest_id.as_deref() == Some(chosen.id.as_str()));
            // The guest guestops disabled at a removal, granted again: enable it.
            let disabled_by_us = chosen.account_enabled == Some(false)
                && same_guest.is_some_and(|r| r.guest_disabled);
            if disabled_by_us {
                b.change(
                    key,
                    email,
                    Action::EnableGuest {
                        guest_id: chosen.id.clone(),
                    },
                    reason,
                );
            } else if !same_guest.is_some_and(|r| r.guest_owned) {
                b.change(
                    key,
                    email,
                    Action::AdoptGuest {
                        guest_id: chosen.id.clone(),
                    },
                    reason,
                );
            }
            if chosen.account_enabled == Some(false) && !disabled_by_us {
                b.notice(
                    key,
                    "guest-disabled",
                    format!(
                        "the guest {} of {email} cannot sign in (accountEnabled is false); enable it in Entra ID",
                        chosen.id
                    ),
                );
            }
            if chosen.is_pending() {
                plan_resend(b, key, d, chosen, same_guest, desired, policy, now);
            }
        }
        TenantMatch::Member(member) => {
            b.notice(
                key,
                "member",
                format!(
                    "{email} is an internal account of the tenant ({}); no invitation needed",
                    member.id
                ),
            );
        }
        TenantMatch::Nothing
            if let Some(ghost) = pick(
                &deleted.find(key, None),
                record.and_then(|r| r.guest_id.as_deref()),
                |u| u.id.as_str(),
            ) =>
        {
            // The address is held by a soft-deleted guest: an invitation would fail (§7).
            b.change(
                key,
                email,
                Action::RestoreGuest {
                    guest_id: ghost.id.clone(),
                },
                reason,
            );
        }
        TenantMatch::Nothing => {
            let recent = record.and_then(|r| {
                // An invitation that succeeded (guest id known), or one whose outcome was
                // ambiguous: either guest may still be replicating.
                // A recorded guest that was already seen and is missing now is gone, not
                // replicating: no grace.
                let at = match r.guest_id {
                    Some(_) if !r.guest_seen => r.last_invitation_at.max(r.invited_at),
                    _ => None,
                }
                .max(r.invitation_unconfirmed_at)?;
                let age = now.signed_duration_since(at);
                let grace = TimeDelta::from_std(policy.replication_grace).unwrap_or(TimeDelta::MAX);
                (age < grace).then_some(at)
            });
            match recent {
                Some(at) => b.notice(
                    key,
                    "awaiting-replication",
                    if record.is_some_and(|r| r.guest_id.is_some()) {
                        format!(
                            "{email} was invited at {} and is not visible yet (Entra replication); not invited again",
                            at.format("%Y-%m-%d %H:%M UTC")
                        )
                    } else {
                        format!(
                            "the invitation of {email} at {} has no known outcome (an ambiguous error, or guestops stopped before recording the answer) and no guest is visible yet (Entra replication); looked up again at every reconcile, not invited again before tenant.replicationGrace ({}) has passed",
                            at.format("%Y-%m-%d %H:%M UTC"),
                            humantime_secs(policy.replication_grace)
                        )
                    },
                ),
                None => b.change(
                    key,
                    email,
                    Action::Invite {
                        display_name: d.name.clone(),
                        send_email: desired.invitation.send_email,
                        message: desired.invitation.message.clone(),
                    },
                    reason,
                ),
            }
        }
    }

    let candidates = portal.find(key);
    let preferred = record.and_then(|r| r.portal_id.as_deref());
    match pick(&candidates, preferred, |p| p.id.as_str()) {
        None => b.change(
            key,
            email,
            Action::Register {
                name: d.name.clone(),
                role: d.role,
            },
            reason,
        ),
        Some(p) => {
            if candidates.len() > 1 {
                b.notice(
                    key,
                    "ambiguous-portal",
                    format!(
                        "{} portal users have the address {email} ({}); guestops uses {}. Delete the others in the portal.",
                        candidates.len(),
                        list_ids(candidates.iter().map(|c| c.id.as_str())),
                        p.id
                    ),
                );
            }
            let owned =
                record.is_some_and(|r| r.portal_owned && r.portal_id.as_deref() == Some(&p.id));
            if !owned {
                b.change(
                    key,
                    email,
                    Action::AdoptPortal {
                        portal_id: p.id.clone(),
                    },
                    reason,
                );
            }
            if p.name != d.name || p.role != Some(d.role) {
                b.change(
                    key,
                    email,
                    Action::UpdatePortal {
                        portal_id: p.id.clone(),
                        from_name: p.name.clone(),
                        to_name: d.name.clone(),
                        from_role: p.role,
                        to_role: d.role,
                    },
                    reason,
                );
            }
        }
    }
}

/// Re-send of a pending invitation (design §7 step 3).
#[allow(clippy::too_many_arguments)]
fn plan_resend(
    b: &mut Builder,
    key: &str,
    d: &DesiredUser,
    guest: &DirectoryUser,
    record: Option<&UserRecord>,
    desired: &DesiredState,
    policy: &Policy,
    now: DateTime<Utc>,
) {
    let Some(after) = policy.resend_after.filter(|a| !a.is_zero()) else {
        return;
    };
    if !desired.invitation.send_email {
        return;
    }
    let Ok(after) = TimeDelta::from_std(after) else {
        return;
    };
    // A reminder whose outcome is unknown counts as sent then (at most once).
    let recorded = record.and_then(|r| {
        r.last_invitation_at
            .max(r.invited_at)
            .max(r.resend_unconfirmed_at)
    });
    let Some(since) = recorded.max(guest.external_user_state_change_date_time) else {
        return;
    };
    if now.signed_duration_since(since) < after {
        return;
    }
    let count = record.map_or(0, |r| {
        r.resend_count + u32::from(r.resend_unconfirmed_at.is_some())
    });
    if count < MAX_RESENDS {
        b.change(
            key,
            d.email.as_str(),
            Action::ResendInvitation {
                guest_id: guest.id.clone(),
                display_name: d.name.clone(),
                message: desired.invitation.message.clone(),
                pending_since: Some(since),
            },
            d.reason.as_deref(),
        );
    } else {
        b.notice(
            key,
            "invitation-pending",
            format!(
                "{} has not accepted the invitation since {}; it was re-sent {count} times already (the limit); ask them to accept it or reset their redemption",
                d.email,
                since.format("%Y-%m-%d")
            ),
        );
    }
}

/// A removal: `key` is not desired (anymore) or expired.
#[allow(clippy::too_many_arguments)]
fn plan_removal(
    b: &mut Builder,
    key: &str,
    email: &str,
    record: Option<&UserRecord>,
    reason: &str,
    guests: &GuestIndex<'_>,
    portal: &PortalIndex<'_>,
    in_use: &HashSet<&str>,
    policy: &Policy,
) {
    let candidates = portal.find(key);
    let Some(record) = record.filter(|r| r.guest_owned || r.portal_owned) else {
        // Not owned: never removed. Say so when something is there to remove by hand.
        let has_guest = !guests
            .find(key, record.and_then(|r| r.guest_id.as_deref()))
            .is_empty();
        if record.is_none() && (has_guest || !candidates.is_empty()) {
            b.notice(
                key,
                "not-owned",
                format!(
                    "{email} is {reason} but guestops does not own its accounts; remove them by hand if needed"
                ),
            );
        }
        return;
    };

    let mut actions = Vec::new();
    if record.portal_owned
        && let Some(p) = pick(&candidates, record.portal_id.as_deref(), |p| p.id.as_str())
    {
        if record.portal_id.as_deref().is_none_or(|id| id == p.id) {
            actions.push(Action::Unregister {
                portal_id: p.id.clone(),
            });
        } else {
            b.notice(
                key,
                "not-owned",
                format!(
                    "the portal user {} of {email} is not the one guestops registered; left untouched",
                    p.id
                ),
            );
        }
    }
    if record.guest_owned
        && let Some(guest) = record.guest_id.as_deref().and_then(|id| guests.get(id))
    {
        let guest_id = guest.id.clone();
        if !guest.is_guest() {
            // Never disable or delete an internal account, whatever state says.
            b.notice(
                key,
                "not-a-guest",
                format!(
                    "the account {guest_id} recorded for {email} is not a guest (userType {}); it is only released, never disabled or deleted",
                    guest.user_type.as_deref().unwrap_or("unknown")
                ),
            );
            actions.push(Action::ReleaseGuest { guest_id });
        } else if in_use.contains(guest.id.as_str()) {
            b.notice(
                key,
                "guest-shared",
                format!(
                    "the guest {guest_id} of {email} also matches a desired user; it is only released, not {}",
                    match policy.guest_on_removal {
                        GuestOnRemoval::Keep => "kept",
                        GuestOnRemoval::Disable => "disabled",
                        GuestOnRemoval::Delete => "deleted",
                    }
                ),
            );
            actions.push(Action::ReleaseGuest { guest_id });
        } else {
            match policy.guest_on_removal {
                GuestOnRemoval::Keep => actions.push(Action::ReleaseGuest { guest_id }),
                GuestOnRemoval::Disable => {
                    if guest.account_enabled != Some(false) {
                        actions.push(Action::DisableGuest { guest_id });
                    }
                }
                GuestOnRemoval::Delete => actions.push(Action::DeleteGuest { guest_id }),
            }
        }
    }
    if actions.is_empty() {
        return;
    }
    if !policy.prune {
        let mut what = String::new();
        for (i, a) in actions.iter().enumerate() {
            let _ = write!(what, "{}{}", if i > 0 { ", " } else { "" }, a.name());
        }
        b.notice(
            key,
            "prune-disabled",
            format!(
                "{email} is {reason}; not acted on because policy.prune is off (would: {what})"
            ),
        );
        return;
    }
    if actions.iter().any(Action::is_removal) {
        b.removed_users += 1;
    }
    for action in actions {
        b.change(key, email, action, Some(reason));
    }
}

/// `90s`, `15m`, `2h` (the largest unit that divides `d`), for messages.
fn humantime_secs(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests;
