//! Host configuration (design §5): one YAML file owned by the operator, every key overridable by
//! a `GUESTOPS_*` environment variable, secrets read from files, systemd credentials or the
//! environment. Never does network I/O.
//!
//! Loading happens in two stages: the file is parsed into a tree with positions and flattened
//! into known keys (unknown keys and wrong shapes are problems), environment overrides replace
//! values, then every value is interpreted and validated. Every problem is collected and
//! reported at once in [`ConfigError::Invalid`], naming the key, the line (or the variable) and
//! what to do.
//!
//! Secrets are not part of loading: [`Config::load_secrets`] (or [`SecretSource::load`]) reads
//! them when a command needs them, so checking a config file needs no secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::reconcile::plan::GuestOnRemoval;
use crate::remote::portal::RoleCodes;

mod build;
mod credential;
mod render;
mod secret;
mod tree;

pub use build::parse_duration;
pub use render::duration as format_duration;
pub use secret::{CREDENTIALS_DIRECTORY, LoadedSecret, SecretOrigin, Secrets};

/// Where the host configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/guestops/config.yaml";

/// A config file larger than this is refused.
pub const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// The validated host configuration.
#[derive(Debug, Clone, PartialEq)]
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
    /// `notify`: where the daemon sends notifications (file only: no environment override).
    pub notify: Vec<NotifyConfig>,
}

/// One item of `notify`: a webhook the daemon posts its notifications to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// `kind`: the shape of the message (Teams Workflows, Slack, a generic JSON webhook).
    pub kind: crate::service::notify::NotifierKind,
    /// `urlFile`: the file holding the webhook URL, a secret (read when the daemon starts;
    /// never logged, never in errors).
    pub url_file: PathBuf,
    /// `secretFile` (`kind: webhook` only): the file holding the HMAC-SHA256 key of
    /// `X-Guestops-Signature-256`; `None`: the body is not signed.
    pub secret_file: Option<PathBuf>,
    /// `events`: what is sent, in the canonical order (default: every event).
    pub events: Vec<crate::service::notify::EventKind>,
}

/// `source.*`.
#[derive(Debug, Clone, PartialEq)]
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
    /// `source.verify.*`: which commits must be signed, and by whom.
    pub verify: crate::desired::source::VerifyPolicy,
}

/// Where a secret comes from; read only when needed ([`SecretSource::load`]), never logged.
///
/// `Debug` shows where a secret is read from, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file (one trailing newline trimmed), named by an explicit key such as
    /// `tenant.credential.secretFile`.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// No explicit file: `$CREDENTIALS_DIRECTORY/<credential>` (systemd `LoadCredential=`)
    /// when that file exists, else the environment variable `env`.
    CredentialOrEnv {
        /// Name of the systemd credential, e.g. `graph-secret`.
        credential: String,
        /// Environment variable read when the credential does not exist.
        env: String,
        /// The config key that would name a file instead, e.g. `tenant.credential.secretFile`
        /// (used in error messages).
        file_key: String,
    },
}

/// The Microsoft cloud the tenant lives in (`tenant.cloud`); selects the default token
/// authority and Graph root (`docs/specs/microsoft-graph.md` §8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Cloud {
    /// Global Azure (also M365 GCC).
    #[default]
    Global,
    /// US Government L4 (GCC High).
    UsGov,
    /// US Government L5 (DoD).
    UsGovDod,
    /// Azure China (21Vianet).
    China,
}

