//! The observe step: reading the tenant and the portal completely. Called by
//! [`crate::reconcile::run_once`] (every reconcile) and by `guestops import`; it never writes
//! to either system.
//!
//! Observation is complete or fails: both pictures are read in full (a failed page fails the
//! read), then targeted lookups fill in what the picture cannot show — desired addresses it
//! does not hold (members found by address when the guest listing is used, and any address
//! not in the picture), and guests that guestops invited but that have not replicated into it
//! yet. Unknown is never treated as empty.
//!
//! The tenant's picture comes one of two ways (`tenant.deltaQuery`):
//! - **the guest listing** (`$filter=userType eq 'Guest'`, every page, every reconcile);
//! - **delta queries** kept in the directory cache ([`super::directory`]): the first round
//!   enumerates every user (members too: delta cannot filter by `userType`) and stores the
//!   `@odata.deltaLink` with the users; later rounds follow the link and merge the changes
//!   (`@removed` leaves the picture; a restored user comes back as a new object; replays
//!   merge idempotently). A link Graph no longer knows (`410 Gone`, `syncStateNotFound`) or a
//!   full sync older than `tenant.fullResyncInterval` means a full enumeration in the same
//!   reconcile, before anything is planned. The cache is written only after a complete round,
//!   in one transaction with its link; a dry run reads it and writes nothing.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::desired::spec::DesiredState;
use crate::reconcile::directory::{Cached, DirectoryCache, Scope};
use crate::reconcile::plan::{GuestIndex, Observed};
use crate::reconcile::state::State;
use crate::remote::graph::{
    DeltaChange, DeltaRound, DirectoryUser, GraphError, MAX_BATCH_REQUESTS, Tenant,
};
use crate::remote::identity;
use crate::remote::portal::{Portal, PortalError};

/// Why observation failed. Nothing was written. The message says so; the remote's error is
/// the [`source`](std::error::Error::source) (print with [`crate::error::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Reading the tenant failed.
    #[error("could not read the tenant completely, so nothing was changed")]
    Tenant(#[from] GraphError),
    /// Reading the portal failed.
    #[error("could not read the portal completely, so nothing was changed")]
    Portal(#[from] PortalError),
}

/// How the tenant is read through delta queries (`tenant.deltaQuery: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaSettings {
    /// The directory cache (`directory.sqlite` in the state directory).
    pub cache: PathBuf,
    /// Which sync the cache must belong to.
    pub scope: Scope,
    /// A full enumeration at least this often (`tenant.fullResyncInterval`).
    pub full_resync_interval: Duration,
}

/// How [`observe`] reads the tenant.
#[derive(Debug, Clone, Copy)]
pub enum TenantRead<'a> {
    /// The guest listing every time.
    Listing,
    /// Delta queries and the directory cache; `write: false` (a dry run) reads the cache and
    /// saves nothing, and uses the listing when there is no cache to read.
    Delta {
        /// Where and what.
        settings: &'a DeltaSettings,
        /// Whether the cache is written.
        write: bool,
        /// Now, for `tenant.fullResyncInterval`.
        now: DateTime<Utc>,
    },
}

/// How the tenant's picture was obtained, for logs and the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TenantPicture {
    /// The guest listing.
    #[default]
    Listing,
    /// The cache brought up to date by one delta round of `changes` entries.
    Delta {
        /// Entries of the round.
        changes: usize,
    },
    /// A full enumeration through delta, and why (first run, expired link, interval, …).
    FullSync {
        /// Why the cache could not be followed.
        reason: String,
    },
}

