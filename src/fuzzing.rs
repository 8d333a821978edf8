//! Entry points for the fuzz targets of `fuzz/` (`docs/fuzzing.md`): the parsers of untrusted
//! input that are private to their modules, reached without their I/O, and the plan over
//! states decoded from bytes. Each entry point checks its target's properties and panics when
//! one fails (a crash for libFuzzer, a failure for `tests/spec.rs`, which runs every seed).
//! Not an API: nothing else may call these.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use url::Url;

use crate::desired::spec::{DesiredState, DesiredUser, Email, InvitationDefaults, Role};
use crate::reconcile::plan::{
    self, Action, GuestIndex, GuestOnRemoval, HiddenFields, MAX_RESENDS, Observed, Plan,
    PlanFormat, Policy, RefusalScope, State, UserRecord,
};
use crate::remote::graph::error::{GraphError, SignInContext};
use crate::remote::graph::token::{self, managed};
use crate::remote::graph::wire::{self, DeltaEnd};
use crate::remote::graph::{DirectoryUser, ObjectIdentity};
use crate::remote::identity::{self, holds_address, normalize_email};
use crate::remote::portal::PortalUser;
use crate::remote::portal::client::MAX_ERROR_BODY;

/// The GitHub webhook body parser (JSON, or `payload=` form-encoded when `form_encoded`).
pub fn webhook_push(body: &[u8], form_encoded: bool) {
    let _ = crate::service::server::webhook::parse_push(body, form_encoded);
}

/// The parser of one page of the portal's `GET /api/user`, and the parser of the portal's
/// error bodies on the same bytes: neither panics; an error always has a message, and what is
/// kept of an `errors` value is bounded.
pub fn portal_page(body: &[u8]) {
    let _ = crate::remote::portal::client::parse_page(body, 1);
    let (message, errors) = crate::remote::portal::client::error_body(body);
    assert!(!message.is_empty(), "an error without a message");
    if let Some(errors) = errors {
        assert!(
            errors.chars().count() <= MAX_ERROR_BODY + 1,
            "errors kept unbounded: {} characters",
            errors.chars().count()
        );
    }
}

/// The Graph roots the parsers are checked against: the public cloud, and a local double.
fn graph_roots() -> [Url; 2] {
    [
        Url::parse("https://graph.microsoft.com/v1.0/").expect("a URL"),
        Url::parse("http://127.0.0.1:8080/v1.0/").expect("a URL"),
    ]
}

/// Whether a link the client would follow stays with `root` (the bearer token goes with it).
fn stays_with(url: &Url, root: &Url) -> bool {
    url.origin() == root.origin() || wire::same_loopback_service(url, root)
}

/// One page of a user listing (`GET /users`), as the client reads it: never panics; a nextLink
/// the client would follow stays on the Graph origin; and the plan's [`GuestIndex`] finds
/// every user of the page by every address the client's matcher
/// ([`identity::holds_address`]) says it holds (the two definitions agree).
pub fn graph_page(body: &[u8]) {
    for root in graph_roots() {
        let Ok(page) = wire::parse_user_page(body, "page 1", &root, "fuzz", Some("r")) else {
            continue;
        };
        if let Some(next) = &page.next {
            assert!(stays_with(next, &root), "{next} leaves {root}");
        }
        index_agrees_with_matcher(&page.users);
    }
}

/// The plan's index and the client's matcher agree on the users of one answer.
fn index_agrees_with_matcher(users: &[DirectoryUser]) {
    let index = GuestIndex::new(users.iter());
    let mut seen = HashSet::new();
    for user in users {
        // The index keeps the first user of an id.
        if !seen.insert(user.id.as_str()) {
            continue;
        }
        let mut addresses: Vec<&str> = user.mail.iter().map(String::as_str).collect();
        addresses.extend(user.other_mails.iter().map(String::as_str));
        addresses.extend(
            user.identities
                .iter()
                .filter_map(|i| i.issuer_assigned_id.as_deref()),
        );
        addresses.extend(user.user_principal_name.as_deref());
        for address in addresses {
            if holds_address(user, address) {
                let key = normalize_email(address);
                assert!(
                    index.find(&key, None).iter().any(|u| u.id == user.id),
                    "{} holds {address:?} but the plan's index does not find it by {key:?}",
                    user.id
                );
            }
        }
    }
}

