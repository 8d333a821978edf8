//! Stage two of loading: environment overrides, then every key interpreted and validated.
//!
//! Each key is parsed on its own so that every problem is reported; cross-key checks
//! (distinct role codes, required keys) follow. A [`Config`] is produced only when every key
//! could be interpreted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use url::{Host, Url};

use super::secret::{CERTIFICATE_PASSWORD, GRAPH_SECRET, PORTAL_API_KEY, WEBHOOK_SECRET};
use super::tree::{At, Kind, Leaf, Raw, env_var_name, leaf_keys};
use super::{
    Cloud, Config, CredentialConfig, CredentialKind, NotifyConfig, PolicyConfig, PortalConfig,
    Problem, SecretSource, ServerConfig, SourceConfig, StateConfig, TenantConfig,
};
use crate::desired::source::{VerifyMode, VerifyPolicy};
use crate::desired::spec::Role;
use crate::reconcile::plan::GuestOnRemoval;
use crate::remote::graph::credential::{AssertionAlgorithm, DEFAULT_FEDERATION_AUDIENCE};
use crate::remote::pace::WriteRate;
use crate::remote::portal::{RoleCodes, WriteOnlyFlags};
use crate::service::notify::{EventKind, NotifierKind};

/// Default of `portal.baseUrl`.
pub(crate) const DEFAULT_PORTAL_BASE_URL: &str = "https://api.powerembedded.com.br";
/// Default of `tenant.inviteRedirectUrl`: the Administration Portal.
pub(crate) const DEFAULT_INVITE_REDIRECT_URL: &str = "https://admin.powerembedded.com.br";
/// Default of `server.listen`.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Default of `state.dir`.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/guestops";
/// Upper bound of `tenant.concurrency` and `portal.concurrency`.
pub(crate) const MAX_CONCURRENCY: usize = 256;
/// Default of `portal.maxWritesPerSecond`: design §5's value. The portal documents no limit
/// (`docs/specs/power-embedded.md` §1.8: run requests one at a time, back off on 429), so
/// writes go one at a time, half a second apart.
pub(crate) const DEFAULT_PORTAL_MAX_WRITES_PER_SECOND: f64 = 2.0;
/// [`DEFAULT_PORTAL_MAX_WRITES_PER_SECOND`] as a rate: one write every 500 ms, one at a time.
pub(crate) const DEFAULT_PORTAL_WRITE_RATE: WriteRate =
    WriteRate::every(Duration::from_millis(500), 1);
/// Default of `policy.pendingAlertAfter`: two weeks, twice `policy.resendAfter`'s default, so
/// that the alert says that even the re-sent invitation was not accepted.
pub(crate) const DEFAULT_PENDING_ALERT_AFTER: Duration = Duration::from_secs(14 * 86_400);
/// Default of `policy.expiryNoticeBefore`: a week, time enough to extend `expires` by a pull
/// request.
pub(crate) const DEFAULT_EXPIRY_NOTICE_BEFORE: Duration =
    crate::reconcile::plan::DEFAULT_EXPIRY_NOTICE_BEFORE;
/// Most entries of `notify`.
pub(crate) const MAX_NOTIFIERS: usize = 16;
/// Upper bound of `portal.maxWritesPerSecond`.
pub(crate) const MAX_PORTAL_WRITES_PER_SECOND: f64 = 1000.0;

/// Replaces values by their `GUESTOPS_*` override. An empty variable resets the key to its
/// default.
pub(crate) fn apply_env_overrides(
    values: &mut BTreeMap<String, Leaf>,
    env: &dyn Fn(&str) -> Option<String>,
) {
    for (key, kind) in leaf_keys() {
        let var = env_var_name(&key);
        let Some(text) = env(&var) else { continue };
        if text.trim().is_empty() {
            values.remove(&key);
            continue;
        }
        let at = At::Env(var);
        let raw = match kind {
            Kind::List => Raw::List(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| (s.to_owned(), at.clone()))
                    .collect(),
            ),
            _ => Raw::Text(text),
        };
        values.insert(key, Leaf { raw, at });
    }
}

