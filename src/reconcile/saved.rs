//! Saved plans (`guestops plan --out FILE`, `guestops apply FILE`; `docs/plan-file.md`).
//!
//! A saved plan is the plan as `plan --format json` prints it, plus what it takes to tell
//! later whether it still holds: the target (tenant id, client id, portal URL), the policy
//! settings and their hash, `--force` and `--only`, the revision of `users.yaml`, and a digest
//! per user of what was observed of it (its tenant accounts, its portal users, guestops' state
//! record). Applying one never trusts the file: [`run_once`](super::run_once) re-observes,
//! plans again ([`super::Mode::ApplySaved`]) and applies only when the fresh plan equals the
//! saved one ([`SavedPlan::check_fresh`]); otherwise nothing is written and
//! [`StalePlan`] says what differs. So a saved plan (edited or not) can never make guestops do
//! anything but what a fresh plan would do, and only what the reviewer saw.
//!
//! The file names users (addresses, ids, names) but no secret: it is written `0600`
//! ([`SavedPlan::write`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::Desired;
use super::plan::{GuestIndex, GuestOnRemoval, Observed, Plan, PlanRevision, Policy, State};
use crate::desired::spec::DesiredState;
use crate::remote::identity::normalized;

/// The `kind` of a plan file.
pub const PLAN_FILE_KIND: &str = "guestops-plan";

/// The version of the plan file format this guestops writes and reads.
pub const PLAN_FILE_VERSION: u32 = 1;

/// A plan file larger than this is refused (a plan of 100k users is far smaller).
pub const MAX_PLAN_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// Where a plan is applied: one tenant (and the app that signs in to it) and one portal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// `tenant.tenantId`.
    pub tenant_id: String,
    /// `tenant.clientId`.
    pub client_id: String,
    /// `portal.baseUrl`.
    pub portal_url: String,
}

impl Target {
    /// The target of a host configuration.
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            tenant_id: config.tenant.tenant_id.clone(),
            client_id: config.tenant.client_id.clone(),
            portal_url: config.portal.base_url.to_string(),
        }
    }

    /// What differs from `other`, one phrase per key (`tenant.tenantId is X here, Y in the
    /// plan`); tenant and client ids compare case-insensitively (GUIDs and domains).
    fn differences(&self, here: &Target) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |key: &str, planned: &str, now: &str, same: bool| {
            if !same {
                out.push(format!("{key} is {now} here, {planned} in the plan"));
            }
        };
        differ(
            "tenant.tenantId",
            &self.tenant_id,
            &here.tenant_id,
            self.tenant_id.eq_ignore_ascii_case(&here.tenant_id),
        );
        differ(
            "tenant.clientId",
            &self.client_id,
            &here.client_id,
            self.client_id.eq_ignore_ascii_case(&here.client_id),
        );
        differ(
            "portal.baseUrl",
            &self.portal_url,
            &here.portal_url,
            self.portal_url == here.portal_url,
        );
        out
    }
}

/// The policy settings a plan depends on (`policy.*`, `tenant.replicationGrace`, the
/// write-only flags `portal.writeOnlyFlags` leaves unstated), normalized so that the hash
/// does not depend on how they are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySettings {
    /// `policy.allowedDomains`, trimmed, lower-cased, sorted, without duplicates.
    pub allowed_domains: Vec<String>,
    /// `policy.prune`.
    pub prune: bool,
    /// `policy.guestOnRemoval`.
    pub guest_on_removal: GuestOnRemoval,
    /// `policy.maxDeletions`.
    pub max_deletions: usize,
    /// `policy.resendAfter` in seconds (`null`: never).
    pub resend_after_seconds: Option<u64>,
    /// `tenant.replicationGrace` in seconds.
    pub replication_grace_seconds: u64,
    /// The write-only portal flags `portal.writeOnlyFlags` does not state, sorted.
    pub unstated_write_only_flags: Vec<String>,
}