/// One page of a delta round: never panics; a nextLink stays on the Graph origin; a deltaLink
/// that is kept can be followed by the next round (`Tenant::delta(Some(link))` checks it
/// again); the users of the page hold what the plan's index finds.
pub fn graph_delta_page(body: &[u8]) {
    for root in graph_roots() {
        let Ok(page) = wire::parse_delta_page(body, 1, &root, "fuzz", None) else {
            continue;
        };
        match &page.end {
            DeltaEnd::Next(next) => assert!(stays_with(next, &root), "{next} leaves {root}"),
            DeltaEnd::Delta(link) => {
                let again = wire::check_link(&root, "@odata.deltaLink", link, "fuzz", None)
                    .unwrap_or_else(|err| panic!("a kept deltaLink cannot be followed: {err}"));
                assert!(stays_with(&again, &root), "{again} leaves {root}");
            }
        }
        let users: Vec<DirectoryUser> = page
            .changes
            .into_iter()
            .filter_map(|c| match c {
                crate::remote::graph::DeltaChange::Upsert(u) => Some(u),
                crate::remote::graph::DeltaChange::Removed { .. } => None,
            })
            .collect();
        index_agrees_with_matcher(&users);
    }
}

/// A `$batch` answer, input `ids\nbody`: the first line lists the ids the request sent (as
/// the client numbers them: indexes, comma-separated; without a newline, `0,1,2`), the rest is
/// the answer. Never panics; an answer that is accepted answers every id sent exactly once;
/// every inner answer then goes through what the client does with it (a user collection and
/// a user for `200`, the error of a failed inner request otherwise), and a failed inner
/// request is never taken for a success.
pub fn graph_batch(data: &[u8]) {
    let (pending, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => {
            let mut ids: Vec<usize> = String::from_utf8_lossy(&data[..at])
                .split(',')
                .filter_map(|id| id.trim().parse().ok())
                .filter(|&id| id < crate::remote::graph::MAX_BATCH_REQUESTS)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            (ids, &data[at + 1..])
        }
        None => (vec![0, 1, 2], data),
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let [root, _] = graph_roots();
    let Ok(answers) = wire::parse_batch(body, &pending, now, "fuzz", None) else {
        return;
    };
    let mut answered: Vec<usize> = answers.iter().map(|(i, _)| *i).collect();
    answered.sort_unstable();
    assert_eq!(answered, pending, "not every id answered exactly once");
    for (_, inner) in &answers {
        if inner.status == reqwest::StatusCode::OK {
            let bytes = inner.body_bytes();
            if let Ok(page) = wire::parse_user_page(&bytes, "the batched lookup", &root, "f", None)
            {
                if let Some(next) = &page.next {
                    assert!(stays_with(next, &root), "{next} leaves {root}");
                }
                index_agrees_with_matcher(&page.users);
            }
            let _ = wire::parse_user(&bytes, "user object", "fuzz", None);
        } else {
            let error = wire::inner_error("fuzz", inner);
            match &error {
                GraphError::Throttled { .. } => {
                    assert_eq!(inner.status, reqwest::StatusCode::TOO_MANY_REQUESTS);
                }
                GraphError::Api { status, .. } => assert_eq!(*status, inner.status.as_u16()),
                other => panic!("a failed inner answer became {other:?}"),
            }
            assert!(!error.to_string().is_empty());
        }
    }
}

/// The error bodies of Graph, of the token endpoint and of a managed-identity endpoint: never
/// panic; a Graph error always has a code and a message (the raw body cut at 200 characters
/// when it has no `error.message`), and its message says both; a token refusal's description
/// is one line of at most 500 characters, shown in the message.
pub fn graph_error(body: &[u8]) {
    let parsed = wire::parse_error(body);
    assert!(!parsed.code.is_empty() && !parsed.message.is_empty());
    let has_message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v["error"]["message"].is_string());
    if !has_message {
        assert!(parsed.message.chars().count() <= 200, "raw body kept uncut");
    }
    for status in [400, 401, 403, 404, 410, 500, 503] {
        let error = GraphError::Api {
            operation: "fuzz".into(),
            status,
            code: parsed.code.clone(),
            message: parsed.message.clone(),
            request_id: parsed.request_id.clone(),
        };
        let shown = error.to_string();
        assert!(shown.contains(&parsed.code) && shown.contains(&parsed.message));
        let _ = (error.is_resync_required(), error.is_ambiguous());
    }
    let token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
    let mut refusals = vec![token::parse_refusal(body)];
    refusals.extend([400, 404, 500].map(|status| managed::parse_refusal(body, status)));
    for refusal in refusals {
        let description = refusal.description.clone();
        assert!(!description.contains('\n') && description.chars().count() <= 500);
        let error = refusal.body.into_failure(
            refusal.problem,
            400,
            description.clone(),
            token_url,
            None,
            SignInContext::Secret,
        );
        assert!(error.to_string().contains(&description));
    }
}