/// The configuration with every default and no tenant (`tenant_id`/`client_id` empty).
pub(crate) fn defaults() -> Config {
    let cloud = Cloud::Global;
    Config {
        source: SourceConfig {
            repo: None,
            branch: "main".to_owned(),
            path: "users.yaml".to_owned(),
            poll_interval: Duration::from_secs(5 * 60),
            resync_interval: Duration::from_secs(10 * 60),
            credential_file: None,
            verify: VerifyPolicy::default(),
        },
        tenant: TenantConfig {
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: GRAPH_SECRET.source(),
            credential: CredentialConfig::ClientSecret,
            cloud,
            authority_host: cloud.authority_host(),
            graph_endpoint: cloud.graph_endpoint(),
            invite_redirect_url: DEFAULT_INVITE_REDIRECT_URL.to_owned(),
            concurrency: 8,
            delta_query: true,
            full_resync_interval: Duration::from_secs(24 * 3600),
            replication_grace: crate::reconcile::plan::DEFAULT_REPLICATION_GRACE,
        },
        portal: PortalConfig {
            // A constant that parses.
            base_url: Url::parse(DEFAULT_PORTAL_BASE_URL).expect("constant portal URL"),
            api_key: PORTAL_API_KEY.source(),
            concurrency: 2,
            max_writes_per_second: DEFAULT_PORTAL_MAX_WRITES_PER_SECOND,
            role_codes: RoleCodes::default(),
            known_admin: None,
            write_only_flags: WriteOnlyFlags::default(),
        },
        policy: PolicyConfig {
            allowed_domains: Vec::new(),
            prune: false,
            guest_on_removal: GuestOnRemoval::Keep,
            max_deletions: 5,
            resend_after: Some(Duration::from_secs(7 * 24 * 3600)),
            pending_alert_after: Some(DEFAULT_PENDING_ALERT_AFTER),
            expiry_notice_before: Some(DEFAULT_EXPIRY_NOTICE_BEFORE),
        },
        state: StateConfig {
            dir: PathBuf::from(DEFAULT_STATE_DIR),
        },
        server: ServerConfig {
            // A constant that parses.
            listen: DEFAULT_LISTEN.parse().expect("constant listen address"),
            webhook_secret: Some(WEBHOOK_SECRET.source()),
        },
        notify: Vec::new(),
    }
}

/// What relative paths of a loaded configuration resolve against.
#[derive(Debug, Clone)]
pub(crate) struct PathBase {
    /// The folder of the config file: relative paths written in the file.
    pub config_dir: PathBuf,
    /// The working directory: relative paths from `GUESTOPS_*` variables.
    pub working_dir: PathBuf,
}

impl PathBase {
    /// `path` made absolute against the base of where it came from (`at`).
    fn resolve(&self, path: PathBuf, at: &At) -> PathBuf {
        if path.is_absolute() {
            return path;
        }
        let base = match at {
            At::File { .. } => &self.config_dir,
            At::Env(_) => &self.working_dir,
        };
        let joined = base.join(&path);
        // `absolute` drops `.` components and, on a relative base, adds the working directory.
        std::path::absolute(&joined).unwrap_or(joined)
    }
}

/// Whether `repo` (a valid `source.repo`) names a local path rather than a URL or an scp-like
/// address (`git@host:path`, `host:path`): git's rule, a `:` before any `/` means scp-like.
fn is_local_repo_path(repo: &str) -> bool {
    if repo.contains("://") {
        return false;
    }
    match repo.find(':') {
        None => true,
        Some(colon) => repo[..colon].contains('/'),
    }
}

/// Reads typed values out of the flat map, recording problems.
struct Reader<'a> {
    values: &'a BTreeMap<String, Leaf>,
    problems: &'a mut Vec<Problem>,
    failed: bool,
    /// `None`: relative paths are kept as written.
    base: Option<&'a PathBase>,
}

impl Reader<'_> {
    /// The scalar at `key`, parsed; `None` when absent or invalid (a problem is recorded).
    fn get<T>(&mut self, key: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let leaf = self.values.get(key)?;
        match &leaf.raw {
            Raw::Text(text) => match parse(text.trim()) {
                Ok(value) => Some(value),
                Err(message) => {
                    self.problems.push(leaf.at.problem(key, message));
                    self.failed = true;
                    None
                }
            },
            Raw::List(_) => {
                self.problems
                    .push(leaf.at.problem(key, "expected a single value, not a list"));
                self.failed = true;
                None
            }
        }
    }

    /// Like [`Reader::get`], writing into `slot` when present and valid.
    fn set<T>(&mut self, slot: &mut T, key: &str, parse: impl FnOnce(&str) -> Result<T, String>) {
        if let Some(value) = self.get(key, parse) {
            *slot = value;
        }
    }

    /// The file path at `key`, resolved against [`PathBase`] when there is one.
    fn path(&mut self, key: &str) -> Option<PathBuf> {
        let path = self.get(key, parse_file)?;
        Some(self.resolve(key, path))
    }

    /// `path`, read from `key`, resolved against [`PathBase`] when there is one.
    fn resolve(&self, key: &str, path: PathBuf) -> PathBuf {
        match (self.base, self.at(key)) {
            (Some(base), Some(at)) => base.resolve(path, at),
            _ => path,
        }
    }

    fn at(&self, key: &str) -> Option<&At> {
        self.values.get(key).map(|leaf| &leaf.at)
    }

    fn problem(&mut self, at: Option<&At>, key: &str, message: impl Into<String>) {
        let at = at.cloned().unwrap_or(At::File { line: 0, column: 0 });
        self.problems.push(at.problem(key, message));
        self.failed = true;
    }
}