impl Cloud {
    /// Every cloud.
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::UsGov, Cloud::UsGovDod, Cloud::China];

    /// The name used in the config file: `global`, `usgov`, `usgov-dod`, `china`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::UsGov => "usgov",
            Cloud::UsGovDod => "usgov-dod",
            Cloud::China => "china",
        }
    }

    /// Parses a config-file name of a cloud.
    pub fn from_name(name: &str) -> Option<Cloud> {
        Cloud::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The token authority of this cloud, e.g. `https://login.microsoftonline.com`.
    pub fn authority_host(self) -> Url {
        let text = match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::UsGov | Cloud::UsGovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        };
        // A constant that parses.
        Url::parse(text).expect("constant authority URL")
    }

    /// The Graph root of this cloud, e.g. `https://graph.microsoft.com`.
    pub fn graph_endpoint(self) -> Url {
        let text = match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::UsGov => "https://graph.microsoft.us",
            Cloud::UsGovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        };
        // A constant that parses.
        Url::parse(text).expect("constant Graph URL")
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `tenant.credential.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CredentialKind {
    /// `clientSecret` (the default).
    #[default]
    ClientSecret,
    /// `clientCertificate`.
    ClientCertificate,
    /// `workloadIdentity`.
    WorkloadIdentity,
    /// `githubActions`.
    GithubActions,
    /// `managedIdentity`.
    ManagedIdentity,
}

impl CredentialKind {
    /// Every kind, in the order of `docs/config.md`.
    pub const ALL: [CredentialKind; 5] = [
        CredentialKind::ClientSecret,
        CredentialKind::ClientCertificate,
        CredentialKind::WorkloadIdentity,
        CredentialKind::GithubActions,
        CredentialKind::ManagedIdentity,
    ];

    /// The config name, e.g. `clientCertificate`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ClientSecret => "clientSecret",
            CredentialKind::ClientCertificate => "clientCertificate",
            CredentialKind::WorkloadIdentity => "workloadIdentity",
            CredentialKind::GithubActions => "githubActions",
            CredentialKind::ManagedIdentity => "managedIdentity",
        }
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<Self> {
        CredentialKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// `tenant.credential.*` beyond the client secret: what each kind needs from the
/// configuration. Files and platform variables are read by [`Config::load_credential`].
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialConfig {
    /// A client secret ([`TenantConfig::client_secret`]).
    ClientSecret,
    /// A certificate.
    ClientCertificate {
        /// `tenant.credential.certificateFile`; `None`: the systemd credential
        /// `graph-certificate`.
        certificate_file: Option<PathBuf>,
        /// The PKCS#12 password: `tenant.credential.passwordFile`, else the systemd credential
        /// `graph-certificate-password`, else `GUESTOPS_TENANT_CERTIFICATE_PASSWORD`; none at
        /// all is fine for PEM and unencrypted PKCS#12.
        password: SecretSource,
        /// `tenant.credential.sendCertificateChain` (default `false`).
        send_chain: bool,
        /// `tenant.credential.assertionAlgorithm` (default PS256).
        algorithm: crate::remote::graph::credential::AssertionAlgorithm,
    },
    /// A federated token in a file (AKS workload identity).
    WorkloadIdentity {
        /// `tenant.credential.tokenFile`; `None`: `$AZURE_FEDERATED_TOKEN_FILE`.
        token_file: Option<PathBuf>,
    },
    /// A federated token from GitHub Actions' OIDC provider.
    GithubActions {
        /// `tenant.credential.audience` (default `api://AzureADTokenExchange`).
        audience: String,
    },
    /// The Azure host's managed identity.
    ManagedIdentity {
        /// `tenant.credential.clientId`: a user-assigned identity; `None`: system-assigned.
        client_id: Option<String>,
    },
}

impl CredentialConfig {
    /// The kind.
    pub fn kind(&self) -> CredentialKind {
        match self {
            CredentialConfig::ClientSecret => CredentialKind::ClientSecret,
            CredentialConfig::ClientCertificate { .. } => CredentialKind::ClientCertificate,
            CredentialConfig::WorkloadIdentity { .. } => CredentialKind::WorkloadIdentity,
            CredentialConfig::GithubActions { .. } => CredentialKind::GithubActions,
            CredentialConfig::ManagedIdentity { .. } => CredentialKind::ManagedIdentity,
        }
    }
}