// ---------------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------------

/// The `now` of every fuzzed plan.
pub fn plan_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
        .single()
        .expect("a valid date")
}

/// Reads the fuzz bytes one at a time; past the end every byte is 0, so every input decodes.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[usize::from(self.byte()) % items.len()].clone()
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// An address of the small alphabet, as `users.yaml` and the state hold it (ASCII, as
    /// validation requires): few enough that users collide, in several spellings of one
    /// identity (case, blanks).
    fn address(&mut self) -> String {
        self.address_of(&["ana", "ANA", "bob", "Bob", "kim", "KIM"])
    }

    /// An address as the tenant or the portal may hold it: the same alphabet, where the last
    /// spelling of `kim` starts with the Kelvin sign (U+212A), which lower-cases to `k`.
    fn observed_address(&mut self) -> String {
        self.address_of(&["ana", "ANA", "bob", "Bob", "kim", "\u{212A}im"])
    }

    fn address_of(&mut self, locals: &[&str; 6]) -> String {
        const DOMAINS: [&str; 3] = ["partner.example", "Partner.Example", "other.example"];
        let b = self.byte();
        let address = format!(
            "{}@{}",
            locals[usize::from(b) % locals.len()],
            DOMAINS[usize::from(b / 6) % DOMAINS.len()]
        );
        if b >= 216 {
            format!(" {address} ")
        } else {
            address
        }
    }

    /// A time around `now`: now, minutes, hours, days ago, or in an hour (a clock ahead).
    fn time(&mut self) -> DateTime<Utc> {
        const MINUTES_AGO: [i64; 7] = [0, 5, 20, 120, 8 * 1440, 30 * 1440, -60];
        plan_now() - TimeDelta::minutes(self.pick(&MINUTES_AGO))
    }

    fn option_time(&mut self) -> Option<DateTime<Utc>> {
        if self.flag() { Some(self.time()) } else { None }
    }
}

const GUEST_IDS: [&str; 5] = ["g0", "g1", "g2", "g3", ""];
const PORTAL_IDS: [&str; 3] = ["p0", "p1", "p2"];
const NAMES: [&str; 3] = ["Ana Silva", "Bob", "Élodie"];

/// What one plan input decodes to.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// `users.yaml`.
    pub desired: DesiredState,
    /// The tenant and the portal.
    pub observed: Observed,
    /// guestops' state.
    pub state: State,
    /// The policy.
    pub policy: Policy,
}

