//! `guestops import`: a first `users.yaml` written from what the portal and the tenant hold
//! today (bootstrap, design §6). Read-only: it observes, it never writes remotely and never
//! touches the state (ownership is established by the first `apply`, by adoption).
//!
//! Who is written:
//! - every portal user with an admin-capable role (administrator, contributor,
//!   workspace-contributor) that has an account in the tenant (a guest, or an internal member);
//! - portal admins without any tenant account are written **commented out** unless asked
//!   otherwise: applying such an entry sends an invitation, which a bootstrap must not do
//!   behind the reviewer's back;
//! - viewers are not admins and are only counted; users with a role code guestops does not
//!   know, a second registration of one address, and entries `users.yaml` validation would
//!   reject (syntax Entra refuses, a domain outside `allowedDomains`, an empty name) are listed
//!   as comments with the reason.
//!
//! [`build`] is pure (observation in, [`Import`] out); [`Import::to_yaml`] renders the file,
//! and every entry it writes has passed [`crate::desired::spec::parse`] on its own, so the file is valid.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::desired::spec::{
    self, DesiredState, DesiredUser, Email, Role, SpecPolicy, normalize_email,
};
use crate::reconcile::ObserveError;
use crate::reconcile::plan::{GuestIndex, Observed};
use crate::reconcile::state::State;
use crate::remote::graph::{DirectoryUser, Tenant};
use crate::remote::portal::{Portal, PortalUser};

/// What to do with a portal admin that has no account in the tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Uninvited {
    /// Write the entry commented out, with a note (the default: no surprise invitations).
    #[default]
    Comment,
    /// Write the entry: the first apply invites the user.
    Include,
    /// Leave the user out and only count it.
    Skip,
}

/// How [`build`] chooses and checks entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Lower-case domains an address may belong to (`policy.allowedDomains`); empty = any.
    pub allowed_domains: Vec<String>,
    /// Portal admins without a tenant account.
    pub uninvited: Uninvited,
}

/// How a written entry relates to the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantAccount {
    /// A B2B guest holds the address (apply adopts it).
    Guest,
    /// An internal member holds the address (no invitation needed).
    Member,
    /// Nobody holds it: apply would invite.
    Missing,
}

/// One entry of the written `users.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedUser {
    /// The address as the portal spells it.
    pub email: String,
    /// Display name (the portal's, else the tenant's).
    pub name: String,
    /// The portal role.
    pub role: Role,
    /// The tenant side.
    pub account: TenantAccount,
    /// Whether the entry is written commented out.
    pub commented: bool,
}

/// Why a portal user is not an entry of the written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The role code is not one guestops knows (see `portal.roleCodes`).
    UnknownRole(Option<i64>),
    /// A second portal registration of the same address; the first one is written.
    Duplicate,
    /// `users.yaml` validation rejects the entry; the diagnostics' messages.
    Invalid(String),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::UnknownRole(Some(code)) => write!(
                f,
                "portal role code {code} is not one guestops knows: check portal.roleCodes in the config"
            ),
            SkipReason::UnknownRole(None) => {
                f.write_str("the portal returned no role code: set the role by hand")
            }
            SkipReason::Duplicate => f.write_str(
                "a second portal registration of this address: the first one is written above",
            ),
            SkipReason::Invalid(message) => write!(f, "not a valid users.yaml entry: {message}"),
        }
    }
}

/// A portal user left out of the file, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The address as the portal spells it.
    pub email: String,
    /// The portal's display name.
    pub name: String,
    /// Why it is left out.
    pub reason: SkipReason,
}

/// The result of [`build`]: entries and left-outs, sorted by normalized address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Import {
    /// Entries of the file (some possibly commented out, see [`ImportedUser::commented`]).
    pub users: Vec<ImportedUser>,
    /// Portal users with an admin-capable or unknown role that are not entries.
    pub skipped: Vec<Skipped>,
    /// Portal viewers (not admins; counted only).
    pub viewers: usize,
    /// Portal admins without a tenant account left out by [`Uninvited::Skip`].
    pub uninvited_skipped: usize,
}

impl Import {
    /// Entries written as real (uncommented) entries.
    pub fn written(&self) -> usize {
        self.users.iter().filter(|u| !u.commented).count()
    }

    /// Entries written commented out.
    pub fn commented(&self) -> usize {
        self.users.iter().filter(|u| u.commented).count()
    }

    /// The uncommented entries as the desired state they stand for.
    pub fn desired(&self) -> DesiredState {
        let users = self
            .users
            .iter()
            .filter(|u| !u.commented)
            .map(|u| {
                let email = Email::new(&u.email);
                let user = DesiredUser {
                    email: email.clone(),
                    name: u.name.clone(),
                    role: u.role,
                    expires: None,
                    reason: None,
                    line: 0,
                };
                (email.normalized().to_owned(), user)
            })
            .collect();
        DesiredState {
            users,
            ..DesiredState::default()
        }
    }

