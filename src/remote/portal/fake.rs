//! An in-memory [`super::Portal`] for unit tests.
//!
//! [`FakePortal`] is a cheap `Clone` handle on shared state. It follows the semantics guestops
//! relies on: [`super::Portal::find_user`] matches the email exactly, case-insensitively;
//! creating an address that exists is refused (`409`, strict where the real answer is unknown);
//! updating changes only name and role and keeps every other field (here: `groups`); deleting a
//! missing user answers `Ok(false)`.
//!
//! Test knobs: [`FakePortal::set_put_drops_groups`] (an update clears the groups and reports
//! the loss, as the HTTP client's read after the `PUT` does), [`PortalFault`]s (fail the next N calls of an operation, optionally only for one
//! address, optionally after the write happened), latency, call counts and the largest number
//! of calls in flight at once.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::remote::fake::CallLog;
use std::time::Duration;

use super::{NewPortalUser, Portal, PortalError, PortalUser, RoleCodes};
use crate::desired::spec::Role;

/// A portal operation, for counting calls and injecting faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortalOp {
    /// [`Portal::list_users`].
    ListUsers,
    /// [`Portal::find_user`].
    FindUser,
    /// [`Portal::create_user`].
    CreateUser,
    /// [`Portal::update_user`].
    UpdateUser,
    /// [`Portal::delete_user`].
    DeleteUser,
}

/// Make matching calls of a [`PortalOp`] fail (see [`crate::remote::fake::Fault`]).
pub type PortalFault = crate::remote::fake::Fault<PortalOp>;

/// A stored portal user: what the API lists plus a field guestops does not manage.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    user: PortalUser,
    groups: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    users: Vec<Stored>,
    codes: RoleCodes,
    next_id: u64,
    put_drops_groups: bool,
}

/// An in-memory portal; clones share the same users.
#[derive(Debug, Clone, Default)]
pub struct FakePortal {
    inner: Arc<Mutex<Inner>>,
    calls: CallLog<PortalOp>,
}

impl FakePortal {
    /// An empty portal with the documented role codes.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a user; returns its portal id.
    pub fn add_user(&self, email: &str, name: &str, role: Role) -> String {
        self.add_user_with_groups(email, name, role, &[])
    }

    /// Adds a user member of `groups` (a field guestops must preserve); returns its id.
    pub fn add_user_with_groups(
        &self,
        email: &str,
        name: &str,
        role: Role,
        groups: &[&str],
    ) -> String {
        let mut inner = self.lock();
        let id = new_id(&mut inner);
        let code = inner.codes.code(role);
        inner.users.push(Stored {
            user: PortalUser {
                id: id.clone(),
                email: email.to_owned(),
                name: name.to_owned(),
                role_code: Some(code),
                role: Some(role),
            },
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        });
        id
    }

    /// Every user.
    pub fn users(&self) -> Vec<PortalUser> {
        self.lock().users.iter().map(|s| s.user.clone()).collect()
    }

    /// The user registered with `email` (exact, case-insensitive).
    pub fn user(&self, email: &str) -> Option<PortalUser> {
        self.lock()
            .users
            .iter()
            .find(|s| s.user.email.eq_ignore_ascii_case(email.trim()))
            .map(|s| s.user.clone())
    }

    /// The groups of the user registered with `email`.
    pub fn groups(&self, email: &str) -> Option<Vec<String>> {
        self.lock()
            .users
            .iter()
            .find(|s| s.user.email.eq_ignore_ascii_case(email.trim()))
            .map(|s| s.groups.clone())
    }

    /// From now on an update also clears the user's groups and fails with
    /// [`PortalError::FieldsLost`] naming them (a portal whose `PUT` drops the groups it is
    /// sent back); the name and role are changed all the same.
    pub fn set_put_drops_groups(&self, drops: bool) {
        self.lock().put_drops_groups = drops;
    }

    /// Injects a fault.
    pub fn inject(&self, fault: PortalFault) {
        self.calls.inject(fault);
    }

    /// Every call answers after `latency` (a `tokio::time` sleep: use a paused clock).
    pub fn set_latency(&self, latency: Duration) {
        self.calls.set_latency(latency);
    }