/// The keys of `tenant.credential` that only one kind reads, with that kind.
const KIND_KEYS: &[(&str, CredentialKind)] = &[
    ("secretFile", CredentialKind::ClientSecret),
    ("certificateFile", CredentialKind::ClientCertificate),
    ("passwordFile", CredentialKind::ClientCertificate),
    ("sendCertificateChain", CredentialKind::ClientCertificate),
    ("assertionAlgorithm", CredentialKind::ClientCertificate),
    ("tokenFile", CredentialKind::WorkloadIdentity),
    ("audience", CredentialKind::GithubActions),
    ("clientId", CredentialKind::ManagedIdentity),
];

/// `tenant.credential.*`: the kind, and the keys of that kind (a key of another kind is a
/// problem: it would be ignored, which hides a mistake).
fn read_credential(r: &mut Reader<'_>, t: &mut TenantConfig) {
    let kind = r
        .get("tenant.credential.kind", |text| {
            CredentialKind::from_name(text).ok_or_else(|| {
                format!(
                    "unknown credential kind `{text}`; expected one of {}",
                    CredentialKind::ALL.map(CredentialKind::as_str).join(", ")
                )
            })
        })
        .unwrap_or_default();
    for (key, owner) in KIND_KEYS {
        let full = format!("tenant.credential.{key}");
        if *owner != kind && r.at(&full).is_some() {
            let at = r.at(&full).cloned();
            r.problem(
                at.as_ref(),
                &full,
                format!(
                    "is read only with kind {}, but tenant.credential.kind is {}; remove it or change the kind",
                    owner.as_str(),
                    kind.as_str()
                ),
            );
        }
    }
    if let Some(path) = r.path("tenant.credential.secretFile") {
        t.client_secret = SecretSource::File(path);
    }
    t.credential = match kind {
        CredentialKind::ClientSecret => CredentialConfig::ClientSecret,
        CredentialKind::ClientCertificate => {
            let mut algorithm = AssertionAlgorithm::default();
            r.set(
                &mut algorithm,
                "tenant.credential.assertionAlgorithm",
                |text| {
                    AssertionAlgorithm::from_name(text).ok_or_else(|| {
                        format!("unknown algorithm `{text}`; expected PS256 (the default) or RS256")
                    })
                },
            );
            let mut send_chain = false;
            r.set(
                &mut send_chain,
                "tenant.credential.sendCertificateChain",
                parse_bool,
            );
            CredentialConfig::ClientCertificate {
                certificate_file: r.path("tenant.credential.certificateFile"),
                password: match r.path("tenant.credential.passwordFile") {
                    Some(path) => SecretSource::File(path),
                    None => CERTIFICATE_PASSWORD.source(),
                },
                send_chain,
                algorithm,
            }
        }
        CredentialKind::WorkloadIdentity => CredentialConfig::WorkloadIdentity {
            token_file: r.path("tenant.credential.tokenFile"),
        },
        CredentialKind::GithubActions => CredentialConfig::GithubActions {
            audience: r
                .get("tenant.credential.audience", |text| {
                    if text.is_empty() || text.chars().any(char::is_whitespace) {
                        Err(
                            "must be one audience, without spaces, e.g. api://AzureADTokenExchange"
                                .to_owned(),
                        )
                    } else {
                        Ok(text.to_owned())
                    }
                })
                .unwrap_or_else(|| DEFAULT_FEDERATION_AUDIENCE.to_owned()),
        },
        CredentialKind::ManagedIdentity => CredentialConfig::ManagedIdentity {
            client_id: r.get("tenant.credential.clientId", parse_guid),
        },
    };
}

