//! An in-memory [`super::Tenant`] for unit tests.
//!
//! [`FakeTenant`] is a cheap `Clone` handle on shared state, so a test keeps one handle to
//! seed and inspect while the code under test uses another. It follows Graph's semantics where
//! guestops relies on them:
//! - inviting an address that already belongs to a user returns that user (no second guest);
//! - [`super::Tenant::find_by_email`] matches `mail`, `otherMails`, `identities[].issuerAssignedId`,
//!   the UPN and the guest UPN form `local_domain#EXT#@…`, case-insensitively — through
//!   [`crate::remote::identity`], the same matching as the client and the plan;
//! - deleting a user that is gone answers `Ok(false)`; disabling one answers 404;
//! - a soft-deleted user keeps its addresses: inviting one fails (`400`), restoring it
//!   ([`super::Tenant::restore_user`]) brings it back with its id, an id not in deleted items
//!   answers 404;
//! - a batched lookup ([`super::Tenant::find_by_emails`], [`super::Tenant::get_users`]) is one
//!   call that succeeds or fails as a whole; each of its items is a read (replication lag).
//!
//! Test knobs: [`Fault`]s (fail the next N calls of an operation, optionally only for one
//! address or id, optionally after the write happened), latency, call counts and the largest
//! number of calls in flight at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::remote::fake::CallLog;
use crate::remote::identity;
use std::time::Duration;

use chrono::Utc;

use super::{
    DeltaChange, DeltaRound, DirectoryUser, GraphError, Invitation, Invited, RemovedReason,
    Restored, Tenant,
};

/// A tenant operation, for counting calls and injecting faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TenantOp {
    /// [`Tenant::list_guests`].
    ListGuests,
    /// [`Tenant::find_by_email`].
    FindByEmail,
    /// [`Tenant::get_user`].
    GetUser,
    /// [`Tenant::find_by_emails`]: one call per batch (its addresses are not counted as
    /// [`TenantOp::FindByEmail`] calls, but a `FindByEmail` fault for one of them fails it).
    FindByEmails,
    /// [`Tenant::get_users`]: one call per batch (a `GetUser` fault for one of its ids fails
    /// it).
    GetUsers,
    /// [`Tenant::find_deleted_by_emails`]: one call per batch.
    FindDeletedByEmails,
    /// [`Tenant::restore_user`].
    RestoreUser,
    /// [`Tenant::delta`]: one call per round.
    Delta,
    /// [`Tenant::invite`].
    Invite,
    /// [`Tenant::set_account_enabled`].
    SetAccountEnabled,
    /// [`Tenant::delete_user`].
    DeleteUser,
}

/// Make matching calls of a [`TenantOp`] fail (see [`crate::remote::fake::Fault`]).
pub type Fault = crate::remote::fake::Fault<TenantOp>;

#[derive(Debug, Default)]
struct Inner {
    users: Vec<DirectoryUser>,
    deleted: Vec<DirectoryUser>,
    invitations: Vec<Invitation>,
    next_id: u64,
    /// Reads a newly invited guest stays invisible for (replication delay).
    replication_lag: usize,
    /// Object id → reads left before the guest becomes visible.
    hidden: BTreeMap<String, usize>,
    /// What each delta round handed out (`fake-delta:{index}`); `None` once expired.
    delta_rounds: Vec<Option<BTreeMap<String, DirectoryUser>>>,
}

impl Inner {
    /// The users a read sees now; every read brings hidden guests closer to visibility.
    fn visible(&mut self) -> Vec<DirectoryUser> {
        let hidden = &self.hidden;
        let seen = self
            .users
            .iter()
            .filter(|u| !hidden.contains_key(&u.id))
            .cloned()
            .collect();
        self.hidden.retain(|_, left| {
            *left -= 1;
            *left > 0
        });
        seen
    }
}

/// An in-memory tenant; clones share the same directory.
#[derive(Debug, Clone, Default)]
pub struct FakeTenant {
    inner: Arc<Mutex<Inner>>,
    calls: CallLog<TenantOp>,
}

impl FakeTenant {
    /// An empty tenant.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the directory from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a guest with `email` as `mail` (pending acceptance); returns its object id.
    pub fn add_guest(&self, email: &str, display_name: &str) -> String {
        let mut inner = self.lock();
        let user = new_guest(&mut inner, email, display_name);
        let id = user.id.clone();
        inner.users.push(user);
        id
    }