/// `tenant.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// Tenant GUID or domain.
    pub tenant_id: String,
    /// Application (client) id of the app registration (empty for a managed identity, which
    /// names itself).
    pub client_id: String,
    /// How guestops signs in (`tenant.credential.kind` and the keys of that kind).
    pub credential: CredentialConfig,
    /// Where the client secret comes from (`tenant.credential.secretFile`, the systemd
    /// credential `graph-secret` or `GUESTOPS_TENANT_CLIENT_SECRET`); read only with
    /// [`CredentialConfig::ClientSecret`].
    pub client_secret: SecretSource,
    /// The Microsoft cloud (selects the defaults of `authority_host` and `graph_endpoint`).
    pub cloud: Cloud,
    /// Token authority, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// Graph root, e.g. `https://graph.microsoft.com`.
    pub graph_endpoint: Url,
    /// Where an invited guest lands after redeeming.
    pub invite_redirect_url: String,
    /// Graph requests in flight at most.
    pub concurrency: usize,
    /// Read the tenant through `/users/delta` and the directory cache in the state directory
    /// (`tenant.deltaQuery`, default `true`); `false`: the guest listing every reconcile (for
    /// Azure AD B2C and External ID tenants, which have no delta query).
    pub delta_query: bool,
    /// Enumerate the whole tenant again after this long even when the delta link still works
    /// (`tenant.fullResyncInterval`, default 24 hours).
    pub full_resync_interval: Duration,
    /// How long an invitation whose outcome is unknown (a write-ahead intent without an
    /// outcome, or an ambiguous failure) is resolved by observation before it is sent once
    /// more (`tenant.replicationGrace`, default
    /// [`crate::reconcile::plan::DEFAULT_REPLICATION_GRACE`]).
    pub replication_grace: Duration,
}

impl TenantConfig {
    /// The settings of the Graph client (`remote` does not read the configuration).
    pub fn graph_settings(&self) -> crate::remote::graph::GraphSettings {
        crate::remote::graph::GraphSettings {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            authority_host: self.authority_host.clone(),
            graph_endpoint: self.graph_endpoint.clone(),
            resource: self.cloud.graph_endpoint(),
            invite_redirect_url: self.invite_redirect_url.clone(),
            concurrency: self.concurrency,
            // Graph's documented write quota, not a key: see `remote::pace::WriteRate::GRAPH`.
            write_rate: crate::remote::pace::WriteRate::GRAPH,
        }
    }

    /// The OAuth scope of the client-credentials grant: the Graph resource of `cloud` +
    /// `/.default` (`https://graph.microsoft.com/.default`), whatever `graphEndpoint` says.
    pub fn scope(&self) -> String {
        format!(
            "{}/.default",
            self.cloud.graph_endpoint().as_str().trim_end_matches('/')
        )
    }
}

/// `portal.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalConfig {
    /// API root, e.g. `https://api.powerembedded.com.br`.
    pub base_url: Url,
    /// Where the `X-API-Key` comes from.
    pub api_key: SecretSource,
    /// Portal requests in flight at most.
    pub concurrency: usize,
    /// Portal writes per second at most, on average (`portal.maxWritesPerSecond`, more than 0).
    pub max_writes_per_second: f64,
    /// Role names ↔ portal codes.
    pub role_codes: RoleCodes,
    /// An administrator the portal is known to list (`portal.knownAdmin`, lower case): `guestops
    /// doctor` and `guestops probe portal` check that the portal reports them with
    /// `roleCodes.administrator` before trusting the role mapping (`docs/specs/power-embedded.md`
    /// §1.6). `None`: the check is skipped with a warning.
    pub known_admin: Option<String>,
    /// The values of the write-only flags (`portal.writeOnlyFlags.*`), sent on every create
    /// and update; a flag left unset is never sent (and a plan with updates says so).
    pub write_only_flags: crate::remote::portal::WriteOnlyFlags,
}

impl PortalConfig {
    /// The settings of the portal client (`remote` does not read the configuration).
    pub fn portal_settings(&self) -> crate::remote::portal::PortalSettings {
        crate::remote::portal::PortalSettings {
            base_url: self.base_url.clone(),
            concurrency: self.concurrency,
            // One write at a time (burst 1). A rate that is not above 0 cannot be loaded; one
            // set in code falls back to the default.
            write_rate: crate::remote::pace::WriteRate::per_second(self.max_writes_per_second, 1)
                .unwrap_or(build::DEFAULT_PORTAL_WRITE_RATE),
            role_codes: self.role_codes,
            write_only_flags: self.write_only_flags,
        }
    }
}