/// For `workloadIdentity`, what the AKS webhook injects stands in for keys the file leaves
/// unset: `tenant.clientId` ← `$AZURE_CLIENT_ID`, `tenant.tenantId` ← `$AZURE_TENANT_ID`
/// (after the `GUESTOPS_*` overrides, which win).
pub(crate) fn apply_workload_identity_defaults(
    values: &mut BTreeMap<String, Leaf>,
    env: &dyn Fn(&str) -> Option<String>,
) {
    let workload = values
        .get("tenant.credential.kind")
        .is_some_and(|leaf| matches!(&leaf.raw, Raw::Text(t) if t.trim() == "workloadIdentity"));
    if !workload {
        return;
    }
    for (key, var) in [
        ("tenant.clientId", "AZURE_CLIENT_ID"),
        ("tenant.tenantId", "AZURE_TENANT_ID"),
    ] {
        if values.contains_key(key) {
            continue;
        }
        if let Some(text) = env(var).filter(|t| !t.trim().is_empty()) {
            values.insert(
                key.to_owned(),
                Leaf {
                    raw: Raw::Text(text),
                    at: At::Env(var.to_owned()),
                },
            );
        }
    }
}

/// Interprets every key; `None` when any key is invalid (problems say why). Relative paths
/// are resolved against `base` when given (see [`PathBase`]), else kept as written.
pub(crate) fn build(
    values: &BTreeMap<String, Leaf>,
    base: Option<&PathBase>,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let mut config = defaults();
    let mut r = Reader {
        values,
        problems,
        failed: false,
        base,
    };

    // source.*
    let s = &mut config.source;
    s.repo = r.get("source.repo", parse_repo).map(|repo| {
        if is_local_repo_path(&repo) {
            let path = r.resolve("source.repo", PathBuf::from(&repo));
            path.to_string_lossy().into_owned()
        } else {
            repo
        }
    });
    r.set(&mut s.branch, "source.branch", parse_branch);
    r.set(&mut s.path, "source.path", parse_repo_path);
    r.set(&mut s.poll_interval, "source.pollInterval", parse_interval);
    r.set(
        &mut s.resync_interval,
        "source.resyncInterval",
        parse_interval,
    );
    s.credential_file = r.path("source.credentialFile");
    r.set(
        &mut s.verify.mode,
        "source.verify.mode",
        |text| match text {
            "none" => Ok(VerifyMode::None),
            "head" => Ok(VerifyMode::Head),
            other => Err(format!("unknown value `{other}`; expected none or head")),
        },
    );
    s.verify.allowed_signers_file = r.path("source.verify.allowedSignersFile");
    s.verify.keyring_file = r.path("source.verify.keyringFile");
    if s.verify.mode == VerifyMode::Head
        && s.verify.allowed_signers_file.is_none()
        && s.verify.keyring_file.is_none()
    {
        let at = r.at("source.verify.mode").cloned();
        r.problem(
            at.as_ref(),
            "source.verify.mode",
            "is head, so set source.verify.allowedSignersFile (SSH signatures) or \
             source.verify.keyringFile (OpenPGP signatures), or both",
        );
    }

    // tenant.*
    let t = &mut config.tenant;
    match r.get("tenant.tenantId", parse_tenant_id) {
        Some(id) => t.tenant_id = id,
        None if r.at("tenant.tenantId").is_none() => r.problem(
            None,
            "tenant.tenantId",
            "is required: the tenant's GUID or domain, e.g. contoso.onmicrosoft.com",
        ),
        None => {}
    }
    let managed_identity = values
        .get("tenant.credential.kind")
        .is_some_and(|leaf| matches!(&leaf.raw, Raw::Text(t) if t.trim() == "managedIdentity"));
    match r.get("tenant.clientId", parse_guid) {
        Some(id) => t.client_id = id,
        // A managed identity names itself (`tenant.credential.clientId` for a user-assigned one).
        None if managed_identity => {}
        None if r.at("tenant.clientId").is_none() => r.problem(
            None,
            "tenant.clientId",
            "is required: the application (client) id of the app registration, a GUID",
        ),
        None => {}
    }
    read_credential(&mut r, t);
    r.set(&mut t.cloud, "tenant.cloud", |text| {
        Cloud::from_name(text).ok_or_else(|| {
            format!("unknown cloud `{text}`; expected one of global, usgov, usgov-dod, china")
        })
    });
    t.authority_host = t.cloud.authority_host();
    t.graph_endpoint = t.cloud.graph_endpoint();
    r.set(
        &mut t.authority_host,
        "tenant.authorityHost",
        parse_endpoint,
    );
    r.set(
        &mut t.graph_endpoint,
        "tenant.graphEndpoint",
        parse_endpoint,
    );
    r.set(
        &mut t.invite_redirect_url,
        "tenant.inviteRedirectUrl",
        parse_redirect_url,
    );
    r.set(&mut t.concurrency, "tenant.concurrency", parse_concurrency);
    r.set(&mut t.delta_query, "tenant.deltaQuery", parse_bool);
    r.set(
        &mut t.full_resync_interval,
        "tenant.fullResyncInterval",
        parse_interval,
    );
    r.set(
        &mut t.replication_grace,
        "tenant.replicationGrace",
        parse_interval,
    );

    // portal.*
    let p = &mut config.portal;
    r.set(&mut p.base_url, "portal.baseUrl", parse_endpoint);
    if let Some(path) = r.path("portal.apiKeyFile") {
        p.api_key = SecretSource::File(path);
    }
    r.set(&mut p.concurrency, "portal.concurrency", parse_concurrency);
    r.set(
        &mut p.max_writes_per_second,
        "portal.maxWritesPerSecond",
        parse_writes_per_second,
    );
    // Unset is "not stated" (never sent), not `false`.
    r.set(
        &mut p.write_only_flags.bypass_firewall,
        "portal.writeOnlyFlags.bypassFirewall",
        |text| parse_bool(text).map(Some),
    );
    r.set(
        &mut p.write_only_flags.can_export_report_other_pages,
        "portal.writeOnlyFlags.canExportReportOtherPages",
        |text| parse_bool(text).map(Some),
    );
    let problems_before_codes = r.problems.len();
    let codes = &mut p.role_codes;
    r.set(
        &mut codes.administrator,
        "portal.roleCodes.administrator",
        parse_code,
    );
    r.set(
        &mut codes.contributor,
        "portal.roleCodes.contributor",
        parse_code,
    );
    r.set(&mut codes.viewer, "portal.roleCodes.viewer", parse_code);
    r.set(
        &mut codes.workspace_contributor,
        "portal.roleCodes.workspace-contributor",
        parse_code,
    );
    let codes = p.role_codes;
    r.set(&mut p.known_admin, "portal.knownAdmin", |text| {
        let address = text.trim();
        email_address::EmailAddress::parse_with_options(address, Default::default())
            .map(|_| Some(address.to_ascii_lowercase()))
            .map_err(|e| format!("`{address}` is not an e-mail address ({e}); name a user the portal lists as an Administrator"))
    });
    // A code that did not parse is already reported; comparing the default in its place
    // would report a duplicate that is not in the file.
    if r.problems.len() == problems_before_codes {
        check_role_codes(&mut r, &codes);
    }

    // policy.*
    let pol = &mut config.policy;
    if let Some(leaf) = values.get("policy.allowedDomains") {
        match &leaf.raw {
            Raw::List(items) => {
                let mut domains = Vec::new();
                for (text, at) in items {
                    match parse_domain(text) {
                        Ok(domain) if !domains.contains(&domain) => domains.push(domain),
                        Ok(_) => {}
                        Err(message) => {
                            r.problem(Some(at), "policy.allowedDomains", message);
                        }
                    }
                }
                pol.allowed_domains = domains;
            }
            Raw::Text(_) => r.problem(
                Some(&leaf.at),
                "policy.allowedDomains",
                "expected a list, e.g. [partner.example, vendor.example]",
            ),
        }
    }
    r.set(&mut pol.prune, "policy.prune", parse_bool);
    r.set(
        &mut pol.guest_on_removal,
        "policy.guestOnRemoval",
        |text| match text {
            "keep" => Ok(GuestOnRemoval::Keep),
            "disable" => Ok(GuestOnRemoval::Disable),
            "delete" => Ok(GuestOnRemoval::Delete),
            other => Err(format!(
                "unknown value `{other}`; expected keep, disable or delete"
            )),
        },
    );
    r.set(&mut pol.max_deletions, "policy.maxDeletions", |text| {
        text.parse::<usize>()
            .map_err(|_| format!("expected a whole number ≥ 0, got `{text}`"))
    });
    r.set(&mut pol.resend_after, "policy.resendAfter", |text| {
        parse_duration(text).map(|d| (!d.is_zero()).then_some(d))
    });
    r.set(
        &mut pol.pending_alert_after,
        "policy.pendingAlertAfter",
        |text| parse_duration(text).map(|d| (!d.is_zero()).then_some(d)),
    );
    r.set(
        &mut pol.expiry_notice_before,
        "policy.expiryNoticeBefore",
        |text| parse_duration(text).map(|d| (!d.is_zero()).then_some(d)),
    );

    // state.*, server.*
    if let Some(dir) = r.path("state.dir") {
        config.state.dir = dir;
    }
    r.set(&mut config.server.listen, "server.listen", |text| {
        text.parse::<SocketAddr>().map_err(|_| {
            format!(
                "`{text}` is not a socket address; write IP:PORT, e.g. 127.0.0.1:9464 or [::1]:9464"
            )
        })
    });
    if let Some(path) = r.path("server.webhookSecretFile") {
        config.server.webhook_secret = Some(SecretSource::File(path));
    }

    config.notify = read_notify(&mut r);

    (!r.failed).then_some(config)
}