impl PolicySettings {
    /// The settings of `policy` (`force`, `--only` and the probe's facts are not settings).
    pub fn of(policy: &Policy) -> Self {
        let domains: BTreeSet<String> = policy
            .allowed_domains
            .iter()
            .map(|d| d.trim().to_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        let flags: BTreeSet<String> = policy
            .hidden_fields
            .unstated_flags
            .iter()
            .cloned()
            .collect();
        Self {
            allowed_domains: domains.into_iter().collect(),
            prune: policy.prune,
            guest_on_removal: policy.guest_on_removal,
            max_deletions: policy.max_deletions,
            resend_after_seconds: policy.resend_after.map(|d| d.as_secs()),
            replication_grace_seconds: policy.replication_grace.as_secs(),
            unstated_write_only_flags: flags.into_iter().collect(),
        }
    }

    /// `sha256:<hex>` of the settings' JSON (fields in their declared order).
    pub fn hash(&self) -> String {
        digest(&serde_json::to_value(self).unwrap_or(Value::Null))
    }

    /// What differs from `here`, one phrase per setting.
    fn differences(&self, here: &PolicySettings) -> Vec<String> {
        let (planned, now) = (
            serde_json::to_value(self).unwrap_or(Value::Null),
            serde_json::to_value(here).unwrap_or(Value::Null),
        );
        let (Value::Object(planned), Value::Object(now)) = (planned, now) else {
            return Vec::new();
        };
        planned
            .iter()
            .filter(|(key, value)| now.get(*key) != Some(value))
            .map(|(key, value)| {
                let here = now.get(key).unwrap_or(&Value::Null);
                format!("{key} is {here} here, {value} in the plan")
            })
            .collect()
    }
}

/// The revision of `users.yaml` a plan was made at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedRevision {
    /// The full commit id, or `sha256:<hex>` of a plain file's content.
    pub id: String,
    /// The abbreviated id.
    pub short: String,
    /// The branch followed (git source).
    pub branch: Option<String>,
    /// The commit's first line (a plain file: its path).
    pub subject: Option<String>,
    /// The commit author (empty for a plain file).
    pub author: String,
}

/// Digests of what one user's plan depended on, each `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserFacts {
    /// The tenant accounts matching the address (live ones, then soft-deleted ones).
    pub tenant: String,
    /// The portal users with the address.
    pub portal: String,
    /// guestops' state record of the user (`null` when there is none).
    pub state: String,
}

/// [`UserFacts`] per normalized address: every user of `users.yaml` and of the state (only
/// the targeted ones with `--only`).
pub type Facts = BTreeMap<String, UserFacts>;

/// `sha256:<hex>` of `value`'s compact JSON.
fn digest(value: &Value) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// What the plan of each user depended on: the accounts matched as the plan matches them
/// (every address form of [`crate::remote::identity`], the guest id in state), the portal
/// users with the address, and the state record, as observed for `state` (after the guests
/// seen are noted, as the plan sees them).
pub fn facts(desired: &DesiredState, observed: &Observed, state: &State, policy: &Policy) -> Facts {
    let keys: BTreeSet<&str> = desired
        .users
        .keys()
        .chain(state.users.keys())
        .map(String::as_str)
        .filter(|key| policy.targets(key))
        .collect();
    let live = GuestIndex::new(observed.guests.iter().chain(observed.lookups.iter()));
    let deleted = GuestIndex::new(observed.deleted.iter());
    let mut portal: BTreeMap<String, Vec<&crate::remote::portal::PortalUser>> = BTreeMap::new();
    for user in &observed.portal_users {
        let key = normalized(&user.email);
        if keys.contains(key.as_ref()) {
            portal.entry(key.into_owned()).or_default().push(user);
        }
    }
    keys.into_iter()
        .map(|key| {
            let record = state.users.get(key);
            let known = record.and_then(|r| r.guest_id.as_deref());
            let tenant = serde_json::json!({
                "live": json(&live.find(key, known)),
                "deleted": json(&deleted.find(key, None)),
            });
            let mut users = portal.get(key).cloned().unwrap_or_default();
            users.sort_by(|a, b| a.id.cmp(&b.id));
            let facts = UserFacts {
                tenant: digest(&tenant),
                portal: digest(&json(&users)),
                state: digest(&json(&record)),
            };
            (key.to_owned(), facts)
        })
        .collect()
}

