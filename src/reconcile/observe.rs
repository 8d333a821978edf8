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

        let observed = observe(&desired, &state, &tenant, &FakePortal::new(), 2)
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
}