/// Decodes `data` to a plan input: two bytes of policy, then records (a desired user, a tenant
/// user in the listing, the lookups or the deleted items, a portal user, a state record), each
/// a tag byte and its fields, over a small alphabet of addresses and ids.
pub fn decode_plan_input(data: &[u8]) -> PlanInput {
    let mut b = Bytes { data, at: 0 };
    let flags = b.byte();
    let more = b.byte();
    let policy = Policy {
        allowed_domains: if flags & 4 != 0 {
            vec!["partner.example".to_owned()]
        } else {
            Vec::new()
        },
        prune: flags & 1 != 0,
        guest_on_removal: [
            GuestOnRemoval::Keep,
            GuestOnRemoval::Disable,
            GuestOnRemoval::Delete,
        ][usize::from(flags >> 5) % 3],
        max_deletions: usize::from(more % 4),
        resend_after: [
            None,
            Some(Duration::ZERO),
            Some(Duration::from_secs(3600)),
            Some(Duration::from_secs(7 * 24 * 3600)),
        ][usize::from(more >> 2) % 4],
        force: flags & 2 != 0,
        replication_grace: [0, 15 * 60, 3600].map(Duration::from_secs)[usize::from(more >> 4) % 3],
        hidden_fields: if more & 64 != 0 {
            HiddenFields::default()
        } else {
            HiddenFields {
                unstated_flags: Vec::new(),
                probed_put: None,
            }
        },
        // `--only` has a property test of its own (tests/plan.rs); decoding it here would
        // change the meaning of every seed.
        only: None,
        // A week, the default, without reading a byte (the seeds keep their meaning).
        expiry_notice_before: Some(Duration::from_secs(7 * 24 * 3600)),
    };
    let mut desired = DesiredState {
        users: BTreeMap::new(),
        invitation: InvitationDefaults {
            send_email: flags & 8 == 0,
            message: (flags & 16 != 0).then(|| "Welcome".to_owned()),
        },
    };
    let mut observed = Observed::default();
    let mut state = State::default();
    let mut live: BTreeMap<String, DirectoryUser> = BTreeMap::new();
    let mut deleted: BTreeMap<String, DirectoryUser> = BTreeMap::new();
    let mut portal: BTreeMap<String, PortalUser> = BTreeMap::new();
    let mut records = 0;
    while !b.done() && records < 40 {
        records += 1;
        match b.byte() % 5 {
            0 => {
                let email = Email::new(&b.address());
                let expires = b.pick(&[
                    None,
                    NaiveDate::from_ymd_opt(2026, 1, 1),
                    NaiveDate::from_ymd_opt(2026, 3, 9),
                    NaiveDate::from_ymd_opt(2026, 3, 10),
                    NaiveDate::from_ymd_opt(2027, 1, 1),
                ]);
                let user = DesiredUser {
                    name: b.pick(&NAMES).to_owned(),
                    role: b.pick(&Role::ALL),
                    expires,
                    reason: b.flag().then(|| "ticket".to_owned()),
                    line: 0,
                    email,
                };
                desired
                    .users
                    .insert(user.email.normalized().to_owned(), user);
            }
            1 | 2 => {
                // One object per id, as Graph has it: the listing and the lookups may both
                // hold it, the deleted items (another read, maybe older) their own.
                let list = b.byte() % 3;
                let user = directory_user(&mut b);
                let (known, into) = match list {
                    0 => (&mut live, &mut observed.guests),
                    1 => (&mut live, &mut observed.lookups),
                    _ => (&mut deleted, &mut observed.deleted),
                };
                into.push(known.entry(user.id.clone()).or_insert(user).clone());
            }
            3 => {
                let email = b.observed_address();
                let role = b.pick(&[
                    None,
                    Some(Role::Administrator),
                    Some(Role::Contributor),
                    Some(Role::Viewer),
                    Some(Role::WorkspaceContributor),
                ]);
                let user = PortalUser {
                    id: b.pick(&PORTAL_IDS).to_owned(),
                    email,
                    name: b.pick(&NAMES).to_owned(),
                    role_code: role.map(|r| crate::remote::portal::RoleCodes::default().code(r)),
                    role,
                };
                // One user per id, as the portal has it.
                let user = portal.entry(user.id.clone()).or_insert(user).clone();
                observed.portal_users.push(user);
            }
            _ => {
                let email = b.address();
                let key = normalize_email(&email);
                let f = b.byte();
                let mut record = UserRecord {
                    email: if f & 1 != 0 { email } else { String::new() },
                    guest_id: (f & 2 != 0).then(|| b.pick(&["g0", "g1", "g2", "gone"]).to_owned()),
                    guest_owned: f & 4 != 0,
                    invited_at: b.option_time(),
                    resend_count: u32::from(b.byte() % 5),
                    last_invitation_at: b.option_time(),
                    portal_id: (f & 8 != 0).then(|| b.pick(&PORTAL_IDS).to_owned()),
                    portal_owned: f & 16 != 0,
                    removal_pending_since: None,
                    last_change: None,
                    invitation_unconfirmed_at: (f & 32 != 0).then(|| b.time()),
                    guest_seen: f & 64 != 0,
                    registration_unconfirmed_at: (f & 128 != 0).then(|| b.time()),
                    ..UserRecord::default()
                };
                // Derived from what was read (no byte more), so that the seeds written
                // before these fields decode to the same inputs: a released guest with four
                // resends was disabled by guestops; three resends, the last one unconfirmed.
                record.guest_disabled =
                    !record.guest_owned && record.guest_id.is_some() && record.resend_count == 4;
                if record.resend_count == 3 {
                    record.resend_unconfirmed_at = record.last_invitation_at;
                }
                state.users.insert(key, record);
            }
        }
    }
    PlanInput {
        desired,
        observed,
        state,
        policy,
    }
}