/// `notify`: each item's `kind`, `urlFile` (required), `secretFile` (webhook only) and
/// `events` (default: all).
fn read_notify(r: &mut Reader<'_>) -> Vec<NotifyConfig> {
    let items: Vec<(String, At)> = (0..)
        .map(|i| format!("notify[{i}]"))
        .map_while(|key| r.at(&key).cloned().map(|at| (key, at)))
        .collect();
    if items.len() > MAX_NOTIFIERS {
        let (key, at) = &items[MAX_NOTIFIERS];
        r.problem(
            Some(at),
            key,
            format!("at most {MAX_NOTIFIERS} notifiers; send to one channel and fan out there"),
        );
    }
    let mut out = Vec::new();
    for (key, at) in items {
        let kind_key = format!("{key}.kind");
        let kind = r.get(&kind_key, |text| {
            NotifierKind::from_name(text).ok_or_else(|| {
                format!(
                    "unknown notifier kind `{text}`; expected one of {}",
                    NotifierKind::ALL.map(NotifierKind::as_str).join(", ")
                )
            })
        });
        if r.at(&kind_key).is_none() {
            r.problem(
                Some(&at),
                &kind_key,
                format!(
                    "is required: the kind of notifier, one of {}",
                    NotifierKind::ALL.map(NotifierKind::as_str).join(", ")
                ),
            );
        }
        let url_key = format!("{key}.urlFile");
        let url_file = r.path(&url_key);
        if r.at(&url_key).is_none() {
            r.problem(
                Some(&at),
                &url_key,
                "is required: a file holding the webhook URL (a secret: it is never written in the configuration, logs or errors)",
            );
        }
        let secret_key = format!("{key}.secretFile");
        let secret_file = r.path(&secret_key);
        if let Some(kind) = kind
            && kind != NotifierKind::Webhook
            && secret_file.is_some()
        {
            let at = r.at(&secret_key).cloned();
            r.problem(
                at.as_ref(),
                &secret_key,
                format!(
                    "is read only with kind webhook (the HMAC of the body), but this notifier is {}; remove it",
                    kind.as_str()
                ),
            );
        }
        let events_key = format!("{key}.events");
        let events = match r.values.get(&events_key).map(|leaf| leaf.raw.clone()) {
            None => EventKind::ALL.to_vec(),
            Some(Raw::List(items)) => {
                let mut events = Vec::new();
                for (text, item_at) in items {
                    match EventKind::from_name(text.trim()) {
                        Some(event) if !events.contains(&event) => events.push(event),
                        Some(_) => {}
                        None => r.problem(
                            Some(&item_at),
                            &events_key,
                            format!(
                                "unknown event `{text}`; expected some of {}",
                                EventKind::ALL.map(EventKind::as_str).join(", ")
                            ),
                        ),
                    }
                }
                if events.is_empty() {
                    let at = r.at(&events_key).cloned();
                    r.problem(
                        at.as_ref(),
                        &events_key,
                        "lists no event; leave events out to be told of every event, or remove the notifier",
                    );
                }
                // The canonical order, whatever the file's.
                EventKind::ALL
                    .into_iter()
                    .filter(|e| events.contains(e))
                    .collect()
            }
            Some(Raw::Text(_)) => {
                let at = r.at(&events_key).cloned();
                r.problem(
                    at.as_ref(),
                    &events_key,
                    "expected a list, e.g. [failed, recovered]",
                );
                Vec::new()
            }
        };
        if let (Some(kind), Some(url_file)) = (kind, url_file) {
            out.push(NotifyConfig {
                kind,
                url_file,
                secret_file: secret_file.filter(|_| kind == NotifierKind::Webhook),
                events,
            });
        }
    }
    out
}