/// `policy.*`.
#[derive(Debug, Clone, PartialEq)]
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
    /// An invitation not accepted after this long is notified (`pending`) and counted
    /// (`policy.pendingAlertAfter`, default 14 days); `None` = never.
    pub pending_alert_after: Option<Duration>,
    /// Access ending within this long is a plan notice `expiring`, a `status` column, the
    /// gauge `guestops_access_expiring` and a notification (`policy.expiryNoticeBefore`,
    /// default 7 days); `None` = never.
    pub expiry_notice_before: Option<Duration>,
}

/// `state.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// Directory of `state.json`, `audit.jsonl` and the lock.
    pub dir: PathBuf,
}

/// `server.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics`, `/hooks/github`.
    pub listen: SocketAddr,
    /// HMAC secret of the GitHub webhook. A loaded config always has a source (the explicit
    /// `server.webhookSecretFile`, else the `webhook-secret` credential or
    /// `GUESTOPS_SERVER_WEBHOOK_SECRET`); when none of them provides a value the webhook is off
    /// (see [`Secrets::webhook_secret`]). `None`: no webhook at all.
    pub webhook_secret: Option<SecretSource>,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, e.g. `tenant.clientId` (`(file)` for the document as a whole).
    pub key: String,
    /// 1-based line in the config file, when the value came from the file.
    pub line: Option<u64>,
    /// 1-based column in the config file, when known.
    pub column: Option<u64>,
    /// The environment variable the value came from, when it was an override.
    pub env_var: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.env_var, self.line, self.column) {
            (Some(var), _, _) => write!(f, "{var} (overrides {}): {}", self.key, self.message),
            (None, Some(line), Some(column)) => {
                write!(
                    f,
                    "line {line}, column {column}: {}: {}",
                    self.key, self.message
                )
            }
            (None, Some(line), None) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (None, None, _) => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Why the configuration or a secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error(
        "cannot read the host configuration {path}: {error}; check the path given with --config (default {DEFAULT_CONFIG_PATH}) and that guestops may read it"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error, shown in the message (before the hint), so not also a `source()`.
        error: std::io::Error,
    },
    /// The config file is larger than [`MAX_CONFIG_SIZE`].
    #[error(
        "the host configuration {path} is {size} bytes or more, over the limit of {MAX_CONFIG_SIZE}; is --config pointing at the right file?"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The configuration has problems; all of them are listed.
    #[error("{}", invalid_message(origin, problems))]
    Invalid {
        /// The file (or other origin) that was loaded.
        origin: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// A secret file exists in config but cannot be read.
    #[error(
        "cannot read the secret file {path} ({key}): {source}; check that it exists and is readable by the guestops user (or, under systemd, use LoadCredential=)"
    )]
    SecretUnreadable {
        /// What the secret is for: the key that names it or the credential name.
        key: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A secret file is not UTF-8 text, or is implausibly large.
    #[error(
        "the secret file {path} ({key}) is not a text secret ({reason}); write the secret alone, as UTF-8 text, on one line"
    )]
    SecretMalformed {
        /// What the secret is for.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A secret was found but is empty.
    #[error("the secret {place} ({key}) is empty; write the secret value there")]
    SecretEmpty {
        /// What the secret is for.
        key: String,
        /// Where it was read: `file /x` or `environment variable X`.
        place: String,
    },
    /// The environment variable that should hold a secret is not set.
    #[error(
        "the environment variable {env} that holds a secret is not set; set it in the service's environment (not on the command line)"
    )]
    SecretEnvUnset {
        /// The variable.
        env: String,
    },
    /// No source provides a required secret.
    #[error(
        "no {what} was provided: set {file_key} to a file holding it, or provide the systemd credential `{credential}` ($CREDENTIALS_DIRECTORY/{credential}, LoadCredential=), or set the environment variable {env}"
    )]
    SecretMissing {
        /// Human name of the secret, e.g. `Graph client secret`.
        what: String,
        /// The config key naming a file.
        file_key: String,
        /// The systemd credential name.
        credential: String,
        /// The environment variable.
        env: String,
    },
    /// The configured sign-in kind lacks something it needs at run time (a file, a variable
    /// the platform sets).
    #[error("tenant.credential.kind is {kind}, but {message}")]
    CredentialUnavailable {
        /// The kind, e.g. `githubActions`.
        kind: &'static str,
        /// What is missing and how to provide it.
        message: String,
    },
}