    /// Adds a member (internal account) with `email` as `mail`; returns its object id.
    pub fn add_member(&self, email: &str, display_name: &str) -> String {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = format!("member-{}", inner.next_id);
        inner.users.push(DirectoryUser {
            id: id.clone(),
            display_name: Some(display_name.to_owned()),
            mail: Some(email.to_owned()),
            user_principal_name: Some(email.to_owned()),
            user_type: Some("Member".to_owned()),
            account_enabled: Some(true),
            created_date_time: Some(Utc::now()),
            ..DirectoryUser::default()
        });
        id
    }

    /// Adds any user as given.
    pub fn add_user(&self, user: DirectoryUser) {
        self.lock().users.push(user);
    }

    /// Modifies the user with object id `id` (e.g. to mark an invitation accepted); returns
    /// whether it exists.
    pub fn modify_user(&self, id: &str, f: impl FnOnce(&mut DirectoryUser)) -> bool {
        let mut inner = self.lock();
        match inner.users.iter_mut().find(|u| u.id == id) {
            Some(user) => {
                f(user);
                true
            }
            None => false,
        }
    }

    /// Every user (guests and members), soft-deleted ones excluded.
    pub fn users(&self) -> Vec<DirectoryUser> {
        self.lock().users.clone()
    }

    /// One user by object id.
    pub fn user(&self, id: &str) -> Option<DirectoryUser> {
        self.lock().users.iter().find(|u| u.id == id).cloned()
    }

    /// Makes every delta link handed out so far expired (`410 Gone`, as Graph after 7 days).
    pub fn expire_delta_links(&self) {
        for round in &mut self.lock().delta_rounds {
            *round = None;
        }
    }

    /// Soft-deleted users.
    pub fn deleted(&self) -> Vec<DirectoryUser> {
        self.lock().deleted.clone()
    }

    /// Soft-deletes the user with object id `id` (it moves to deleted items, keeping its
    /// addresses); returns whether it existed.
    pub fn soft_delete(&self, id: &str) -> bool {
        let mut inner = self.lock();
        match inner.users.iter().position(|u| u.id == id) {
            Some(index) => {
                let user = inner.users.remove(index);
                inner.deleted.push(user);
                true
            }
            None => false,
        }
    }

    /// Every invitation that reached the tenant (including those answered with an injected
    /// error after taking effect), in order.
    pub fn invitations(&self) -> Vec<Invitation> {
        self.lock().invitations.clone()
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        self.calls.inject(fault);
    }

    /// Guests created by later invitations stay invisible to the next `reads` read calls
    /// (`list_guests`, `find_by_email`, `get_user`), as Entra's replication delay does.
    pub fn set_replication_lag(&self, reads: usize) {
        self.lock().replication_lag = reads;
    }

    /// Every call answers after `latency` (a `tokio::time` sleep: use a paused clock).
    pub fn set_latency(&self, latency: Duration) {
        self.calls.set_latency(latency);
    }

    /// Calls made of `op`, failed ones included.
    pub fn calls(&self, op: TenantOp) -> usize {
        self.calls.calls(op)
    }

    /// Calls made of every operation.
    pub fn total_calls(&self) -> usize {
        self.calls.total_calls()
    }

    /// The largest number of calls that were in flight at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.calls.max_in_flight()
    }
}

fn new_guest(inner: &mut Inner, email: &str, display_name: &str) -> DirectoryUser {
    inner.next_id += 1;
    let upn = identity::guest_upn(email, "fake.onmicrosoft.com");
    DirectoryUser {
        id: format!("guest-{}", inner.next_id),
        display_name: Some(display_name.to_owned()),
        mail: Some(email.to_owned()),
        other_mails: vec![email.to_owned()],
        user_principal_name: Some(upn),
        user_type: Some("Guest".to_owned()),
        external_user_state: Some("PendingAcceptance".to_owned()),
        external_user_state_change_date_time: Some(Utc::now()),
        creation_type: Some("Invitation".to_owned()),
        account_enabled: Some(true),
        created_date_time: Some(Utc::now()),
        ..DirectoryUser::default()
    }
}

fn api_error(operation: &str, fault: &Fault, request_id: String) -> GraphError {
    GraphError::Api {
        operation: operation.to_owned(),
        status: fault.status,
        code: if fault.status >= 500 {
            "ServiceUnavailable".to_owned()
        } else {
            "Request_BadRequest".to_owned()
        },
        message: format!("injected failure ({})", fault.status),
        request_id: Some(request_id),
    }
}

fn request_id(inner: &mut Inner) -> String {
    inner.next_id += 1;
    format!("fake-request-{}", inner.next_id)
}