fn check_role_codes(r: &mut Reader<'_>, codes: &RoleCodes) {
    let mut seen: Vec<(i64, Role)> = Vec::new();
    for role in Role::ALL {
        let code = codes.code(role);
        if let Some((_, first)) = seen.iter().find(|(c, _)| *c == code) {
            let key = format!("portal.roleCodes.{}", role.as_str());
            let at = r.at(&key).cloned();
            r.problem(
                at.as_ref(),
                &key,
                format!(
                    "code {code} is also the code of {first}; the four role codes must be distinct"
                ),
            );
        } else {
            seen.push((code, role));
        }
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "expected true or false, got `{other}`; write one of these two words (yes, no, on, off and other spellings are not booleans here)"
        )),
    }
}

fn parse_concurrency(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from 1 to {MAX_CONCURRENCY}, got `{text}`"
        )),
    }
}

/// A rate: a decimal number greater than 0 and at most [`MAX_PORTAL_WRITES_PER_SECOND`]
/// (`2`, `0.5`; no exponent, sign, `inf` or `NaN`).
fn parse_writes_per_second(text: &str) -> Result<f64, String> {
    let help = "write a number of writes per second greater than 0, e.g. 2, or 0.5 for one write every 2 s";
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let decimal = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !decimal(whole) || !decimal(fraction) {
        return Err(format!("`{text}` is not a number; {help}"));
    }
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= MAX_PORTAL_WRITES_PER_SECOND => Ok(rate),
        Ok(rate) if rate > 0.0 => Err(format!(
            "{text} writes per second is more than {MAX_PORTAL_WRITES_PER_SECOND}; the portal's limits are undocumented, stay gentle"
        )),
        _ => Err(format!("must be greater than 0 (got `{text}`); {help}")),
    }
}