/// Reads the tenant and the portal completely.
///
/// The targeted lookups go [`MAX_BATCH_REQUESTS`] at a time ([`Tenant::find_by_emails`],
/// [`Tenant::get_users`]: one `$batch` each over HTTP); `concurrency` bounds those groups in
/// flight.
pub async fn observe<T: Tenant, P: Portal>(
    desired: &DesiredState,
    state: &State,
    tenant: &T,
    portal: &P,
    concurrency: usize,
    read: TenantRead<'_>,
) -> Result<(Observed, TenantPicture), ObserveError> {
    let (tenant_view, portal_users) = tokio::try_join!(
        async { read_tenant(tenant, read).await.map_err(ObserveError::from) },
        async { portal.list_users().await.map_err(ObserveError::from) },
    )?;
    let (guests, members, picture) = match tenant_view {
        TenantView::Listing(guests) => (guests, Vec::new(), TenantPicture::Listing),
        TenantView::Delta { users, picture } => {
            let (guests, members): (Vec<DirectoryUser>, Vec<DirectoryUser>) =
                users.into_values().partition(DirectoryUser::is_guest);
            (guests, members, picture)
        }
    };
    tracing::debug!(
        guests = guests.len(),
        members = members.len(),
        portal_users = portal_users.len(),
        ?picture,
        "tenant and portal read"
    );

    // One index of the picture answers both what the plan needs of the members (delta has
    // them all: those holding a desired address or recorded in state, no lookup needed) and
    // what must still be looked up.
    let index = GuestIndex::new(guests.iter().chain(&members));
    let mut lookups = members_that_matter(desired, state, &index);
    let (by_email, by_id) = lookups_needed(desired, state, &index);
    // Groups of one `$batch` each, at most `concurrency` groups in flight.
    let concurrency = concurrency.max(1);
    // Owned groups: a future borrowing from the stream's items is not `Send` for every
    // lifetime, which a spawned daemon needs.
    let found_by_email: Vec<DirectoryUser> =
        futures::stream::iter(by_email.chunks(MAX_BATCH_REQUESTS).map(<[String]>::to_vec))
            .map(|emails| async move { tenant.find_by_emails(&emails).await })
            .buffer_unordered(concurrency)
            .try_concat()
            .await?;
    let found_by_id: Vec<Vec<Option<DirectoryUser>>> =
        futures::stream::iter(by_id.chunks(MAX_BATCH_REQUESTS).map(<[String]>::to_vec))
            .map(|ids| async move { tenant.get_users(&ids).await })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
    // Deleted items only for the addresses no live user holds, after both reads: the ones the
    // plan would otherwise invite (none in a steady state, so no request).
    let unheld = unheld_addresses(&by_email, &found_by_email);
    let mut deleted: Vec<DirectoryUser> =
        futures::stream::iter(unheld.chunks(MAX_BATCH_REQUESTS).map(<[String]>::to_vec))
            .map(|emails| async move { tenant.find_deleted_by_emails(&emails).await })
            .buffer_unordered(concurrency)
            .try_concat()
            .await?;
    deleted.sort_by(|a, b| a.id.cmp(&b.id));
    deleted.dedup_by(|a, b| a.id == b.id);
    lookups.extend(found_by_email);
    lookups.extend(found_by_id.into_iter().flatten().flatten());
    // Deterministic regardless of completion order.
    lookups.sort_by(|a, b| a.id.cmp(&b.id));
    lookups.dedup_by(|a, b| a.id == b.id);

    Ok((
        Observed {
            guests,
            lookups,
            deleted,
            portal_users,
        },
        picture,
    ))
}

/// The tenant as read before the targeted lookups.
enum TenantView {
    /// Guests only.
    Listing(Vec<DirectoryUser>),
    /// Every user, members included.
    Delta {
        users: HashMap<String, DirectoryUser>,
        picture: TenantPicture,
    },
}

async fn read_tenant<T: Tenant>(
    tenant: &T,
    read: TenantRead<'_>,
) -> Result<TenantView, GraphError> {
    match read {
        TenantRead::Listing => Ok(TenantView::Listing(tenant.list_guests().await?)),
        TenantRead::Delta {
            settings,
            write: true,
            now,
        } => sync(tenant, settings, now).await,
        TenantRead::Delta {
            settings,
            write: false,
            now,
        } => match blocking(|| read_only_cache(settings)) {
            Some(cached) => follow(tenant, settings, cached, now)
                .await
                .map(|(users, picture, _)| TenantView::Delta { users, picture }),
            // Nothing to follow: a full enumeration would read every member only to throw
            // it away.
            None => Ok(TenantView::Listing(tenant.list_guests().await?)),
        },
    }
}

/// The cache for a dry run, when there is one that can be read.
fn read_only_cache(settings: &DeltaSettings) -> Option<Cached> {
    let loaded = DirectoryCache::open_read_only(&settings.cache)
        .and_then(|cache| cache.map(|c| c.load(&settings.scope)).transpose());
    match loaded {
        Ok(Some(cached)) if cached.delta_link.is_some() => Some(cached),
        Ok(_) => None,
        Err(err) => {
            tracing::debug!(error = %crate::error::chain(&err), "directory cache not readable; using the guest listing");
            None
        }
    }
}