    /// One line for a person: what was written and what was left out.
    pub fn summary(&self) -> String {
        let mut line = format!("{} admin(s) written", self.written());
        if self.commented() > 0 {
            let _ = write!(
                line,
                ", {} commented out (no account in the tenant: uncomment to invite)",
                self.commented()
            );
        }
        if self.uninvited_skipped > 0 {
            let _ = write!(
                line,
                ", {} without a tenant account left out",
                self.uninvited_skipped
            );
        }
        if !self.skipped.is_empty() {
            let _ = write!(
                line,
                ", {} left out (listed at the end of the file with why)",
                self.skipped.len()
            );
        }
        if self.viewers > 0 {
            let _ = write!(line, ", {} viewer(s) ignored", self.viewers);
        }
        line
    }

    /// Renders `users.yaml`. Every uncommented entry passed validation on its own.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# Written by `guestops import` from the portal's admins and the tenant's accounts.\n\
             # Every entry is an admin of the portal: review each one before committing.\n\
             apiVersion: guestops/v1\n\
             defaults:\n  role: administrator\n",
        );
        if self.users.is_empty() {
            out.push_str("users: []\n");
        } else {
            out.push_str("users:\n");
        }
        for user in &self.users {
            let entry = entry_yaml(&user.email, &user.name, user.role);
            if user.commented {
                out.push_str(
                    "  # No account in the tenant: uncommenting this entry sends an invitation.\n",
                );
                for line in entry.lines() {
                    let _ = writeln!(out, "  # {line}");
                }
            } else {
                if user.account == TenantAccount::Member {
                    out.push_str("  # An internal member of the tenant: no invitation needed.\n");
                }
                for line in entry.lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
        if !self.skipped.is_empty() {
            out.push_str("\n# Portal users left out:\n");
            for skipped in &self.skipped {
                let _ = writeln!(
                    out,
                    "# - {} ({}): {}",
                    one_line(&skipped.email),
                    one_line(&skipped.name),
                    one_line(&skipped.reason.to_string())
                );
            }
        }
        out
    }
}

/// Reads what an import needs, completely or not at all: every guest, every portal user, and
/// a targeted lookup for each portal admin the guest listing does not explain (members).
///
/// `concurrency` bounds the lookups in flight.
pub async fn observe<T: Tenant, P: Portal>(
    tenant: &T,
    portal: &P,
    concurrency: usize,
) -> Result<Observed, ObserveError> {
    // The portal's users as a desired state: `reconcile::observe` looks up exactly the
    // addresses the guest listing does not explain.
    let portal_users = portal.list_users().await?;
    let mut candidates = DesiredState::default();
    for user in &portal_users {
        if matches!(user.role, Some(Role::Viewer)) {
            continue;
        }
        let email = Email::new(&user.email);
        if email.normalized().is_empty() {
            continue;
        }
        candidates
            .users
            .entry(email.normalized().to_owned())
            .or_insert_with(|| DesiredUser {
                email,
                name: user.name.clone(),
                role: user.role.unwrap_or(Role::Administrator),
                expires: None,
                reason: None,
                line: 0,
            });
    }
    let (mut observed, _) = crate::reconcile::observe(
        &candidates,
        &State::default(),
        tenant,
        &EmptyPortal,
        concurrency,
        crate::reconcile::observe::TenantRead::Listing,
    )
    .await?;
    observed.portal_users = portal_users;
    Ok(observed)
}

/// A portal with nobody in it, so that [`observe`] reads the real portal only once.
struct EmptyPortal;

impl Portal for EmptyPortal {
    async fn list_users(&self) -> Result<Vec<PortalUser>, crate::remote::portal::PortalError> {
        Ok(Vec::new())
    }
    async fn find_user(
        &self,
        _email: &str,
    ) -> Result<Option<PortalUser>, crate::remote::portal::PortalError> {
        Ok(None)
    }
    async fn create_user(
        &self,
        _user: &crate::remote::portal::NewPortalUser,
    ) -> Result<(), crate::remote::portal::PortalError> {
        Ok(())
    }
    async fn update_user(
        &self,
        _email: &str,
        _name: &str,
        _role: Role,
    ) -> Result<(), crate::remote::portal::PortalError> {
        Ok(())
    }
    async fn delete_user(&self, _email: &str) -> Result<bool, crate::remote::portal::PortalError> {
        Ok(false)
    }
}