fn parse_code(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .map_err(|_| format!("expected the portal's numeric role code, got `{text}`"))
}

/// A duration as the configuration writes it: `0`, or a whole number followed by `s`, `m`,
/// `h` or `d` (`30s`, `5m`, `2h`, `7d`). The one duration syntax of guestops: config keys,
/// `GUESTOPS_*` overrides and command-line options (`sim`, `demo`) alike.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(guestops::config::parse_duration("5s"), Ok(Duration::from_secs(5)));
/// assert!(guestops::config::parse_duration("5").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let help = "write a whole number and a unit, e.g. 30s, 5m, 2h, 7d (or 0)";
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let Some(unit) = text.chars().last() else {
        return Err(format!("empty duration; {help}"));
    };
    let seconds_per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("`{text}` is not a duration; {help}")),
    };
    let number = &text[..text.len() - 1];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a duration; {help}"));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per_unit))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

/// A duration that must be positive.
fn parse_interval(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be longer than 0, e.g. 5m".to_owned()),
        d => Ok(d),
    }
}

fn parse_file(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        Err("expected a file path".to_owned())
    } else {
        Ok(PathBuf::from(text))
    }
}

fn parse_branch(text: &str) -> Result<String, String> {
    let bad = text.is_empty()
        || text.starts_with('-')
        || text.contains("..")
        || text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        Err(format!("`{text}` is not a valid git branch name"))
    } else {
        Ok(text.to_owned())
    }
}

fn parse_repo_path(text: &str) -> Result<String, String> {
    let bad = text.is_empty()
        || text.starts_with('/')
        || text.split('/').any(|part| part == ".." || part.is_empty());
    if bad {
        Err(format!(
            "`{text}` is not a path inside the repository; write a relative path such as users.yaml or admins/users.yaml"
        ))
    } else {
        Ok(text.to_owned())
    }
}

fn parse_repo(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("expected a git URL or a local path".to_owned());
    }
    if let Ok(url) = Url::parse(text) {
        if url.password().is_some() {
            return Err(
                "the URL holds a password or token; remove it and put it in source.credentialFile"
                    .to_owned(),
            );
        }
        match url.scheme() {
            "https" | "ssh" | "file" => {}
            "http" if is_loopback(&url) => {}
            "http" => {
                return Err(
                    "plain http:// is refused except on loopback addresses; use https://"
                        .to_owned(),
                );
            }
            // `C:\repo` or `git@host:path` may parse as URLs with odd schemes.
            _ if text.contains('@') || text.len() < 3 || text.as_bytes()[1] == b':' => {}
            other => {
                return Err(format!(
                    "unsupported URL scheme `{other}`; use https://, ssh://, an scp-like address (git@host:org/repo.git) or a local path"
                ));
            }
        }
    }
    Ok(text.to_owned())
}