/// Loads the cache (recreating it when it cannot be read), follows its link or enumerates
/// anew, and saves the result with its link in one transaction.
async fn sync<T: Tenant>(
    tenant: &T,
    settings: &DeltaSettings,
    now: DateTime<Utc>,
) -> Result<TenantView, GraphError> {
    let (mut cache, cached) = blocking(|| open_for_sync(settings));
    let (users, picture, round) = follow(tenant, settings, cached, now).await?;
    if let Some(cache) = cache.as_mut() {
        let saved = blocking(|| match &round {
            Saved::Full(link) => cache.replace(&settings.scope, users.values(), link, now),
            Saved::Changes(round) => {
                cache.apply(&settings.scope, &round.changes, &round.delta_link)
            }
        });
        if let Err(err) = saved {
            // The next reconcile follows the previous link again: Graph replays the changes.
            tracing::warn!(error = %crate::error::chain(&err), "could not save the directory cache; the next reconcile reads the same changes again");
        }
    }
    Ok(TenantView::Delta { users, picture })
}

/// Opens the cache for writing and loads it. A file that is not a readable cache is
/// recreated (one full sync); a cache that cannot be opened for another reason (permissions,
/// a busy file) is left alone and this reconcile enumerates without keeping anything.
fn open_for_sync(settings: &DeltaSettings) -> (Option<DirectoryCache>, Cached) {
    let path = &settings.cache;
    let recreate = |err: &crate::reconcile::directory::CacheError| {
        tracing::warn!(error = %crate::error::chain(err), "the directory cache is not readable; recreating it (one full sync)");
        DirectoryCache::recreate(path)
            .inspect_err(|err| tracing::warn!(error = %crate::error::chain(err), "the directory cache cannot be recreated; the tenant is enumerated in full and nothing is kept"))
            .ok()
    };
    let unusable = |err: &crate::reconcile::directory::CacheError| {
        tracing::warn!(error = %crate::error::chain(err), "the directory cache cannot be used; the tenant is enumerated in full and nothing is kept");
    };
    let cache = match DirectoryCache::open(path) {
        Ok(cache) => cache,
        Err(err) if err.is_corrupt() => return (recreate(&err), Cached::default()),
        Err(err) => {
            unusable(&err);
            return (None, Cached::default());
        }
    };
    match cache.load(&settings.scope) {
        Ok(cached) => (Some(cache), cached),
        Err(err) if err.is_corrupt() => {
            drop(cache);
            (recreate(&err), Cached::default())
        }
        Err(err) => {
            unusable(&err);
            (None, Cached::default())
        }
    }
}

/// Runs blocking file work (SQLite) without stalling the other tasks of a multi-threaded
/// runtime; on a current-thread runtime (tests, one-shot commands) it simply runs.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What [`follow`] leaves to save.
enum Saved {
    /// A full enumeration: the users and this link replace the cache.
    Full(String),
    /// These changes and their link update it.
    Changes(DeltaRound),
}

/// Brings `cached` up to date: one round from its link, or a full enumeration when there is
/// no link, the last full sync is too old, or Graph no longer knows the link.
/// Returns the users, how they were obtained, and what to save.
async fn follow<T: Tenant>(
    tenant: &T,
    settings: &DeltaSettings,
    cached: Cached,
    now: DateTime<Utc>,
) -> Result<(HashMap<String, DirectoryUser>, TenantPicture, Saved), GraphError> {
    let interval = chrono::TimeDelta::from_std(settings.full_resync_interval)
        .unwrap_or(chrono::TimeDelta::MAX);
    let due = cached
        .full_sync_at
        .is_none_or(|at| now.signed_duration_since(at) >= interval);
    let reason = match cached.delta_link.as_deref() {
        None => cached
            .discarded
            .clone()
            .unwrap_or_else(|| "no delta link stored yet (first sync)".to_owned()),
        Some(_) if due => match cached.full_sync_at {
            Some(at) => format!(
                "the last full sync was at {}, longer ago than tenant.fullResyncInterval",
                at.format("%Y-%m-%d %H:%M UTC")
            ),
            None => "the cache does not say when it was last synced in full".to_owned(),
        },
        Some(link) => match tenant.delta(Some(link)).await {
            Ok(round) => {
                let mut users = cached.users;
                merge(&mut users, &round.changes);
                let picture = TenantPicture::Delta {
                    changes: round.changes.len(),
                };
                return Ok((users, picture, Saved::Changes(round)));
            }
            Err(err) if err.is_resync_required() => {
                let reason = format!(
                    "Graph no longer knows the delta link ({})",
                    crate::error::chain(&err)
                );
                tracing::warn!(reason, "full sync of the tenant");
                reason
            }
            Err(err) => return Err(err),
        },
    };
    tracing::info!(reason, "enumerating every user of the tenant (delta query)");
    let round = tenant.delta(None).await?;
    let mut users = HashMap::with_capacity(round.changes.len());
    merge(&mut users, &round.changes);
    Ok((
        users,
        TenantPicture::FullSync { reason },
        Saved::Full(round.delta_link),
    ))
}