    /// Calls made of `op`, failed ones included.
    pub fn calls(&self, op: PortalOp) -> usize {
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

fn new_id(inner: &mut Inner) -> String {
    inner.next_id += 1;
    format!("00000000-0000-4000-8000-{:012}", inner.next_id)
}

fn api_error(operation: String, status: u16, message: &str) -> PortalError {
    PortalError::Api {
        operation,
        status,
        message: message.to_owned(),
    }
}

fn injected(operation: String, fault: &PortalFault) -> PortalError {
    api_error(
        operation,
        fault.status,
        &format!("injected failure ({})", fault.status),
    )
}

fn position(inner: &Inner, email: &str) -> Option<usize> {
    inner
        .users
        .iter()
        .position(|s| s.user.email.eq_ignore_ascii_case(email.trim()))
}

impl Portal for FakePortal {
    async fn list_users(&self) -> Result<Vec<PortalUser>, PortalError> {
        let (_guard, fault) = self.calls.enter(PortalOp::ListUsers, "").await;
        if let Some(fault) = fault {
            return Err(injected("list users".to_owned(), &fault));
        }
        Ok(self.users())
    }

    async fn find_user(&self, email: &str) -> Result<Option<PortalUser>, PortalError> {
        let (_guard, fault) = self.calls.enter(PortalOp::FindUser, email).await;
        if let Some(fault) = fault {
            return Err(injected(format!("find user {email}"), &fault));
        }
        Ok(self.user(email))
    }

    async fn create_user(&self, user: &NewPortalUser) -> Result<(), PortalError> {
        let (_guard, fault) = self.calls.enter(PortalOp::CreateUser, &user.email).await;
        let operation = format!("create user {}", user.email);
        if let Some(fault) = &fault
            && !fault.after_applying
        {
            return Err(injected(operation, fault));
        }
        let mut inner = self.lock();
        if position(&inner, &user.email).is_some() {
            return Err(api_error(operation, 409, "a user with this email exists"));
        }
        let id = new_id(&mut inner);
        let code = inner.codes.code(user.role);
        inner.users.push(Stored {
            user: PortalUser {
                id,
                email: user.email.clone(),
                name: user.name.clone(),
                role_code: Some(code),
                role: Some(user.role),
            },
            groups: Vec::new(),
        });
        match fault {
            Some(fault) => Err(injected(operation, &fault)),
            None => Ok(()),
        }
    }

    async fn update_user(&self, email: &str, name: &str, role: Role) -> Result<(), PortalError> {
        let (_guard, fault) = self.calls.enter(PortalOp::UpdateUser, email).await;
        let operation = format!("update user {email}");
        if let Some(fault) = &fault
            && !fault.after_applying
        {
            return Err(injected(operation, fault));
        }
        let mut inner = self.lock();
        let code = inner.codes.code(role);
        let Some(i) = position(&inner, email) else {
            return Err(api_error(operation, 404, "user not found"));
        };
        let drops_groups = inner.put_drops_groups;
        let stored = &mut inner.users[i];
        stored.user.name = name.to_owned();
        stored.user.role = Some(role);
        stored.user.role_code = Some(code);
        if drops_groups && !stored.groups.is_empty() {
            let before = std::mem::take(&mut stored.groups);
            return Err(PortalError::FieldsLost {
                email: stored.user.email.clone(),
                fields: vec![super::LostField {
                    field: "groups".to_owned(),
                    before: serde_json::json!(before),
                    after: Some(serde_json::json!([])),
                }],
            });
        }
        match fault {
            Some(fault) => Err(injected(operation, &fault)),
            None => Ok(()),
        }
    }

    async fn delete_user(&self, email: &str) -> Result<bool, PortalError> {
        let (_guard, fault) = self.calls.enter(PortalOp::DeleteUser, email).await;
        let operation = format!("delete user {email}");
        if let Some(fault) = &fault
            && !fault.after_applying
        {
            return Err(injected(operation, fault));
        }
        let mut inner = self.lock();
        let existed = match position(&inner, email) {
            Some(i) => {
                inner.users.remove(i);
                true
            }
            None => false,
        };
        match fault {
            Some(fault) => Err(injected(operation, &fault)),
            None => Ok(existed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_user(email: &str) -> NewPortalUser {
        NewPortalUser {
            email: email.to_owned(),
            name: "Ana".to_owned(),
            role: Role::Administrator,
        }
    }

    #[tokio::test]
    async fn find_is_exact_and_case_insensitive() {
        let portal = FakePortal::new();
        portal.add_user("ana.silva@p.example", "Ana", Role::Viewer);
        assert!(
            portal
                .find_user("ANA.SILVA@p.example")
                .await
                .unwrap()
                .is_some()
        );
        assert!(portal.find_user("silva@p.example").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn create_twice_is_refused_and_update_keeps_groups() {
        let portal = FakePortal::new();
        portal.create_user(&new_user("a@p.example")).await.unwrap();
        let err = portal
            .create_user(&new_user("A@p.example"))
            .await
            .unwrap_err();
        assert!(!err.is_ambiguous());
        portal.add_user_with_groups("b@p.example", "B", Role::Viewer, &["finance"]);
        portal
            .update_user("b@p.example", "Bee", Role::Contributor)
            .await
            .unwrap();
        let b = portal.user("b@p.example").unwrap();
        assert_eq!((b.name.as_str(), b.role), ("Bee", Some(Role::Contributor)));
        assert_eq!(portal.groups("b@p.example").unwrap(), vec!["finance"]);
    }

    #[tokio::test]
    async fn delete_of_a_missing_user_is_false() {
        let portal = FakePortal::new();
        portal.add_user("a@p.example", "A", Role::Administrator);
        assert!(portal.delete_user("a@p.example").await.unwrap());
        assert!(!portal.delete_user("a@p.example").await.unwrap());
    }

    #[tokio::test]
    async fn after_applying_fault_creates_and_reports_an_ambiguous_error() {
        let portal = FakePortal::new();
        portal.inject(PortalFault::new(PortalOp::CreateUser, 504).after_applying());
        let err = portal
            .create_user(&new_user("a@p.example"))
            .await
            .unwrap_err();
        assert!(err.is_ambiguous());
        assert!(portal.user("a@p.example").is_some());
    }
}
