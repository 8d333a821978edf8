//! Host configuration (design §5): one YAML file owned by the operator, every key overridable by
//! a `GUESTOPS_*` environment variable, secrets read from files, systemd credentials or the
//! environment. Never does network I/O.
//!
//! (Placeholder types: the config work fills in loading and validation.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::plan::GuestOnRemoval;
use crate::portal::RoleCodes;

/// The validated host configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `source.*`: where `users.yaml` comes from.
    pub source: SourceConfig,
    /// `tenant.*`: the Entra ID tenant and Graph access.
    pub tenant: TenantConfig,
    /// `portal.*`: the Power Embedded API.
    pub portal: PortalConfig,
    /// `policy.*`: what guestops may do.
    pub policy: PolicyConfig,
    /// `state.*`: where state and audit live.
    pub state: StateConfig,
    /// `server.*`: the daemon's HTTP endpoint.
    pub server: ServerConfig,
}

/// `source.*`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// A git URL or a local path; `None` when only `--desired FILE` is used.
    pub repo: Option<String>,
    /// Branch to follow.
    pub branch: String,
    /// Path of `users.yaml` inside the repository.
    pub path: String,
    /// How often the branch is fetched.
    pub poll_interval: Duration,
    /// Full reconcile even without a new commit.
    pub resync_interval: Duration,
    /// Token or deploy key for the repository.
    pub credential_file: Option<PathBuf>,
}

/// Where a secret comes from; read only when needed, never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file (trailing newline trimmed).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// `tenant.*`.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Tenant GUID or domain.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// Where the client secret comes from.
    pub client_secret: SecretSource,
    /// Token authority, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// Graph root, e.g. `https://graph.microsoft.com`.
    pub graph_endpoint: Url,
    /// Where an invited guest lands after redeeming.
    pub invite_redirect_url: String,
    /// Graph requests in flight at most.
    pub concurrency: usize,
}

/// `portal.*`.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// API root, e.g. `https://api.powerembedded.com.br`.
    pub base_url: Url,
    /// Where the `X-API-Key` comes from.
    pub api_key: SecretSource,
    /// Portal requests in flight at most.
    pub concurrency: usize,
    /// Role names ↔ portal codes.
    pub role_codes: RoleCodes,
}

/// `policy.*`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Lower-case domains; empty = any.
    pub allowed_domains: Vec<String>,
    /// Act on users removed from `users.yaml` (owned ones only).
    pub prune: bool,
    /// What happens to the guest of a removed admin.
    pub guest_on_removal: GuestOnRemoval,
    /// A plan with more removals is refused unless forced.
    pub max_deletions: usize,
    /// Re-send a pending invitation after this long; `None` = never.
    pub resend_after: Option<Duration>,
}

/// `state.*`.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Directory of `state.json`, `audit.jsonl` and the lock.
    pub dir: PathBuf,
}

/// `server.*`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics`, `/hooks/github`.
    pub listen: SocketAddr,
    /// HMAC secret of the GitHub webhook.
    pub webhook_secret: Option<SecretSource>,
}