impl Tenant for FakeTenant {
    async fn list_guests(&self) -> Result<Vec<DirectoryUser>, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::ListGuests, "").await;
        let mut inner = self.lock();
        if let Some(fault) = fault {
            let rid = request_id(&mut inner);
            return Err(api_error("list guests", &fault, rid));
        }
        Ok(inner
            .users
            .iter()
            .filter(|u| u.is_guest())
            .cloned()
            .collect())
    }

    async fn find_by_email(&self, email: &str) -> Result<Vec<DirectoryUser>, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::FindByEmail, email).await;
        let mut inner = self.lock();
        if let Some(fault) = fault {
            let rid = request_id(&mut inner);
            return Err(api_error(&format!("find {email}"), &fault, rid));
        }
        Ok(inner
            .visible()
            .into_iter()
            .filter(|u| identity::holds_address(u, email))
            .collect())
    }

    async fn get_user(&self, id: &str) -> Result<Option<DirectoryUser>, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::GetUser, id).await;
        let mut inner = self.lock();
        if let Some(fault) = fault {
            let rid = request_id(&mut inner);
            return Err(api_error(&format!("get user {id}"), &fault, rid));
        }
        Ok(inner.visible().into_iter().find(|u| u.id == id))
    }

    async fn find_by_emails(&self, emails: &[String]) -> Result<Vec<DirectoryUser>, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::FindByEmails, "").await;
        let mut inner = self.lock();
        if let Some(fault) = fault {
            let rid = request_id(&mut inner);
            return Err(api_error("find users by address", &fault, rid));
        }
        let mut found = Vec::new();
        for email in emails {
            if let Some(fault) = self.calls.take_fault(TenantOp::FindByEmail, email) {
                let rid = request_id(&mut inner);
                return Err(api_error(&format!("find {email}"), &fault, rid));
            }
            found.extend(
                inner
                    .visible()
                    .into_iter()
                    .filter(|u| identity::holds_address(u, email)),
            );
        }
        Ok(found)
    }

    async fn get_users(&self, ids: &[String]) -> Result<Vec<Option<DirectoryUser>>, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::GetUsers, "").await;
        let mut inner = self.lock();
        if let Some(fault) = fault {
            let rid = request_id(&mut inner);
            return Err(api_error("get users", &fault, rid));
        }
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(fault) = self.calls.take_fault(TenantOp::GetUser, id) {
                let rid = request_id(&mut inner);
                return Err(api_error(&format!("get user {id}"), &fault, rid));
            }
            found.push(inner.visible().into_iter().find(|u| &u.id == id));
        }
        Ok(found)
    }

    /// A round compares what is visible now with what the link's round handed out: new and
    /// changed users, then `@removed` (`changed` for a soft-deleted user, else `deleted`).
    async fn delta(&self, from: Option<&str>) -> Result<DeltaRound, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::Delta, "").await;
        let mut inner = self.lock();
        if let Some(fault) = fault {
            let rid = request_id(&mut inner);
            return Err(api_error("delta", &fault, rid));
        }
        let before = match from {
            None => BTreeMap::new(),
            Some(link) => {
                let known = link
                    .strip_prefix("fake-delta:")
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| inner.delta_rounds.get(n).cloned().flatten());
                match known {
                    Some(known) => known,
                    None => {
                        let rid = request_id(&mut inner);
                        return Err(GraphError::Api {
                            operation: "delta".to_owned(),
                            status: 410,
                            code: "resyncRequired".to_owned(),
                            message: "the sync state is gone; start a new sync".to_owned(),
                            request_id: Some(rid),
                        });
                    }
                }
            }
        };
        let now: BTreeMap<String, DirectoryUser> = inner
            .visible()
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect();
        let mut changes: Vec<DeltaChange> = now
            .values()
            .filter(|u| before.get(&u.id) != Some(*u))
            .cloned()
            .map(DeltaChange::Upsert)
            .collect();
        for id in before.keys().filter(|id| !now.contains_key(*id)) {
            let soft = inner.deleted.iter().any(|d| &d.id == id);
            changes.push(DeltaChange::Removed {
                id: id.clone(),
                reason: if soft {
                    RemovedReason::Changed
                } else {
                    RemovedReason::Deleted
                },
            });
        }
        inner.delta_rounds.push(Some(now));
        Ok(DeltaRound {
            changes,
            delta_link: format!("fake-delta:{}", inner.delta_rounds.len() - 1),
            pages: 1,
        })
    }

    async fn find_deleted_by_emails(
        &self,
        emails: &[String],
    ) -> Result<Vec<DirectoryUser>, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::FindDeletedByEmails, "").await;
        let mut inner = self.lock();
        if let Some(fault) = fault {
            let rid = request_id(&mut inner);
            return Err(api_error("find deleted users by address", &fault, rid));
        }
        Ok(emails
            .iter()
            .flat_map(|email| {
                inner
                    .deleted
                    .iter()
                    .filter(|u| identity::holds_address(u, email))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    async fn restore_user(&self, id: &str) -> Result<Restored, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::RestoreUser, id).await;
        let mut inner = self.lock();
        let rid = request_id(&mut inner);
        let operation = format!("restore deleted user {id}");
        if let Some(fault) = &fault
            && !fault.after_applying
        {
            return Err(api_error(&operation, fault, rid));
        }
        let Some(index) = inner.deleted.iter().position(|u| u.id == id) else {
            return Err(GraphError::Api {
                operation,
                status: 404,
                code: "Request_ResourceNotFound".to_owned(),
                message: format!("Resource '{id}' does not exist"),
                request_id: Some(rid),
            });
        };
        let user = inner.deleted.remove(index);
        inner.users.push(user);
        match fault {
            Some(fault) => Err(api_error(&operation, &fault, rid)),
            None => Ok(Restored {
                user_id: id.to_owned(),
                request_id: Some(rid),
            }),
        }
    }

    async fn invite(&self, invitation: &Invitation) -> Result<Invited, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::Invite, &invitation.email).await;
        let mut inner = self.lock();
        let rid = request_id(&mut inner);
        let operation = format!("invite {}", invitation.email);
        if let Some(fault) = &fault
            && !fault.after_applying
        {
            return Err(api_error(&operation, fault, rid));
        }
        inner.invitations.push(invitation.clone());
        // A soft-deleted user still holds its addresses: Graph refuses the invitation.
        if let Some(ghost) = inner
            .deleted
            .iter()
            .find(|u| identity::holds_address(u, &invitation.email))
        {
            return Err(GraphError::Api {
                operation,
                status: 400,
                code: "BadRequest".to_owned(),
                message: format!(
                    "The invited user already exists in the directory as object {} (a deleted user).",
                    ghost.id
                ),
                request_id: Some(rid),
            });
        }
        let existing = inner
            .users
            .iter()
            .find(|u| identity::holds_address(u, &invitation.email))
            .cloned();
        let user = match existing {
            Some(user) => user,
            None => {
                let user = new_guest(&mut inner, &invitation.email, &invitation.display_name);
                inner.users.push(user.clone());
                if inner.replication_lag > 0 {
                    let lag = inner.replication_lag;
                    inner.hidden.insert(user.id.clone(), lag);
                }
                user
            }
        };
        if let Some(fault) = &fault {
            return Err(api_error(&operation, fault, rid));
        }
        let status = if user.is_pending() {
            "PendingAcceptance"
        } else {
            "Completed"
        };
        Ok(Invited {
            user_id: user.id,
            user_principal_name: user.user_principal_name,
            status: Some(status.to_owned()),
            request_id: Some(rid),
        })
    }

    async fn set_account_enabled(&self, id: &str, enabled: bool) -> Result<(), GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::SetAccountEnabled, id).await;
        let mut inner = self.lock();
        let rid = request_id(&mut inner);
        let operation = format!("set accountEnabled of {id}");
        if let Some(fault) = &fault
            && !fault.after_applying
        {
            return Err(api_error(&operation, fault, rid));
        }
        let Some(user) = inner.users.iter_mut().find(|u| u.id == id) else {
            return Err(GraphError::Api {
                operation,
                status: 404,
                code: "Request_ResourceNotFound".to_owned(),
                message: format!("Resource '{id}' does not exist"),
                request_id: Some(rid),
            });
        };
        user.account_enabled = Some(enabled);
        match fault {
            Some(fault) => Err(api_error(&operation, &fault, rid)),
            None => Ok(()),
        }
    }

    async fn delete_user(&self, id: &str) -> Result<bool, GraphError> {
        let (_guard, fault) = self.calls.enter(TenantOp::DeleteUser, id).await;
        let mut inner = self.lock();
        let rid = request_id(&mut inner);
        let operation = format!("delete user {id}");
        if let Some(fault) = &fault
            && !fault.after_applying
        {
            return Err(api_error(&operation, fault, rid));
        }
        let existed = match inner.users.iter().position(|u| u.id == id) {
            Some(i) => {
                let user = inner.users.remove(i);
                inner.deleted.push(user);
                true
            }
            None => false,
        };
        match fault {
            Some(fault) => Err(api_error(&operation, &fault, rid)),
            None => Ok(existed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invitation(email: &str) -> Invitation {
        Invitation {
            email: email.to_owned(),
            display_name: "Ana".to_owned(),
            send_email: true,
            message: None,
        }
    }

    #[tokio::test]
    async fn invite_of_an_existing_address_returns_the_existing_guest() {
        let tenant = FakeTenant::new();
        let first = tenant.invite(&invitation("Ana@P.example")).await.unwrap();
        let second = tenant.invite(&invitation("ana@p.example")).await.unwrap();
        assert_eq!(first.user_id, second.user_id);
        assert_eq!(tenant.users().len(), 1);
        assert_eq!(tenant.invitations().len(), 2);
    }

    #[tokio::test]
    async fn find_matches_mail_other_mails_and_guest_upn_case_insensitively() {
        let tenant = FakeTenant::new();
        tenant.add_user(DirectoryUser {
            id: "u1".into(),
            user_principal_name: Some("Bob_Vendor.example#EXT#@contoso.onmicrosoft.com".into()),
            user_type: Some("Guest".into()),
            ..DirectoryUser::default()
        });
        tenant.add_user(DirectoryUser {
            id: "u2".into(),
            other_mails: vec!["Carol@vendor.example".into()],
            ..DirectoryUser::default()
        });
        let found = |e: &'static str| {
            let t = tenant.clone();
            async move {
                t.find_by_email(e)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|u| u.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(found("bob@VENDOR.example").await, vec!["u1"]);
        assert_eq!(found("carol@vendor.example").await, vec!["u2"]);
        assert!(found("bo@vendor.example").await.is_empty());
    }

    #[tokio::test]
    async fn faults_fail_the_next_calls_only_for_their_target() {
        let tenant = FakeTenant::new();
        tenant.inject(Fault::new(TenantOp::Invite, 503).for_target("b@x.example"));
        tenant.invite(&invitation("a@x.example")).await.unwrap();
        let err = tenant.invite(&invitation("B@x.example")).await.unwrap_err();
        assert!(err.is_ambiguous());
        assert_eq!(tenant.users().len(), 1, "the failed invite did not apply");
        tenant.invite(&invitation("b@x.example")).await.unwrap();
        assert_eq!(tenant.calls(TenantOp::Invite), 3);
    }

    #[tokio::test]
    async fn replication_lag_hides_new_guests_from_reads() {
        let tenant = FakeTenant::new();
        tenant.set_replication_lag(2);
        let invited = tenant.invite(&invitation("a@x.example")).await.unwrap();
        assert!(
            tenant
                .find_by_email("a@x.example")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(tenant.get_user(&invited.user_id).await.unwrap().is_none());
        assert_eq!(tenant.list_guests().await.unwrap().len(), 1);
        // A second invitation still finds the existing guest (writes see everything).
        let again = tenant.invite(&invitation("a@x.example")).await.unwrap();
        assert_eq!(again.user_id, invited.user_id);
    }

    #[tokio::test]
    async fn a_batched_lookup_is_one_call_and_fails_as_a_whole() {
        let tenant = FakeTenant::new();
        let ana = tenant.add_guest("ana@x.example", "Ana");
        tenant.add_member("bob@x.example", "Bob");
        let emails = ["ANA@x.example", "bob@x.example", "nobody@x.example"].map(String::from);
        let found = tenant.find_by_emails(&emails).await.unwrap();
        assert_eq!(found.len(), 2);
        let ids = [ana.clone(), "gone".to_owned()];
        let read = tenant.get_users(&ids).await.unwrap();
        assert_eq!(read[0].as_ref().map(|u| u.id.as_str()), Some(ana.as_str()));
        assert!(read[1].is_none());
        assert_eq!(tenant.calls(TenantOp::FindByEmails), 1);
        assert_eq!(tenant.calls(TenantOp::GetUsers), 1);
        assert_eq!(tenant.calls(TenantOp::FindByEmail), 0);
        tenant.inject(Fault::new(TenantOp::FindByEmail, 503).for_target("bob@x.example"));
        let err = tenant.find_by_emails(&emails).await.unwrap_err();
        assert_eq!(
            err.status(),
            Some(503),
            "one failed address fails the batch"
        );
        tenant.inject(Fault::new(TenantOp::GetUser, 500).for_target(&ana));
        assert!(tenant.get_users(&ids).await.is_err());
    }

    #[tokio::test]
    async fn after_applying_fault_creates_the_guest_and_reports_an_error() {
        let tenant = FakeTenant::new();
        tenant.inject(Fault::new(TenantOp::Invite, 504).after_applying());
        assert!(tenant.invite(&invitation("a@x.example")).await.is_err());
        assert_eq!(tenant.users().len(), 1);
    }
}