/// Applies a round's entries in order: an object replaces what was known, `@removed` drops
/// it (a restored user comes back as an object; replays give the same result).
pub fn merge(users: &mut HashMap<String, DirectoryUser>, changes: &[DeltaChange]) {
    for change in changes {
        match change {
            DeltaChange::Upsert(user) => {
                users.insert(user.id.clone(), user.clone());
            }
            DeltaChange::Removed { id, .. } => {
                users.remove(id);
            }
        }
    }
}

/// The members of the picture the plan must see: those holding a desired address (they need
/// no invitation) and those whose id state records (never disabled or deleted).
fn members_that_matter(
    desired: &DesiredState,
    state: &State,
    index: &GuestIndex<'_>,
) -> Vec<DirectoryUser> {
    let by_address = desired.users.keys().flat_map(|key| index.find(key, None));
    let by_id = state
        .users
        .values()
        .filter_map(|r| r.guest_id.as_deref())
        .filter_map(|id| index.get(id));
    by_address
        .chain(by_id)
        .filter(|u| !u.is_guest())
        .cloned()
        .collect()
}

/// The addresses of `looked_up` that none of `found` holds.
fn unheld_addresses(looked_up: &[String], found: &[DirectoryUser]) -> Vec<String> {
    looked_up
        .iter()
        .filter(|email| !found.iter().any(|u| identity::holds_address(u, email)))
        .cloned()
        .collect()
}

