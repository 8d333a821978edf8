//! The observe step: reading the tenant and the portal completely. Called by
//! [`crate::reconcile::run_once`] (every reconcile) and by `guestops import`; it never writes.
//!
//! Observation is complete or fails: both listings are read in full (a failed page fails the
//! read), then targeted lookups fill in what a listing cannot show — members with a desired
//! address (never invited), and guests that guestops invited but that have not replicated
//! into the listing yet. Unknown is never treated as empty.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};

use crate::desired::spec::DesiredState;
use crate::reconcile::plan::{GuestIndex, Observed};
use crate::reconcile::state::State;
use crate::remote::graph::{DirectoryUser, GraphError, MAX_BATCH_REQUESTS, Tenant};
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
) -> Result<Observed, ObserveError> {
    let (guests, portal_users) = tokio::try_join!(
        async { tenant.list_guests().await.map_err(ObserveError::from) },
        async { portal.list_users().await.map_err(ObserveError::from) },
    )?;
    tracing::debug!(
        guests = guests.len(),
        portal_users = portal_users.len(),
        "listings read"
    );

    let (by_email, by_id) = lookups_needed(desired, state, &guests);
    let by_email: Vec<String> = by_email.into_iter().collect();
    let by_id: Vec<String> = by_id.into_iter().collect();
    // Groups of one `$batch` each, at most `concurrency` groups in flight.
    let concurrency = concurrency.max(1);
    // Owned groups: a future borrowing from the stream's items is not `Send` for every
    // lifetime, which a spawned daemon needs.
    let mut lookups: Vec<DirectoryUser> =
        futures::stream::iter(by_email.chunks(MAX_BATCH_REQUESTS).map(<[String]>::to_vec))
            .map(|emails| async move { tenant.find_by_emails(&emails).await })
            .buffer_unordered(concurrency)
            .try_concat()
            .await?;
    let found: Vec<Vec<Option<DirectoryUser>>> =
        futures::stream::iter(by_id.chunks(MAX_BATCH_REQUESTS).map(<[String]>::to_vec))
            .map(|ids| async move { tenant.get_users(&ids).await })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
    lookups.extend(found.into_iter().flatten().flatten());
    // Deterministic regardless of completion order.
    lookups.sort_by(|a, b| a.id.cmp(&b.id));
    lookups.dedup_by(|a, b| a.id == b.id);

    Ok(Observed {
        guests,
        lookups,
        portal_users,
    })
}

/// Which desired addresses and which recorded guest ids the guest listing does not explain.
fn lookups_needed(
    desired: &DesiredState,
    state: &State,
    guests: &[DirectoryUser],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let index = GuestIndex::new(guests);
    let mut by_email = BTreeSet::new();
    for (key, user) in &desired.users {
        let known_id = state.users.get(key).and_then(|r| r.guest_id.as_deref());
        if index.find(key, known_id).is_empty() {
            by_email.insert(user.email.as_str().to_owned());
        }
    }
    let listed: BTreeSet<&str> = guests.iter().map(|g| g.id.as_str()).collect();
    let by_id = state
        .users
        .values()
        .filter_map(|r| r.guest_id.as_deref())
        .filter(|id| !listed.contains(id))
        .map(str::to_owned)
        .collect();
    (by_email, by_id)
}