fn invalid_message(origin: &str, problems: &[Problem]) -> String {
    let mut text = format!(
        "the host configuration {origin} has {} problem{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        text.push_str("\n  - ");
        text.push_str(&problem.to_string());
    }
    text
}

impl Config {
    /// Reads and validates the config file at `path`, with overrides from the process
    /// environment. Secrets are not read (see [`Config::load_secrets`]).
    ///
    /// A relative path written in the file (`state.dir`, the secret files,
    /// `source.credentialFile`, a local `source.repo`) is resolved against the folder of the
    /// file; a relative path from a `GUESTOPS_*` variable against the working directory. The
    /// loaded paths are absolute.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        Config::load_with_env(path, &env)
    }

    /// [`Config::load`] with the `GUESTOPS_*` overrides looked up through `env`.
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = read_limited(path)?;
        let read_error = |error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        };
        let working_dir = std::env::current_dir().map_err(read_error)?;
        let file = working_dir.join(path);
        let config_dir = file
            .parent()
            .map_or_else(|| working_dir.clone(), Path::to_path_buf);
        let base = build::PathBase {
            config_dir,
            working_dir,
        };
        Config::parse(&text, &path.display().to_string(), Some(&base), env)
    }

    /// Parses and validates config `text`; `origin` names it in errors (usually the path),
    /// `env` looks up the `GUESTOPS_*` overrides (injected so tests need no process environment).
    /// There is no file to resolve relative paths against: they are kept as written (see
    /// [`Config::load`]).
    pub fn from_yaml_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse(text, origin, None, env)
    }

    fn parse(
        text: &str,
        origin: &str,
        base: Option<&build::PathBase>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let config = tree::flatten(text, &mut problems).and_then(|mut values| {
            build::apply_env_overrides(&mut values, env);
            build::apply_workload_identity_defaults(&mut values, env);
            build::build(&values, base, &mut problems)
        });
        // File order; problems without a line (overrides, missing keys) last.
        problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            }),
        }
    }

    /// The plan's policy from `policy.*` (and `portal.writeOnlyFlags`, for the plan's note;
    /// the probe's facts are not read here); `force` overrides the `maxDeletions` and
    /// empty-desired guards.
    pub fn policy(&self, force: bool) -> crate::reconcile::plan::Policy {
        crate::reconcile::plan::Policy {
            allowed_domains: self.policy.allowed_domains.clone(),
            prune: self.policy.prune,
            guest_on_removal: self.policy.guest_on_removal,
            max_deletions: self.policy.max_deletions,
            resend_after: self.policy.resend_after,
            expiry_notice_before: self.policy.expiry_notice_before,
            force,
            replication_grace: self.tenant.replication_grace,
            hidden_fields: crate::reconcile::plan::HiddenFields {
                unstated_flags: (self.portal.write_only_flags.unstated().into_iter())
                    .map(str::to_owned)
                    .collect(),
                probed_put: None,
            },
            only: None,
        }
    }

    /// The part of the policy that validation of `users.yaml` also enforces.
    // `..Default::default()` keeps this compiling when validation learns more policy.
    #[allow(clippy::needless_update)]
    pub fn spec_policy(&self) -> crate::desired::spec::SpecPolicy {
        crate::desired::spec::SpecPolicy {
            allowed_domains: self.policy.allowed_domains.clone(),
            ..Default::default()
        }
    }

    /// A configuration for the built-in simulator at `base` (token authority, Graph and portal
    /// all served there), with state in `state_dir`. Tenant `sim.onmicrosoft.com`, client id
    /// `00000000-0000-0000-0000-00000000c11e`, secrets from the environment variables
    /// `GUESTOPS_TENANT_CLIENT_SECRET` and `GUESTOPS_PORTAL_API_KEY`; every other key at its
    /// default; no git source and no webhook.
    pub fn for_simulator(base: &Url, state_dir: &Path) -> Config {
        let mut config = build::defaults();
        config.tenant.tenant_id = SIM_TENANT_ID.to_owned();
        config.tenant.client_id = SIM_CLIENT_ID.to_owned();
        config.tenant.client_secret = SecretSource::Env(secret::GRAPH_SECRET.env.to_owned());
        config.tenant.authority_host = base.clone();
        config.tenant.graph_endpoint = base.clone();
        config.portal.base_url = base.clone();
        config.portal.api_key = SecretSource::Env(secret::PORTAL_API_KEY.env.to_owned());
        config.state.dir = state_dir.to_path_buf();
        config.server.webhook_secret = None;
        config
    }

    /// Renders this configuration as a config file that loads back to it. Secret values are
    /// never included: secrets read from files appear as their file keys, the others as a
    /// comment saying where they are read from.
    pub fn to_yaml(&self) -> String {
        render::to_yaml(self)
    }

    /// Reads the Graph client secret, the portal API key and the webhook secret from the
    /// process environment and files (design §5 order: explicit file key, systemd credential,
    /// environment variable).
    pub fn load_secrets(&self) -> Result<Secrets, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        self.load_secrets_with_env(&env)
    }

    /// [`Config::load_secrets`] with an injected environment (`CREDENTIALS_DIRECTORY` and the
    /// secret variables are looked up through `env`).
    pub fn load_secrets_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Secrets, ConfigError> {
        Ok(Secrets {
            graph_credential: self.load_credential_with_env(env)?,
            portal_api_key: self
                .portal
                .api_key
                .load_required(env, secret::PORTAL_API_KEY.file_key)?,
            webhook_secret: match &self.server.webhook_secret {
                Some(source) => source
                    .load_labelled(env, secret::WEBHOOK_SECRET.file_key)?
                    .map(|loaded| loaded.value().clone()),
                None => None,
            },
        })
    }
}