/// `value` as JSON (`null` if it cannot be: never for these types).
fn json<T: Serialize + ?Sized>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A plan file (`docs/plan-file.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedPlan {
    /// Always [`PLAN_FILE_KIND`].
    pub kind: String,
    /// [`PLAN_FILE_VERSION`].
    pub version: u32,
    /// The guestops version that wrote it.
    pub guestops_version: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Where it applies.
    pub target: Target,
    /// The policy settings it was planned under.
    pub policy: PolicySettings,
    /// [`PolicySettings::hash`] of `policy`.
    pub policy_hash: String,
    /// Whether `--force` lifted the mass-removal guards.
    pub force: bool,
    /// `--only`: the normalized addresses it is limited to (`null`: every user).
    pub only: Option<Vec<String>>,
    /// The revision of `users.yaml` it was planned at.
    pub revision: SavedRevision,
    /// What it depended on, per user.
    pub facts: Facts,
    /// The plan, exactly as `guestops plan --format json` prints it (`docs/plan-json.md`).
    pub plan: Value,
}

/// Why a plan file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    /// The file could not be read.
    #[error("cannot read the plan file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file could not be written.
    #[error("cannot write the plan file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Not a plan file of guestops, or damaged.
    #[error(
        "{} is not a guestops plan file ({why}); write one with `guestops plan --out FILE`",
        path.display()
    )]
    NotAPlan {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Written by a newer guestops.
    #[error(
        "{} is a plan file of version {found}, newer than the {PLAN_FILE_VERSION} this guestops understands: apply it with the guestops that wrote it, or plan again",
        path.display()
    )]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
}

/// A plan file that does not fit this host: another target or another policy. Nothing was
/// read from the remote systems.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    /// Made for another tenant, app or portal.
    #[error(
        "the plan was made for another target ({}); apply it with the configuration it was made with, or plan again",
        .0.join("; ")
    )]
    Target(Vec<String>),
    /// Made under another policy.
    #[error(
        "the plan was made under another policy (policy hash {planned} in the plan, {here} here: {}); plan again",
        differences.join("; ")
    )]
    Policy {
        /// The plan's hash.
        planned: String,
        /// This host's hash.
        here: String,
        /// What differs.
        differences: Vec<String>,
    },
}

/// A saved plan that no longer holds: the fresh plan differs. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the plan is stale: {}; plan again", .differences.join("; "))]
pub struct StalePlan {
    /// What differs, one phrase each (at most [`StalePlan::SHOWN`], then how many more).
    pub differences: Vec<String>,
}

impl StalePlan {
    /// At most this many differences are named.
    pub const SHOWN: usize = 8;

    fn new(mut differences: Vec<String>) -> Self {
        if differences.len() > Self::SHOWN {
            let more = differences.len() - Self::SHOWN;
            differences.truncate(Self::SHOWN);
            differences.push(format!("and {more} more"));
        }
        Self { differences }
    }
}

impl SavedPlan {
    /// The saved form of `plan`, planned for `desired` with `policy` on `target`; `facts` as
    /// [`facts`] computed them for the same observation.
    pub fn new(
        target: Target,
        policy: &Policy,
        desired: &Desired,
        plan: &Plan,
        facts: Facts,
        now: DateTime<Utc>,
    ) -> Self {
        let settings = PolicySettings::of(policy);
        let revision = desired.plan_revision();
        Self {
            kind: PLAN_FILE_KIND.to_owned(),
            version: PLAN_FILE_VERSION,
            guestops_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: now,
            target,
            policy_hash: settings.hash(),
            policy: settings,
            force: policy.force,
            only: policy.only.as_ref().map(|o| o.iter().cloned().collect()),
            revision: SavedRevision {
                id: revision.id.clone(),
                short: revision.short.clone(),
                branch: revision.branch.clone(),
                subject: revision.subject.clone(),
                author: desired.revision.author.clone(),
            },
            facts,
            plan: plan_value(plan, &revision),
        }
    }

    /// `--only` of the plan, as the plan's policy takes it.
    pub fn only(&self) -> Option<BTreeSet<String>> {
        self.only.as_ref().map(|o| o.iter().cloned().collect())
    }

    /// Refuses a plan made for another target than `here`.
    pub fn check_target(&self, here: &Target) -> Result<(), Mismatch> {
        let differences = self.target.differences(here);
        if differences.is_empty() {
            Ok(())
        } else {
            Err(Mismatch::Target(differences))
        }
    }

    /// Refuses a plan made under other policy settings than `here` (by hash, naming what
    /// differs).
    pub fn check_policy(&self, here: &PolicySettings) -> Result<(), Mismatch> {
        let hash = here.hash();
        if hash == self.policy_hash {
            return Ok(());
        }
        let mut differences = self.policy.differences(here);
        if differences.is_empty() {
            differences.push("the settings recorded in the plan do not match its hash".to_owned());
        }
        Err(Mismatch::Policy {
            planned: self.policy_hash.clone(),
            here: hash,
            differences,
        })
    }

    /// Refuses when `users.yaml` is at another revision than the plan's (a plan is applied
    /// at the revision the source holds now, never an older one: the branch is the truth).
    pub fn check_revision(&self, desired: &Desired) -> Result<(), StalePlan> {
        if desired.revision.id == self.revision.id {
            return Ok(());
        }
        Err(StalePlan::new(vec![format!(
            "users.yaml is at revision {} now, the plan was made at {}",
            desired.revision.short, self.revision.short
        )]))
    }

    /// Refuses when `users.yaml` is at another revision than the plan's, or the fresh `plan`
    /// (with its `facts`) differs from the saved one in its changes, refused changes or
    /// refusals (its notices and counts are not compared).
    pub fn check_fresh(
        &self,
        desired: &Desired,
        plan: &Plan,
        facts: &Facts,
    ) -> Result<(), StalePlan> {
        self.check_revision(desired)?;
        let fresh = plan_value(plan, &desired.plan_revision());
        let mut differences = Vec::new();
        for (field, label) in [("changes", ""), ("refusedChanges", "refused ")] {
            differences.extend(self.change_differences(&fresh, field, label, facts));
        }
        let codes = |plan: &Value| -> Vec<String> {
            array(plan, "refusals")
                .iter()
                .map(|r| {
                    let code = r.get("code").and_then(Value::as_str).unwrap_or("?");
                    match r.get("email").and_then(Value::as_str) {
                        Some(email) => format!("{code} of {email}"),
                        None => code.to_owned(),
                    }
                })
                .collect()
        };
        if array(&self.plan, "refusals") != array(&fresh, "refusals") {
            differences.push(format!(
                "refusals: planned {}, now {}",
                or_none(&codes(&self.plan)),
                or_none(&codes(&fresh))
            ));
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(StalePlan::new(differences))
        }
    }

    /// One phrase per user whose entries of `field` differ between the saved and the fresh
    /// plan, with what changed of it since.
    fn change_differences(
        &self,
        fresh: &Value,
        field: &str,
        label: &str,
        facts: &Facts,
    ) -> Vec<String> {
        let (planned, now) = (
            by_user(array(&self.plan, field)),
            by_user(array(fresh, field)),
        );
        let keys: BTreeSet<&str> = planned.keys().chain(now.keys()).copied().collect();
        let mut out = Vec::new();
        for key in keys {
            let (before, after) = (planned.get(key), now.get(key));
            if before == after {
                continue;
            }
            let user = before
                .or(after)
                .and_then(|c| c.first())
                .and_then(|c| c.get("user"))
                .and_then(Value::as_str)
                .unwrap_or(key);
            let (before_names, after_names) = (action_names(before), action_names(after));
            let what = if before_names == after_names {
                format!("{label}{} with other details", or_none(&before_names))
            } else {
                format!(
                    "planned {label}{}, now {}",
                    or_none(&before_names),
                    or_none(&after_names)
                )
            };
            out.push(format!("{user}: {what} ({})", self.why(key, facts)));
        }
        out
    }

    /// What changed of the user `key` since the plan, from the facts.
    fn why(&self, key: &str, facts: &Facts) -> String {
        let (Some(before), Some(after)) = (self.facts.get(key), facts.get(key)) else {
            return "it was not in the plan's users".to_owned();
        };
        let mut changed = Vec::new();
        if before.tenant != after.tenant {
            changed.push("its tenant account");
        }
        if before.portal != after.portal {
            changed.push("its portal user");
        }
        if before.state != after.state {
            changed.push("guestops' state of it");
        }
        if changed.is_empty() {
            "nothing observed of it changed: time did (an expiry, a re-send that fell due, a replication grace that ended)".to_owned()
        } else {
            let list = match changed.as_slice() {
                [one] => (*one).to_owned(),
                [first @ .., last] => format!("{} and {last}", first.join(", ")),
                [] => String::new(),
            };
            format!("{list} changed since the plan")
        }
    }

    /// Reads a plan file: the kind and version first (a newer version is named as such).
    pub fn read(path: &Path) -> Result<SavedPlan, PlanFileError> {
        use std::io::Read as _;
        let read_err = |source| PlanFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_PLAN_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let not_a_plan = |why: String| PlanFileError::NotAPlan {
            path: path.to_path_buf(),
            why,
        };
        if bytes.len() as u64 > MAX_PLAN_FILE_BYTES {
            return Err(not_a_plan(format!(
                "larger than {} MiB",
                MAX_PLAN_FILE_BYTES / 1024 / 1024
            )));
        }
        /// The kind and version only, read first.
        #[derive(Deserialize)]
        struct Probe {
            kind: Option<String>,
            version: Option<u32>,
        }
        let probe: Probe =
            serde_json::from_slice(&bytes).map_err(|e| not_a_plan(format!("not JSON: {e}")))?;
        if probe.kind.as_deref() != Some(PLAN_FILE_KIND) {
            return Err(not_a_plan(format!("no \"kind\": \"{PLAN_FILE_KIND}\"")));
        }
        match probe.version {
            Some(found) if found > PLAN_FILE_VERSION => {
                return Err(PlanFileError::NewerVersion {
                    path: path.to_path_buf(),
                    found,
                });
            }
            Some(_) => {}
            None => return Err(not_a_plan("no \"version\"".to_owned())),
        }
        serde_json::from_slice(&bytes).map_err(|e| not_a_plan(e.to_string()))
    }

    /// Writes the plan file `path`, mode `0600` (it names users): a temporary file beside it,
    /// fsync'd, renamed over `path`.
    pub fn write(&self, path: &Path) -> Result<(), PlanFileError> {
        let write_err = |source| PlanFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes =
            serde_json::to_vec_pretty(self).map_err(|e| write_err(io::Error::other(e)))?;
        bytes.push(b'\n');
        let name = path
            .file_name()
            .ok_or_else(|| write_err(io::Error::other("the path names no file")))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let written = (|| -> io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            #[cfg(unix)]
            {
                // A leftover temporary file keeps its mode through `open`.
                use std::os::unix::fs::PermissionsExt as _;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(write_err(source));
        }
        Ok(())
    }
}

/// `plan` as `guestops plan --format json` prints it.
fn plan_value(plan: &Plan, revision: &PlanRevision) -> Value {
    serde_json::to_value(super::plan::json_document(plan, Some(revision))).unwrap_or(Value::Null)
}

fn array<'v>(plan: &'v Value, field: &str) -> &'v [Value] {
    plan.get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The entries of a `changes` array by `key`, in order.
fn by_user(changes: &[Value]) -> BTreeMap<&str, Vec<&Value>> {
    let mut out: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for change in changes {
        let key = change.get("key").and_then(Value::as_str).unwrap_or("");
        out.entry(key).or_default().push(change);
    }
    out
}

fn action_names(changes: Option<&Vec<&Value>>) -> Vec<String> {
    changes
        .into_iter()
        .flatten()
        .map(|c| {
            c.get("action")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::source::Revision;
    use crate::desired::spec::{self, SpecPolicy};
    use crate::reconcile::plan::{self, Observed, UserRecord};
    use crate::remote::graph::DirectoryUser;
    use crate::remote::portal::PortalUser;
    use chrono::TimeZone as _;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn desired(revision: &str) -> Desired {
        let text = "apiVersion: guestops/v1\nusers:\n  - email: Ana@partner.example\n    name: Ana\n  - email: bo@partner.example\n    name: Bo\n";
        let parsed = spec::parse(text.as_bytes(), &SpecPolicy::default());
        Desired {
            state: parsed.desired.expect("valid"),
            revision: Revision {
                id: revision.to_owned(),
                short: revision[..7].to_owned(),
                author: "Rita <rita@contoso.example>".to_owned(),
                time: now(),
                subject: "add Ana and Bo".to_owned(),
            },
            branch: Some("main".to_owned()),
        }
    }

    fn target() -> Target {
        Target {
            tenant_id: "contoso.onmicrosoft.com".to_owned(),
            client_id: "00000000-0000-0000-0000-00000000000A".to_owned(),
            portal_url: "https://api.powerembedded.com.br/".to_owned(),
        }
    }

    fn observed(bo_portal_name: &str) -> Observed {
        Observed {
            guests: vec![DirectoryUser {
                id: "g-bo".to_owned(),
                mail: Some("bo@partner.example".to_owned()),
                user_type: Some("Guest".to_owned()),
                external_user_state: Some("Accepted".to_owned()),
                account_enabled: Some(true),
                ..DirectoryUser::default()
            }],
            portal_users: vec![PortalUser {
                id: "p-bo".to_owned(),
                email: "bo@partner.example".to_owned(),
                name: bo_portal_name.to_owned(),
                role_code: Some(1),
                role: Some(crate::desired::spec::Role::Administrator),
            }],
            ..Observed::default()
        }
    }

    /// A plan and its saved form for `observed`, as `plan --out` makes them.
    fn planned(d: &Desired, observed: &Observed, state: &State, policy: &Policy) -> (Plan, Facts) {
        let p = plan::plan(&d.state, observed, state, policy, now());
        (p, facts(&d.state, observed, state, policy))
    }

    const REV: &str = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d";

    #[test]
    fn the_policy_hash_ignores_how_domains_are_written_and_nothing_else() {
        let policy = Policy {
            allowed_domains: vec!["Partner.example".to_owned(), " vendor.example".to_owned()],
            ..Policy::default()
        };
        let same = Policy {
            allowed_domains: vec!["vendor.example".to_owned(), "partner.example".to_owned()],
            force: true,
            only: Some(["x@y.example".to_owned()].into()),
            ..Policy::default()
        };
        let hash = PolicySettings::of(&policy).hash();
        assert!(
            hash.starts_with("sha256:") && hash.len() == 7 + 64,
            "{hash}"
        );
        assert_eq!(
            hash,
            PolicySettings::of(&same).hash(),
            "force and --only are no settings"
        );
        for other in [
            Policy {
                prune: true,
                ..policy.clone()
            },
            Policy {
                max_deletions: 6,
                ..policy.clone()
            },
            Policy {
                resend_after: None,
                ..policy.clone()
            },
            Policy {
                guest_on_removal: GuestOnRemoval::Delete,
                ..policy.clone()
            },
            Policy {
                replication_grace: std::time::Duration::from_secs(60),
                ..policy.clone()
            },
            Policy {
                allowed_domains: vec!["partner.example".to_owned()],
                ..policy.clone()
            },
        ] {
            assert_ne!(hash, PolicySettings::of(&other).hash(), "{other:?}");
        }
    }

    #[test]
    fn another_target_or_policy_is_refused_naming_what_differs() {
        let d = desired(REV);
        let (p, f) = planned(&d, &observed("Bo"), &State::default(), &Policy::default());
        let saved = SavedPlan::new(target(), &Policy::default(), &d, &p, f, now());
        saved.check_target(&target()).expect("same target");
        let lower_case = Target {
            client_id: target().client_id.to_lowercase(),
            ..target()
        };
        saved
            .check_target(&lower_case)
            .expect("ids compare case-insensitively");
        let other = Target {
            tenant_id: "fabrikam.onmicrosoft.com".to_owned(),
            ..target()
        };
        let err = saved.check_target(&other).unwrap_err().to_string();
        assert!(
            err.contains("tenant.tenantId is fabrikam.onmicrosoft.com here, contoso.onmicrosoft.com in the plan"),
            "{err}"
        );

        saved
            .check_policy(&PolicySettings::of(&Policy::default()))
            .expect("same policy");
        let stricter = Policy {
            max_deletions: 1,
            ..Policy::default()
        };
        let err = saved
            .check_policy(&PolicySettings::of(&stricter))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("maxDeletions is 1 here, 5 in the plan"),
            "{err}"
        );
        assert!(err.contains(&saved.policy_hash), "{err}");
    }

    #[test]
    fn the_same_observation_is_fresh_and_a_changed_one_is_stale_with_the_reason() {
        let d = desired(REV);
        let policy = Policy::default();
        let state = State::default();
        let (p, f) = planned(&d, &observed("Bo"), &state, &policy);
        let saved = SavedPlan::new(target(), &policy, &d, &p, f, now());
        let (again, facts_again) = planned(&d, &observed("Bo"), &state, &policy);
        saved.check_fresh(&d, &again, &facts_again).expect("fresh");

        // Bo's portal name changed meanwhile: an update appears.
        let (fresh, fresh_facts) = planned(&d, &observed("Robert"), &state, &policy);
        let err = saved.check_fresh(&d, &fresh, &fresh_facts).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("the plan is stale: "), "{text}");
        assert!(text.ends_with("; plan again"), "{text}");
        assert!(text.contains("bo@partner.example: planned adopt-guest, adopt-portal, now adopt-guest, adopt-portal, update-portal"), "{text}");
        assert!(
            text.contains("its portal user changed since the plan"),
            "{text}"
        );
        assert!(
            !text.contains("Ana@partner.example"),
            "Ana's plan is unchanged: {text}"
        );

        // guestops' state changed (another apply adopted Bo).
        let mut adopted = State::default();
        adopted.users.insert(
            "bo@partner.example".to_owned(),
            UserRecord {
                email: "bo@partner.example".to_owned(),
                guest_id: Some("g-bo".to_owned()),
                guest_owned: true,
                ..UserRecord::default()
            },
        );
        let (fresh, fresh_facts) = planned(&d, &observed("Bo"), &adopted, &policy);
        let text = saved
            .check_fresh(&d, &fresh, &fresh_facts)
            .unwrap_err()
            .to_string();
        assert!(text.contains("guestops' state of it changed"), "{text}");
    }

    #[test]
    fn another_revision_is_stale_before_anything_is_compared() {
        let d = desired(REV);
        let (p, f) = planned(&d, &observed("Bo"), &State::default(), &Policy::default());
        let saved = SavedPlan::new(target(), &Policy::default(), &d, &p, f.clone(), now());
        let newer = desired("ffffffff00000000000000000000000000000000");
        let text = saved.check_fresh(&newer, &p, &f).unwrap_err().to_string();
        assert!(
            text.contains("users.yaml is at revision fffffff now, the plan was made at 1a2b3c4"),
            "{text}"
        );
    }

    #[test]
    fn a_plan_wide_refusal_that_appears_is_stale() {
        let d = desired(REV);
        let (p, f) = planned(&d, &observed("Bo"), &State::default(), &Policy::default());
        let saved = SavedPlan::new(target(), &Policy::default(), &d, &p, f.clone(), now());
        let mut refused = p.clone();
        refused.refusals.push(plan::Refusal {
            code: "max-deletions".to_owned(),
            scope: plan::RefusalScope::Plan,
            email: None,
            message: "too many".to_owned(),
            help: "--force".to_owned(),
        });
        let text = saved.check_fresh(&d, &refused, &f).unwrap_err().to_string();
        assert!(
            text.contains("refusals: planned nothing, now max-deletions"),
            "{text}"
        );
    }

    #[test]
    fn many_differences_are_cut_to_a_count() {
        let stale = StalePlan::new((0..12).map(|i| format!("d{i}")).collect());
        assert_eq!(stale.differences.len(), StalePlan::SHOWN + 1);
        assert_eq!(
            stale.differences.last().map(String::as_str),
            Some("and 4 more")
        );
    }

    #[test]
    fn the_file_round_trips_is_private_and_only_its_own_kind_and_versions_are_read() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("plan.json");
        let d = desired(REV);
        let policy = Policy {
            only: Some(["bo@partner.example".to_owned()].into()),
            ..Policy::default()
        };
        let (p, f) = planned(&d, &observed("Bo"), &State::default(), &policy);
        let saved = SavedPlan::new(target(), &policy, &d, &p, f, now());
        assert_eq!(
            saved.only.as_deref(),
            Some(&["bo@partner.example".to_owned()][..])
        );
        assert_eq!(
            saved.facts.keys().collect::<Vec<_>>(),
            vec!["bo@partner.example"],
            "--only limits the facts"
        );
        saved.write(&path).expect("written");
        assert_eq!(SavedPlan::read(&path).expect("read back"), saved);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).expect("text");
        let doc: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(doc["kind"], PLAN_FILE_KIND);
        assert_eq!(doc["version"], PLAN_FILE_VERSION);
        assert_eq!(
            doc["plan"]["version"], 2,
            "the plan as plan --format json prints it"
        );
        assert_eq!(doc["revision"]["author"], "Rita <rita@contoso.example>");

        let newer = text.replacen("\"version\": 1", "\"version\": 9", 1);
        std::fs::write(&path, newer).expect("write");
        let err = SavedPlan::read(&path).unwrap_err();
        assert!(
            matches!(err, PlanFileError::NewerVersion { found: 9, .. }),
            "{err:?}"
        );
        std::fs::write(&path, b"{\"version\": 2}").expect("write");
        assert!(matches!(
            SavedPlan::read(&path),
            Err(PlanFileError::NotAPlan { .. })
        ));
        std::fs::write(&path, b"apiVersion: guestops/v1\n").expect("write");
        let err = SavedPlan::read(&path).unwrap_err().to_string();
        assert!(err.contains("is not a guestops plan file"), "{err}");
    }
}