/// A tenant user of the alphabet: any id, type, addresses (mail, otherMails, UPN in both
/// forms, an identity), invitation state and `accountEnabled`.
fn directory_user(b: &mut Bytes<'_>) -> DirectoryUser {
    let id = b.pick(&GUEST_IDS).to_owned();
    let kind = b.byte();
    let mail = (kind & 1 != 0).then(|| b.observed_address());
    let other_mails = (0..(kind >> 1) % 3).map(|_| b.observed_address()).collect();
    let user_principal_name = match (kind >> 3) % 4 {
        0 => None,
        1 => Some(b.observed_address()),
        2 => Some(identity::guest_upn(
            &b.observed_address(),
            "contoso.onmicrosoft.com",
        )),
        _ => Some(format!(
            "{}#EXT#",
            identity::guest_upn_local_part(&b.observed_address())
        )),
    };
    let identities = if kind & 32 != 0 {
        vec![ObjectIdentity {
            sign_in_type: Some("emailAddress".to_owned()),
            issuer: Some("partner.example".to_owned()),
            issuer_assigned_id: Some(b.observed_address()),
        }]
    } else {
        Vec::new()
    };
    DirectoryUser {
        id,
        display_name: None,
        mail,
        other_mails,
        user_principal_name,
        user_type: b
            .pick(&[Some("Guest"), Some("Member"), Some("guest"), None])
            .map(str::to_owned),
        external_user_state: b
            .pick(&[None, Some("PendingAcceptance"), Some("Accepted")])
            .map(str::to_owned),
        external_user_state_change_date_time: b.option_time(),
        creation_type: None,
        identities,
        account_enabled: b.pick(&[None, Some(true), Some(false)]),
        created_date_time: None,
    }
}

/// The plan over the state `data` decodes to ([`decode_plan_input`]), checked
/// ([`check_plan`]).
pub fn plan(data: &[u8]) {
    let input = decode_plan_input(data);
    check_plan(&input);
}