/// Chooses the entries of the file from an observation. Pure and deterministic: the output is
/// sorted by normalized address whatever the order of the input.
pub fn build(observed: &Observed, options: &ImportOptions) -> Import {
    let index = GuestIndex::new(observed.guests.iter().chain(observed.lookups.iter()));
    let policy = SpecPolicy {
        allowed_domains: options.allowed_domains.clone(),
    };
    // Sorted by address then id, so that "the first registration" does not depend on paging.
    let mut portal: Vec<&PortalUser> = observed.portal_users.iter().collect();
    portal.sort_by(|a, b| {
        normalize_email(&a.email)
            .cmp(&normalize_email(&b.email))
            .then_with(|| a.id.cmp(&b.id))
    });

    let mut import = Import::default();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for user in portal {
        let key = normalize_email(&user.email);
        let skip = |reason| Skipped {
            email: user.email.trim().to_owned(),
            name: user.name.trim().to_owned(),
            reason,
        };
        let role = match user.role {
            Some(Role::Viewer) => {
                import.viewers += 1;
                continue;
            }
            Some(role) => role,
            None => {
                import
                    .skipped
                    .push(skip(SkipReason::UnknownRole(user.role_code)));
                continue;
            }
        };
        if seen.insert(key.clone(), ()).is_some() {
            import.skipped.push(skip(SkipReason::Duplicate));
            continue;
        }
        let matches = index.find(&key, None);
        let account = account_of(&matches);
        let name = match user.name.trim() {
            "" => matches
                .iter()
                .find_map(|m| m.display_name.as_deref())
                .unwrap_or("")
                .trim(),
            name => name,
        };
        let email = user.email.trim();
        if let Err(message) = check_entry(email, name, role, &policy) {
            import.skipped.push(skip(SkipReason::Invalid(message)));
            continue;
        }
        let commented = match (account, options.uninvited) {
            (TenantAccount::Missing, Uninvited::Skip) => {
                import.uninvited_skipped += 1;
                continue;
            }
            (TenantAccount::Missing, Uninvited::Comment) => true,
            _ => false,
        };
        import.users.push(ImportedUser {
            email: email.to_owned(),
            name: name.to_owned(),
            role,
            account,
            commented,
        });
    }
    import
}

/// A guest stands for the address when there is one; a member otherwise.
fn account_of(matches: &[&DirectoryUser]) -> TenantAccount {
    if matches.iter().any(|m| m.is_guest()) {
        TenantAccount::Guest
    } else if matches.is_empty() {
        TenantAccount::Missing
    } else {
        TenantAccount::Member
    }
}

/// Validates one entry exactly as `users.yaml` validation would: rendered on its own, parsed.
fn check_entry(email: &str, name: &str, role: Role, policy: &SpecPolicy) -> Result<(), String> {
    let mut doc = String::from("apiVersion: guestops/v1\nusers:\n");
    for line in entry_yaml(email, name, role).lines() {
        let _ = writeln!(doc, "  {line}");
    }
    let parsed = spec::parse(doc.as_bytes(), policy);
    if !parsed.has_errors() {
        return Ok(());
    }
    let messages: Vec<String> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity == spec::Severity::Error)
        .map(|d| match &d.help {
            Some(help) => format!("{} ({help})", d.message),
            None => d.message.clone(),
        })
        .collect();
    Err(messages.join("; "))
}

/// One list item: `- email: …`, `name: …` and `role: …` unless it is the default.
fn entry_yaml(email: &str, name: &str, role: Role) -> String {
    let mut entry = format!("- email: {}\n  name: {}\n", scalar(email), scalar(name));
    if role != Role::Administrator {
        let _ = writeln!(entry, "  role: {}", role.as_str());
    }
    entry
}

/// A YAML scalar: plain when that reads back as the same string, else double-quoted.
fn scalar(value: &str) -> String {
    if is_plain_safe(value) {
        value.to_owned()
    } else {
        quoted(value)
    }
}

fn is_plain_safe(value: &str) -> bool {
    let Some(first) = value.chars().next() else {
        return false;
    };
    let reserved = [
        "null", "~", "true", "false", "yes", "no", "on", "off", "y", "n",
    ];
    !value.starts_with(char::is_whitespace)
        && !value.ends_with(char::is_whitespace)
        && !"-?:,[]{}#&*!|>'\"%@`".contains(first)
        && !value.contains(": ")
        && !value.contains(" #")
        && !value.ends_with(':')
        && value
            .chars()
            .all(|c| !c.is_control() && c != '"' && c != '\\' && c != '\t')
        && !reserved.contains(&value.to_lowercase().as_str())
        && value.parse::<f64>().is_err()
        && !first.is_ascii_digit()
}

fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text safe inside a one-line YAML comment.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