/// Tenant id of [`Config::for_simulator`].
pub const SIM_TENANT_ID: &str = "sim.onmicrosoft.com";
/// Client id of [`Config::for_simulator`].
pub const SIM_CLIENT_ID: &str = "00000000-0000-0000-0000-00000000c11e";

/// Every key that a `GUESTOPS_*` variable overrides, as `(key, variable)`, in file order,
/// e.g. `("tenant.clientId", "GUESTOPS_TENANT_CLIENT_ID")`.
pub fn override_variables() -> Vec<(String, String)> {
    tree::leaf_keys()
        .into_iter()
        .map(|(key, _)| {
            let var = tree::env_var_name(&key);
            (key, var)
        })
        .collect()
}

/// The `GUESTOPS_*` names among `names` that guestops does not know (neither a key override
/// nor a secret variable), e.g. a mistyped `GUESTOPS_TENANT_CLIENTID`. The command line can
/// warn about them; names it uses itself (such as a variable for `--config`) should be
/// filtered by the caller.
pub fn unrecognized_variables<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let known = override_variables();
    let secrets = [
        secret::GRAPH_SECRET.env,
        secret::CERTIFICATE_PASSWORD.env,
        secret::PORTAL_API_KEY.env,
        secret::WEBHOOK_SECRET.env,
    ];
    names
        .into_iter()
        .filter(|name| name.starts_with("GUESTOPS_"))
        .filter(|name| !secrets.contains(name) && !known.iter().any(|(_, var)| var == name))
        .map(str::to_owned)
        .collect()
}

fn read_limited(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;

    let read_error = |error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            size: std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len()),
        });
    }
    String::from_utf8(bytes).map_err(|e| ConfigError::Invalid {
        origin: path.display().to_string(),
        problems: vec![Problem {
            key: "(file)".to_owned(),
            line: None,
            column: None,
            env_var: None,
            message: format!(
                "is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        }],
    })
}