fn parse_guid(text: &str) -> Result<String, String> {
    uuid::Uuid::try_parse(text)
        .map(|_| text.to_ascii_lowercase())
        .map_err(|_| {
            format!(
                "`{text}` is not a GUID; copy the Application (client) ID from the app registration's overview"
            )
        })
}

fn parse_tenant_id(text: &str) -> Result<String, String> {
    if uuid::Uuid::try_parse(text).is_ok() {
        return Ok(text.to_ascii_lowercase());
    }
    parse_domain(text).map_err(|_| {
        format!(
            "`{text}` is neither a GUID nor a domain; use the Directory (tenant) ID or a verified domain such as contoso.onmicrosoft.com"
        )
    })
}

/// A domain name, lower-cased: dot-separated labels of letters, digits and hyphens.
pub(crate) fn parse_domain(text: &str) -> Result<String, String> {
    let domain = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = domain.strip_prefix('@') {
        return Err(format!(
            "`{text}` is not a domain; write it without the @, as `{rest}`"
        ));
    }
    if domain.contains('@') {
        return Err(format!(
            "`{text}` is an address, not a domain; write only the part after the @"
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(format!(
            "`{text}` is not a domain name; write e.g. partner.example"
        ));
    }
    Ok(domain)
}

/// Whether the URL's host is a loopback address (127.0.0.0/8, ::1) or `localhost`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// An https URL (http on loopback) with a host, no credentials, no query or fragment.
fn parse_endpoint(text: &str) -> Result<Url, String> {
    let url = parse_web_url(text)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{text}` has a query or fragment; write only scheme, host and path"
        ));
    }
    Ok(url)
}

fn parse_redirect_url(text: &str) -> Result<String, String> {
    parse_web_url(text).map(|_| text.to_owned())
}

fn parse_web_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| {
        format!("`{text}` is not an absolute URL ({e}); write e.g. https://host.example")
    })?;
    if url.host().is_none() {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{text}` holds credentials; remove them (secrets are read from files)"
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "plain http:// is refused except on loopback addresses (127.0.0.1, ::1, localhost); use https://{}",
            &text["http://".len()..]
        )),
        other => Err(format!(
            "unsupported scheme `{other}`; use https:// (http:// only on loopback)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "5",
            "m",
            "5 m",
            "-5m",
            "1.5h",
            "5w",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_interval("0").is_err());
    }

    #[test]
    fn writes_per_second() {
        assert_eq!(parse_writes_per_second("2"), Ok(2.0));
        assert_eq!(parse_writes_per_second("0.5"), Ok(0.5));
        assert_eq!(parse_writes_per_second("1000"), Ok(1000.0));
        for bad in [
            "0", "0.0", "-1", "+2", "1e3", "inf", "NaN", ".5", "5.", "", "two", "1000.5",
        ] {
            assert!(parse_writes_per_second(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_writes_per_second("0")
                .unwrap_err()
                .contains("greater than 0")
        );
    }

    #[test]
    fn loopback_http_only() {
        assert!(parse_endpoint("http://127.0.0.1:8080").is_ok());
        assert!(parse_endpoint("http://127.1.2.3").is_ok());
        assert!(parse_endpoint("http://[::1]:9").is_ok());
        assert!(parse_endpoint("http://localhost:9").is_ok());
        assert!(parse_endpoint("http://10.0.0.1").is_err());
        assert!(parse_endpoint("http://localhost.evil.example").is_err());
        assert!(parse_endpoint("ftp://127.0.0.1").is_err());
        assert!(parse_endpoint("https://user:pw@graph.microsoft.com").is_err());
        assert!(parse_endpoint("graph.microsoft.com").is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(
            parse_domain("Partner.Example"),
            Ok("partner.example".into())
        );
        assert!(
            parse_domain("@partner.example")
                .unwrap_err()
                .contains("without the @")
        );
        assert!(parse_domain("localhost").is_err());
        assert!(parse_domain("a..b").is_err());
        assert!(parse_domain("-a.b").is_err());
        assert!(parse_domain("a b.c").is_err());
    }

    #[test]
    fn repos() {
        assert!(parse_repo("https://github.com/contoso/admins.git").is_ok());
        assert!(parse_repo("git@github.com:contoso/admins.git").is_ok());
        assert!(parse_repo("/srv/admins").is_ok());
        assert!(parse_repo("https://x:token@github.com/c/a.git").is_err());
        assert!(parse_repo("http://github.com/c/a.git").is_err());
    }
}