/// Which desired addresses and which recorded guest ids the picture does not explain.
fn lookups_needed(
    desired: &DesiredState,
    state: &State,
    index: &GuestIndex<'_>,
) -> (Vec<String>, Vec<String>) {
    let mut by_email = BTreeSet::new();
    for (key, user) in &desired.users {
        let known_id = state.users.get(key).and_then(|r| r.guest_id.as_deref());
        if index.find(key, known_id).is_empty() {
            by_email.insert(user.email.as_str().to_owned());
        }
    }
    let by_id = state
        .users
        .values()
        .filter_map(|r| r.guest_id.as_deref())
        .filter(|id| index.get(id).is_none())
        .map(str::to_owned)
        .collect::<BTreeSet<_>>();
    (by_email.into_iter().collect(), by_id.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::desired::spec::{self, SpecPolicy};
    use crate::reconcile::state::UserRecord;
    use crate::remote::graph::fake::{FakeTenant, TenantOp};
    use crate::remote::portal::fake::FakePortal;

    // Issue 7: the targeted lookups go in groups of one `$batch`, `concurrency` groups at once.
    #[tokio::test]
    async fn targeted_lookups_are_batched_within_the_concurrency_bound() {
        let mut yaml = String::from("apiVersion: guestops/v1\nusers:\n");
        for i in 0..45 {
            yaml.push_str(&format!(
                "  - email: user{i:02}@partner.example\n    name: U{i}\n"
            ));
        }
        let desired = spec::parse(yaml.as_bytes(), &SpecPolicy::default())
            .desired
            .expect("a valid users.yaml");
        assert_eq!(desired.users.len(), 45);
        let tenant = FakeTenant::new();
        let member = tenant.add_member("user07@partner.example", "A member");
        // 21 guests guestops invited that the listing does not show (gone, or not replicated).
        let mut state = State::default();
        for i in 0..21 {
            state.users.insert(
                format!("old{i}@partner.example"),
                UserRecord {
                    email: format!("old{i}@partner.example"),
                    guest_id: Some(format!("gone-{i}")),
                    ..UserRecord::default()
                },
            );
        }
        // Latency keeps batches in flight long enough to overlap; no timing is asserted.
        tenant.set_latency(Duration::from_millis(5));

        let (observed, _) = observe(
            &desired,
            &state,
            &tenant,
            &FakePortal::new(),
            2,
            TenantRead::Listing,
        )
        .await
        .expect("observe");

        assert_eq!(tenant.calls(TenantOp::FindByEmails), 3, "20 + 20 + 5");
        assert_eq!(tenant.calls(TenantOp::GetUsers), 2, "20 + 1");
        assert_eq!(tenant.calls(TenantOp::FindByEmail), 0);
        assert_eq!(tenant.calls(TenantOp::GetUser), 0);
        assert_eq!(tenant.max_in_flight(), 2, "two batches at once, never more");
        let ids: Vec<&str> = observed.lookups.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, [member.as_str()]);
    }

    // Issue 9 item 4: deleted items are read only for addresses no live user holds.
    #[tokio::test]
    async fn deleted_items_are_looked_up_only_for_addresses_no_live_user_holds() {
        let tenant = FakeTenant::new();
        tenant.add_guest("listed@partner.example", "Listed");
        tenant.add_member("member@partner.example", "Member");
        let gone = tenant.add_guest("gone@partner.example", "Gone");
        assert!(tenant.soft_delete(&gone));
        let observe_of = |emails: &'static [&'static str]| {
            let tenant = tenant.clone();
            async move {
                observe(
                    &desired_of(emails),
                    &State::default(),
                    &tenant,
                    &FakePortal::new(),
                    2,
                    TenantRead::Listing,
                )
                .await
            }
        };

        let (held, _) = observe_of(&["listed@partner.example", "member@partner.example"])
            .await
            .expect("observe");
        assert!(held.deleted.is_empty());
        assert_eq!(tenant.calls(TenantOp::FindDeletedByEmails), 0, "all held");

        let (observed, _) = observe_of(&[
            "listed@partner.example",
            "member@partner.example",
            "gone@partner.example",
            "new@partner.example",
        ])
        .await
        .expect("observe");
        assert_eq!(tenant.calls(TenantOp::FindDeletedByEmails), 1, "one batch");
        let ids: Vec<&str> = observed.deleted.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, [gone.as_str()]);

        // Fail closed: a failed look-up of deleted items fails the observation.
        tenant.inject(crate::remote::fake::Fault::new(
            TenantOp::FindDeletedByEmails,
            503,
        ));
        let failed = observe_of(&["gone@partner.example"]).await;
        assert!(matches!(failed, Err(ObserveError::Tenant(_))), "{failed:?}");
    }

    fn desired_of(emails: &[&str]) -> DesiredState {
        let mut yaml = String::from("apiVersion: guestops/v1\nusers:\n");
        for email in emails {
            yaml.push_str(&format!("  - email: {email}\n    name: Someone\n"));
        }
        spec::parse(yaml.as_bytes(), &SpecPolicy::default())
            .desired
            .expect("a valid users.yaml")
    }

    fn delta_settings(dir: &std::path::Path) -> DeltaSettings {
        DeltaSettings {
            cache: dir.join(crate::reconcile::directory::CACHE_FILE),
            scope: Scope {
                tenant_id: "contoso.onmicrosoft.com".into(),
                graph_root: "https://graph.microsoft.com/".into(),
                select: crate::remote::graph::USER_SELECT.into(),
            },
            full_resync_interval: Duration::from_secs(24 * 3600),
        }
    }

    async fn read(
        tenant: &FakeTenant,
        desired: &DesiredState,
        settings: &DeltaSettings,
        write: bool,
        now: DateTime<Utc>,
    ) -> Result<(Observed, TenantPicture), ObserveError> {
        observe(
            desired,
            &State::default(),
            tenant,
            &FakePortal::new(),
            4,
            TenantRead::Delta {
                settings,
                write,
                now,
            },
        )
        .await
    }

    fn ids(users: &[DirectoryUser]) -> Vec<&str> {
        let mut ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    // Issue 7: the first reconcile enumerates through delta and keeps the link with the
    // cache; the next one is one round, and members need no lookup.
    #[tokio::test]
    async fn delta_enumerates_once_then_follows_the_link_with_members_known() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = delta_settings(dir.path());
        let tenant = FakeTenant::new();
        let ana = tenant.add_guest("ana@partner.example", "Ana");
        let member = tenant.add_member("bob@contoso.example", "Bob");
        tenant.add_member("carol@contoso.example", "Carol");
        let desired = desired_of(&["ana@partner.example", "bob@contoso.example"]);
        let now = Utc::now();

        let (first, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert!(
            matches!(&picture, TenantPicture::FullSync { reason } if reason.contains("first sync")),
            "{picture:?}"
        );
        assert_eq!(ids(&first.guests), [ana.as_str()]);
        assert_eq!(
            ids(&first.lookups),
            [member.as_str()],
            "only the member that matters"
        );
        assert_eq!(tenant.calls(TenantOp::Delta), 1);
        assert_eq!(tenant.calls(TenantOp::ListGuests), 0);
        assert_eq!(
            tenant.calls(TenantOp::FindByEmails),
            0,
            "the picture answers both"
        );

        let (second, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert_eq!(picture, TenantPicture::Delta { changes: 0 });
        assert_eq!(second, first);
        assert_eq!(tenant.calls(TenantOp::Delta), 2);
        assert_eq!(tenant.total_calls(), 2, "one round each, nothing else");
    }

    #[tokio::test]
    async fn removed_users_leave_the_picture_and_new_addresses_are_looked_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = delta_settings(dir.path());
        let tenant = FakeTenant::new();
        let ana = tenant.add_guest("ana@partner.example", "Ana");
        let eve = tenant.add_guest("eve@partner.example", "Eve");
        let now = Utc::now();
        let desired = desired_of(&["ana@partner.example"]);
        read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert!(tenant.delete_user(&eve).await.expect("delete"));
        tenant.modify_user(&ana, |u| u.external_user_state = Some("Accepted".into()));
        let (observed, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert_eq!(picture, TenantPicture::Delta { changes: 2 });
        assert_eq!(ids(&observed.guests), [ana.as_str()]);
        assert!(!observed.guests[0].is_pending(), "the change merged");

        // An address the picture does not hold is looked up (20 to a batch).
        let desired = desired_of(&["ana@partner.example", "new@partner.example"]);
        read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert_eq!(tenant.calls(TenantOp::FindByEmails), 1);
    }

    // A recorded guest id that the picture shows as a member reaches the plan (which only
    // releases it) without a lookup by id.
    #[tokio::test]
    async fn a_member_whose_id_state_records_is_in_the_picture_without_a_lookup() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = delta_settings(dir.path());
        let tenant = FakeTenant::new();
        let member = tenant.add_member("bob@contoso.example", "Bob");
        let mut state = State::default();
        state.users.insert(
            "old@partner.example".into(),
            UserRecord {
                email: "old@partner.example".into(),
                guest_id: Some(member.clone()),
                ..UserRecord::default()
            },
        );
        let (observed, _) = observe(
            &desired_of(&["ana@partner.example"]),
            &state,
            &tenant,
            &FakePortal::new(),
            4,
            TenantRead::Delta {
                settings: &settings,
                write: true,
                now: Utc::now(),
            },
        )
        .await
        .expect("observe");
        assert_eq!(ids(&observed.lookups), [member.as_str()]);
        assert_eq!(tenant.calls(TenantOp::GetUsers), 0);
    }

    #[tokio::test]
    async fn an_expired_link_is_a_full_sync_in_the_same_reconcile() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = delta_settings(dir.path());
        let tenant = FakeTenant::new();
        let ana = tenant.add_guest("ana@partner.example", "Ana");
        let desired = desired_of(&["ana@partner.example"]);
        let now = Utc::now();
        read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        let eve = tenant.add_guest("eve@partner.example", "Eve");
        tenant.expire_delta_links();
        let (observed, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert!(
            matches!(&picture, TenantPicture::FullSync { reason } if reason.contains("no longer knows")),
            "{picture:?}"
        );
        assert_eq!(ids(&observed.guests), [ana.as_str(), eve.as_str()]);
        assert_eq!(
            tenant.calls(TenantOp::Delta),
            3,
            "first, the expired link, the new sync"
        );
        // The new link was kept.
        let (_, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert_eq!(picture, TenantPicture::Delta { changes: 0 });
    }

    #[tokio::test]
    async fn a_failed_round_fails_the_read_and_keeps_the_previous_link() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = delta_settings(dir.path());
        let tenant = FakeTenant::new();
        tenant.add_guest("ana@partner.example", "Ana");
        let desired = desired_of(&["ana@partner.example"]);
        let now = Utc::now();
        read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        tenant.add_guest("eve@partner.example", "Eve");
        tenant.inject(crate::remote::graph::fake::Fault::new(TenantOp::Delta, 503));
        let err = read(&tenant, &desired, &settings, true, now)
            .await
            .expect_err("an incomplete read fails");
        assert!(matches!(err, ObserveError::Tenant(_)), "{err:?}");
        let (observed, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert_eq!(
            picture,
            TenantPicture::Delta { changes: 1 },
            "from the old link"
        );
        assert_eq!(observed.guests.len(), 2);
    }

    #[tokio::test]
    async fn a_full_sync_is_due_after_the_interval() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = delta_settings(dir.path());
        let tenant = FakeTenant::new();
        tenant.add_guest("ana@partner.example", "Ana");
        let desired = desired_of(&["ana@partner.example"]);
        let now = Utc::now();
        read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        let later = now + chrono::TimeDelta::hours(25);
        let (_, picture) = read(&tenant, &desired, &settings, true, later)
            .await
            .expect("observe");
        assert!(
            matches!(&picture, TenantPicture::FullSync { reason } if reason.contains("fullResyncInterval")),
            "{picture:?}"
        );
        let (_, picture) = read(&tenant, &desired, &settings, true, later)
            .await
            .expect("observe");
        assert_eq!(
            picture,
            TenantPicture::Delta { changes: 0 },
            "the clock restarted"
        );
    }

    #[tokio::test]
    async fn a_dry_run_follows_the_cache_and_saves_nothing_and_without_one_lists() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = delta_settings(dir.path());
        let tenant = FakeTenant::new();
        tenant.add_guest("ana@partner.example", "Ana");
        let desired = desired_of(&["ana@partner.example"]);
        let now = Utc::now();

        let (_, picture) = read(&tenant, &desired, &settings, false, now)
            .await
            .expect("observe");
        assert_eq!(picture, TenantPicture::Listing, "no cache yet: the listing");
        assert!(!settings.cache.exists(), "a dry run creates nothing");

        read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        let eve = tenant.add_guest("eve@partner.example", "Eve");
        let (observed, picture) = read(&tenant, &desired, &settings, false, now)
            .await
            .expect("observe");
        assert_eq!(picture, TenantPicture::Delta { changes: 1 });
        assert!(observed.guests.iter().any(|g| g.id == eve));
        // The cache still stands at the first link: a writing read sees the change again.
        let (_, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert_eq!(picture, TenantPicture::Delta { changes: 1 });
    }

    #[tokio::test]
    async fn a_corrupt_or_foreign_cache_costs_one_full_sync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = delta_settings(dir.path());
        let tenant = FakeTenant::new();
        let ana = tenant.add_guest("ana@partner.example", "Ana");
        let desired = desired_of(&["ana@partner.example"]);
        let now = Utc::now();
        std::fs::write(&settings.cache, b"this is not a database").expect("write");
        let (observed, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert!(
            matches!(picture, TenantPicture::FullSync { .. }),
            "{picture:?}"
        );
        assert_eq!(ids(&observed.guests), [ana.as_str()]);
        let (_, picture) = read(&tenant, &desired, &settings, true, now)
            .await
            .expect("observe");
        assert_eq!(
            picture,
            TenantPicture::Delta { changes: 0 },
            "recreated and kept"
        );

        let mut other = settings.clone();
        other.scope.tenant_id = "fabrikam.onmicrosoft.com".into();
        let (_, picture) = read(&tenant, &desired, &other, true, now)
            .await
            .expect("observe");
        assert!(
            matches!(&picture, TenantPicture::FullSync { reason } if reason.contains("fabrikam") || reason.contains("tenant")),
            "{picture:?}"
        );
    }
}