/// The rank of an action within one user's changes, as the plan module documents it.
fn documented_rank(action: &Action) -> u8 {
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

/// The properties of one plan (`docs/fuzzing.md`); panics naming the first that fails.
pub fn check_plan(input: &PlanInput) {
    let PlanInput {
        desired,
        observed,
        state,
        policy,
    } = input;
    let now = plan_now();
    let today = now.date_naive();
    let p = plan::plan(desired, observed, state, policy, now);
    // Panics with the input and the plan.
    macro_rules! fail {
        ($($arg:tt)*) => {
            panic!("{}\n{input:#?}\nplan: {p:#?}", format!($($arg)*))
        };
    }

    // Deterministic, and the order of the observed lists does not matter (the decoder gives
    // each id one object, as the tenant and the portal have it).
    if plan::plan(desired, observed, state, policy, now) != p {
        fail!("the same input gave another plan");
    }
    let mut reversed = observed.clone();
    reversed.guests.reverse();
    reversed.lookups.reverse();
    reversed.deleted.reverse();
    reversed.portal_users.reverse();
    if plan::plan(desired, &reversed, state, policy, now) != p {
        fail!("reversing the observed lists changed the plan");
    }

    // The live tenant users by id.
    let first: BTreeMap<&str, &DirectoryUser> = observed
        .guests
        .iter()
        .chain(&observed.lookups)
        .map(|u| (u.id.as_str(), u))
        .collect();
    let active = |key: &str| {
        desired
            .users
            .get(key)
            .is_some_and(|d| d.expires.is_none_or(|e| e >= today))
    };
    let active_keys: Vec<&str> = desired
        .users
        .keys()
        .map(String::as_str)
        .filter(|k| active(k))
        .collect();
    let domain_refused: BTreeSet<String> = p
        .refusals
        .iter()
        .filter(|r| r.code == "domain-not-allowed")
        .filter_map(|r| r.email.as_deref().map(normalize_email))
        .collect();

    // Order: by user, then the documented rank, each action at most once per user; plan-wide
    // refusals first.
    for pair in p.changes.windows(2) {
        let a = (pair[0].key.as_str(), documented_rank(&pair[0].action));
        let b = (pair[1].key.as_str(), documented_rank(&pair[1].action));
        if a >= b {
            fail!("changes out of order, or twice: {a:?} then {b:?}");
        }
    }
    let scopes: Vec<RefusalScope> = p.refusals.iter().map(|r| r.scope).collect();
    if scopes
        .windows(2)
        .any(|w| w[0] == RefusalScope::User && w[1] == RefusalScope::Plan)
    {
        fail!("a plan-wide refusal after a per-user one");
    }

    for c in &p.changes {
        if normalize_email(&c.email) != c.key {
            fail!("{:?} is not the address of key {}", c.email, c.key);
        }
        let record = state.users.get(&c.key);
        let removal_like = c.action.is_removal() || matches!(c.action, Action::ReleaseGuest { .. });
        if removal_like {
            // Never a user guestops does not own, never one the file still wants, only with
            // prune.
            if !policy.prune || active(&c.key) {
                fail!("{} removed without prune or while desired", c.key);
            }
            let Some(record) = record else {
                fail!("{} removed without a state record", c.key);
            };
            match &c.action {
                Action::Unregister { portal_id } => {
                    let theirs = observed
                        .portal_users
                        .iter()
                        .any(|u| &u.id == portal_id && normalize_email(&u.email) == c.key);
                    if !record.portal_owned
                        || record
                            .portal_id
                            .as_deref()
                            .is_some_and(|id| id != portal_id)
                        || !theirs
                    {
                        fail!("unregisters {portal_id}, not owned by {}", c.key);
                    }
                }
                Action::DisableGuest { guest_id }
                | Action::DeleteGuest { guest_id }
                | Action::ReleaseGuest { guest_id } => {
                    if !record.guest_owned || record.guest_id.as_deref() != Some(guest_id) {
                        fail!("acts on guest {guest_id}, not owned by {}", c.key);
                    }
                    if c.action.is_removal() {
                        let Some(guest) = first.get(guest_id.as_str()) else {
                            fail!("removes {guest_id}, which is not observed");
                        };
                        if !guest.is_guest() {
                            fail!("removes {guest_id}, which is not a guest");
                        }
                        // A guest still used by a desired user is only released.
                        for k in &active_keys {
                            let recorded = state.users.get(*k).and_then(|r| r.guest_id.as_deref());
                            if holds_address(guest, k) || recorded == Some(guest_id) {
                                fail!("removes {guest_id}, still used by {k}");
                            }
                        }
                        if matches!(c.action, Action::DisableGuest { .. })
                            && guest.account_enabled == Some(false)
                        {
                            fail!("disables {guest_id} again");
                        }
                    }
                }
                _ => unreachable!("a removal-like action"),
            }
            continue;
        }
        // Every other change is for a desired user that is active and not refused.
        if !active(&c.key) || domain_refused.contains(&c.key) {
            fail!(
                "{} for {}, not an active allowed user",
                c.action.name(),
                c.key
            );
        }
        let holders: Vec<&&DirectoryUser> = first
            .values()
            .filter(|u| holds_address(u, &c.key))
            .collect();
        match &c.action {
            Action::Invite { .. } => {
                // Never a second account for an address someone holds, never while an earlier
                // invitation may still be replicating.
                if let Some(u) = holders.first() {
                    fail!("invites {}, which {} holds", c.key, u.id);
                }
                let recorded = record.and_then(|r| r.guest_id.as_deref());
                if recorded.is_some_and(|id| first.contains_key(id)) {
                    fail!("invites {} whose recorded account is observed", c.key);
                }
                if observed
                    .deleted
                    .iter()
                    .any(|u| u.is_guest() && holds_address(u, &c.key))
                {
                    fail!("invites {}, held by a deleted guest", c.key);
                }
                let grace = TimeDelta::from_std(policy.replication_grace).unwrap_or(TimeDelta::MAX);
                if let Some(at) = record.and_then(|r| r.invitation_unconfirmed_at)
                    && now.signed_duration_since(at) < grace
                {
                    fail!("invites {} again within the replication grace", c.key);
                }
            }
            Action::RestoreGuest { guest_id } => {
                let restorable = observed
                    .deleted
                    .iter()
                    .any(|u| &u.id == guest_id && u.is_guest() && holds_address(u, &c.key));
                if !restorable || !holders.is_empty() {
                    fail!("restores {guest_id} for {}", c.key);
                }
            }
            Action::EnableGuest { guest_id } => {
                // Only the guest guestops itself disabled, and only while it is disabled.
                let ours = record.is_some_and(|r| {
                    r.guest_disabled && r.guest_id.as_deref() == Some(guest_id.as_str())
                });
                let disabled = first
                    .get(guest_id.as_str())
                    .is_some_and(|u| u.is_guest() && u.account_enabled == Some(false));
                if !ours || !disabled {
                    fail!("enables {guest_id} for {}", c.key);
                }
            }
            Action::AdoptGuest { guest_id } => {
                let recorded = record.and_then(|r| r.guest_id.as_deref()) == Some(guest_id);
                let ok = first
                    .get(guest_id.as_str())
                    .is_some_and(|u| u.is_guest() && (recorded || holds_address(u, &c.key)));
                if !ok {
                    fail!("adopts {guest_id} for {}", c.key);
                }
            }
            Action::ResendInvitation { guest_id, .. } => {
                let pending = first.get(guest_id.as_str()).is_some_and(|u| u.is_pending());
                let count = record
                    .filter(|r| r.guest_id.as_deref() == Some(guest_id))
                    .map_or(0, |r| {
                        r.resend_count + u32::from(r.resend_unconfirmed_at.is_some())
                    });
                if !pending
                    || count >= MAX_RESENDS
                    || !desired.invitation.send_email
                    || policy.resend_after.is_none_or(|a| a.is_zero())
                {
                    fail!("re-sends the invitation of {}", c.key);
                }
            }
            Action::Register { .. } => {
                if let Some(u) = observed
                    .portal_users
                    .iter()
                    .find(|u| normalize_email(&u.email) == c.key)
                {
                    fail!("registers {}, which portal user {} has", c.key, u.id);
                }
            }
            Action::AdoptPortal { portal_id } | Action::UpdatePortal { portal_id, .. } => {
                if !observed
                    .portal_users
                    .iter()
                    .any(|u| &u.id == portal_id && normalize_email(&u.email) == c.key)
                {
                    fail!("acts on portal user {portal_id} for {}", c.key);
                }
            }
            _ => unreachable!("a change for a desired user"),
        }
    }
    for c in &p.refused_changes {
        if !domain_refused.contains(&c.key) {
            fail!("{} refused without a refusal", c.key);
        }
    }

    // The guards: a removal past maxDeletions, or a prune of everything, refuses the plan as a
    // whole unless forced, so that what is applied never removes more than maxDeletions users.
    let removed = p.removed_users();
    let has = |code: &str| p.refusals.iter().any(|r| r.code == code);
    if has("max-deletions") != (removed > policy.max_deletions && !policy.force) {
        fail!(
            "{removed} removed users, maxDeletions {}",
            policy.max_deletions
        );
    }
    let applied_removals = if p.is_refused() { 0 } else { removed };
    if applied_removals > policy.max_deletions && !policy.force {
        fail!("more removals applied than maxDeletions");
    }
    let prunes_everything = policy.prune && desired.users.is_empty() && state.owns_anything();
    if has("empty-desired") != (prunes_everything && !policy.force) {
        fail!("the empty-desired guard");
    }
    // Forcing lifts those guards and changes nothing else.
    if !policy.force {
        let forced = Policy {
            force: true,
            ..policy.clone()
        };
        let f = plan::plan(desired, observed, state, &forced, now);
        let kept: Vec<_> = p
            .refusals
            .iter()
            .filter(|r| r.scope == RefusalScope::User)
            .cloned()
            .collect();
        if f.changes != p.changes
            || f.refused_changes != p.refused_changes
            || f.notices != p.notices
            || f.in_sync != p.in_sync
            || f.refusals != kept
        {
            fail!("--force changed more than the guards: {f:#?}");
        }
    }

    // In sync: the active, allowed users without a change.
    let in_sync = active_keys
        .iter()
        .filter(|k| !domain_refused.contains(**k) && !p.changes.iter().any(|c| c.key == **k))
        .count();
    if p.in_sync != in_sync {
        fail!("in_sync {} but {in_sync} users need nothing", p.in_sync);
    }

    render_plan(&p);
}

/// Every rendering of a plan works; the JSON one is JSON.
fn render_plan(p: &Plan) {
    for format in [PlanFormat::Text, PlanFormat::Markdown, PlanFormat::Json] {
        let mut out = Vec::new();
        plan::render(p, format, true, &mut out).expect("rendering into memory");
        if format == PlanFormat::Json {
            serde_json::from_slice::<serde_json::Value>(&out).expect("the JSON plan is JSON");
        }
    }
}
