//! `guestops doctor`: read-only checks of the host setup, as data.
//!
//! [`run`] takes the loaded configuration and the two clients (built by the CLI the way every
//! command builds them) and returns a [`Report`]; [`config_failed`] is the report of a
//! configuration that does not load. Nothing is written anywhere: the git source is fetched
//! into a temporary mirror, the state lock is only tested (a shared lock taken and released at
//! once), `state.dir` is tested for writability with a temporary file that is removed again.
//!
//! The checks, in order (`docs/preflight.md`): `config`, `secret.*`, `graph.token`,
//! `graph.permissions`, `graph.read`, `graph.invitations`, `portal.key`, `portal.roleCodes`,
//! `source`, `state`, `clock`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{Check, Report, role_code_check};
use crate::config::{Config, LoadedSecret, SecretOrigin, SecretSource};
use crate::reconcile::plan::GuestOnRemoval;
use crate::remote::graph::GraphClient;
use crate::remote::http::{Edge, Idempotency, Request, RetryPolicy};
use crate::remote::portal::PortalClient;

/// The largest clock offset accepted (tokens and signatures tolerate about five minutes).
pub const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(5 * 60);

/// What the doctor looks at.
pub struct Inputs<'a> {
    /// The loaded configuration.
    pub config: &'a Config,
    /// Where it was loaded from (for the `config` line).
    pub config_path: &'a Path,
    /// The Graph client as the other commands build it, or why it could not be built.
    pub graph: Result<GraphClient, String>,
    /// The portal client as the other commands build it, or why it could not be built.
    pub portal: Result<PortalClient, String>,
    /// The environment (`CREDENTIALS_DIRECTORY`, the secret variables).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The report of a configuration that does not load: the loader's error verbatim, every other
/// check skipped.
pub fn config_failed(config_path: &Path, error: &str) -> Report {
    let mut report = Report::default();
    report.push(Check::failed(
        "config",
        format!("{} does not load: {error}", config_path.display()),
        "fix the problems listed (docs/config.md describes every key), then run guestops doctor again",
    ));
    for name in LATER_CHECKS {
        report.push(Check::skipped(name, "the configuration does not load"));
    }
    report
}

/// The checks after `config`, for [`config_failed`].
const LATER_CHECKS: [&str; 10] = [
    "secrets",
    "graph.token",
    "graph.permissions",
    "graph.read",
    "graph.invitations",
    "portal.key",
    super::ROLE_CODES_CHECK,
    "source",
    "state",
    "clock",
];

/// Runs every check (see the module header).
pub async fn run(inputs: Inputs<'_>) -> Report {
    let Inputs {
        config,
        config_path,
        graph,
        portal,
        env,
    } = inputs;
    let mut report = Report::default();
    report.push(Check::ok(
        "config",
        format!("{} loads", config_path.display()),
    ));

    // 1. Secrets.
    let secrets = secret_checks(config, env);
    let graph_secret_ok = secrets.graph_ok;
    let portal_secret_ok = secrets.portal_ok;
    report.checks.extend(secrets.checks);

    // 2. The Graph token.
    let mut dates: Vec<(&str, SystemTime, SystemTime)> = Vec::new();
    let token = match (&graph, graph_secret_ok) {
        (_, false) => {
            report.push(Check::skipped(
                "graph.token",
                "the Graph credential cannot be read",
            ));
            None
        }
        (Err(err), true) => {
            report.push(Check::failed(
                "graph.token",
                format!("cannot build the Graph client: {err}"),
                "fix tenant.* in the configuration (docs/config.md)",
            ));
            None
        }
        (Ok(client), true) => {
            let kind = credential_kind(config);
            let from = secrets
                .graph_origin
                .as_ref()
                .map_or_else(String::new, |o| format!(", from {o}"));
            match client.token_source().token().await {
                Ok(token) => {
                    report.push(Check::ok(
                        "graph.token",
                        format!(
                            "a token for tenant {} ({kind}{from})",
                            config.tenant.tenant_id
                        ),
                    ));
                    Some(token)
                }
                Err(err) => {
                    report.push(Check::failed(
                        "graph.token",
                        format!("no token ({kind}{from})"),
                        crate::error::chain(&err),
                    ));
                    None
                }
            }
        }
    };

    // 3-5. What the token may do, and the tenant.
    match (&graph, &token) {
        (Ok(client), Some(token)) => {
            report.push(permission_check(config, token));
            let edge = diagnostic_edge();
            let read = graph_get(&edge, token, client.root(), "users?$top=1&$select=id").await;
            if let Ok(answer) = &read
                && let Some(date) = answer.date
            {
                dates.push(("Graph", date, answer.received));
            }
            report.push(graph_read_check(&read));
            let policy =
                graph_get(&edge, token, client.root(), "policies/authorizationPolicy").await;
            report.push(invitation_check(&policy));
        }
        _ => {
            for name in ["graph.permissions", "graph.read", "graph.invitations"] {
                report.push(Check::skipped(name, "no Graph token"));
            }
        }
    }

    // 6-7. The portal.
    match (&portal, portal_secret_ok) {
        (_, false) => {
            report.push(Check::skipped(
                "portal.key",
                "the portal API key cannot be read",
            ));
            report.push(Check::skipped(super::ROLE_CODES_CHECK, "no portal access"));
        }
        (Err(err), true) => {
            report.push(Check::failed(
                "portal.key",
                format!("cannot build the portal client: {err}"),
                "fix portal.* in the configuration (docs/config.md)",
            ));
            report.push(Check::skipped(super::ROLE_CODES_CHECK, "no portal access"));
        }
        (Ok(client), true) => {
            let answer = client
                .raw(Method::GET, &[], &[("pageNumber", "1")], None)
                .await;
            let received = SystemTime::now();
            if let Ok(answer) = &answer
                && let Some(date) = answer.date
            {
                dates.push(("the portal", date, received));
            }
            let key = portal_key_check(config, &answer);
            let key_ok = key.is_ok();
            report.push(key);
            if key_ok {
                report.push(role_code_check(config, client).await);
            } else {
                report.push(Check::skipped(
                    super::ROLE_CODES_CHECK,
                    "the portal key does not work",
                ));
            }
        }
    }

    // 8. The git source.
    report.push(source_check(config).await);
    // 9. The state directory.
    report.push(state_check(&config.state.dir));
    // 10. The clock.
    report.push(clock_check(&dates));
    report
}

/// The credential kind the configuration signs in with, e.g. `clientCertificate`.
fn credential_kind(config: &Config) -> &'static str {
    config.tenant.credential.kind().as_str()
}

/// The outcome of the secret checks.
struct SecretChecks {
    checks: Vec<Check>,
    graph_ok: bool,
    portal_ok: bool,
    graph_origin: Option<String>,
}

/// One check per secret or credential file the configuration names.
fn secret_checks(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> SecretChecks {
    let mut checks = Vec::new();
    let (graph_ok, graph_origin) = graph_credential_checks(config, env, &mut checks);
    let portal = config.portal.api_key.load_with_env(env);
    let portal_ok = portal.is_ok();
    checks.push(secret_check(
        "secret.portal",
        "the portal API key",
        portal.map(Some),
    ));
    if let Some(webhook) = &config.server.webhook_secret {
        checks.push(webhook_check(webhook, env));
    }
    if let Some(file) = &config.source.credential_file {
        checks.push(file_check(
            "secret.source",
            "the git credential (source.credentialFile)",
            file,
        ));
    }
    for (i, notifier) in config.notify.iter().enumerate() {
        let name = crate::service::notify::send::notifier_name(i, notifier.kind);
        let what = format!("the URL of {name} (notify[{i}].urlFile)");
        checks.push(file_check("secret.notify", &what, &notifier.url_file));
        if let Some(file) = &notifier.secret_file {
            let what = format!("the HMAC key of {name} (notify[{i}].secretFile)");
            checks.push(file_check("secret.notify", &what, file));
        }
    }
    SecretChecks {
        checks,
        graph_ok,
        portal_ok,
        graph_origin,
    }
}

/// `secret.graph` (and `secret.certificatePassword`): what `tenant.credential.kind` signs in
/// with, loaded as every command loads it. Returns whether it loaded and where it comes from.
fn graph_credential_checks(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    checks: &mut Vec<Check>,
) -> (bool, Option<String>) {
    use crate::config::CredentialConfig;
    use crate::remote::graph::CredentialSettings;
    let name = "secret.graph";
    let settings = match config.load_credential_with_env(env) {
        Ok(settings) => settings,
        Err(err) => {
            checks.push(Check::failed(
                name,
                format!(
                    "the Graph credential ({}) cannot be read",
                    credential_kind(config)
                ),
                crate::error::chain(&err),
            ));
            return (false, None);
        }
    };
    match settings {
        CredentialSettings::ClientSecret { .. } => {
            // Loaded again for its origin (a file's mode is checked on the path).
            let secret = config.tenant.client_secret.load_with_env(env);
            let origin = secret.as_ref().ok().map(|s| s.origin().to_string());
            let check = secret_check(name, "the Graph client secret", secret.map(Some));
            let ok = check.status != super::CheckStatus::Failed;
            checks.push(check);
            (ok, origin)
        }
        CredentialSettings::ClientCertificate(certificate) => {
            let mut check = file_check(name, "the certificate", &certificate.file);
            check.message = format!("{} ({})", check.message, certificate.origin);
            let ok = check.status != super::CheckStatus::Failed;
            checks.push(check);
            if let CredentialConfig::ClientCertificate { password, .. } = &config.tenant.credential
            {
                match password.load_optional_with_env(env) {
                    Ok(None) => {}
                    other => checks.push(secret_check(
                        "secret.certificatePassword",
                        "the certificate password",
                        other,
                    )),
                }
            }
            (ok, Some(certificate.origin))
        }
        CredentialSettings::WorkloadIdentity { token_file } => {
            // The platform projects and rotates the file; its mode is the platform's.
            let check = match std::fs::File::open(&token_file) {
                Ok(_) => Check::ok(
                    name,
                    format!(
                        "the federated token file {} is readable",
                        token_file.display()
                    ),
                ),
                Err(err) => Check::failed(
                    name,
                    format!(
                        "the federated token file {} cannot be read: {err}",
                        token_file.display()
                    ),
                    "check the pod's workload identity (the azure.workload.identity/use label and the service account annotation) or tenant.credential.tokenFile",
                ),
            };
            let ok = check.is_ok();
            checks.push(check);
            (ok, Some(format!("the file {}", token_file.display())))
        }
        CredentialSettings::GithubActions(_) => {
            checks.push(Check::ok(
                name,
                "GitHub Actions' OIDC token request is available ($ACTIONS_ID_TOKEN_REQUEST_URL, $ACTIONS_ID_TOKEN_REQUEST_TOKEN)",
            ));
            (true, Some("GitHub Actions' OIDC provider".to_owned()))
        }
        CredentialSettings::ManagedIdentity(identity) => {
            let which = identity.client_id.as_deref().map_or_else(
                || "system-assigned".to_owned(),
                |id| format!("user-assigned {id}"),
            );
            checks.push(Check::ok(
                name,
                format!(
                    "no secret: the host's managed identity ({which}, {})",
                    identity.source.name()
                ),
            ));
            (true, Some(format!("the managed identity ({which})")))
        }
    }
}

fn webhook_check(source: &SecretSource, env: &dyn Fn(&str) -> Option<String>) -> Check {
    match source.load_optional_with_env(env) {
        Ok(None) => Check::ok(
            "secret.webhook",
            "no webhook secret is provided: the GitHub webhook is off (polling only)",
        ),
        other => secret_check("secret.webhook", "the webhook secret", other),
    }
}

/// `✓` with where the secret was read from, `!` when its file is readable by others, `✗`
/// with the loader's message when it cannot be read. Never the value.
fn secret_check(
    name: &str,
    what: &str,
    loaded: Result<Option<LoadedSecret>, crate::config::ConfigError>,
) -> Check {
    match loaded {
        Err(err) => Check::failed(
            name,
            format!("{what} cannot be read"),
            crate::error::chain(&err),
        ),
        Ok(None) => Check::ok(name, format!("{what} is not provided")),
        Ok(Some(secret)) => {
            let origin = secret.origin().clone();
            let path = match &origin {
                SecretOrigin::File { path, .. } | SecretOrigin::Credential { path, .. } => {
                    Some(path.clone())
                }
                SecretOrigin::Env { .. } => None,
            };
            match path.as_deref().and_then(loose_mode) {
                Some(mode) => {
                    let path = path.unwrap_or_default();
                    Check::warning(
                        name,
                        format!(
                            "{what} is read from {origin}, which group or others may read (mode {mode:04o})"
                        ),
                        format!("chmod 600 {}", path.display()),
                    )
                }
                None => Check::ok(name, format!("{what} is read from {origin}")),
            }
        }
    }
}

/// A credential file named by a key: readable, and not by group or others.
fn file_check(name: &str, what: &str, path: &Path) -> Check {
    match std::fs::File::open(path) {
        Err(err) => Check::failed(
            name,
            format!("{what} {} cannot be read: {err}", path.display()),
            "check that the file exists and that the guestops user may read it",
        ),
        Ok(_) => match loose_mode(path) {
            Some(mode) => Check::warning(
                name,
                format!(
                    "{what} {} may be read by group or others (mode {mode:04o})",
                    path.display()
                ),
                format!("chmod 600 {}", path.display()),
            ),
            None => Check::ok(name, format!("{what} {} is readable", path.display())),
        },
    }
}

/// The permission bits of `path` when group or others have any access.
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

/// One thing the app must be allowed to do, and the application permissions that allow it.
struct Need {
    /// What for.
    what: &'static str,
    /// The least-privileged permission (`docs/specs/microsoft-graph.md`).
    least: &'static str,
    /// Broader permissions that also allow it.
    broader: &'static [&'static str],
}

/// The permissions guestops needs with this configuration.
fn needs(config: &Config) -> Vec<Need> {
    let mut needs = vec![
        Need {
            what: "inviting guests",
            least: "User.Invite.All",
            broader: &["User.ReadWrite.All", "Directory.ReadWrite.All"],
        },
        Need {
            what: "reading users",
            least: "User.Read.All",
            broader: &[
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
        },
    ];
    match config.policy.guest_on_removal {
        GuestOnRemoval::Keep => {}
        GuestOnRemoval::Disable => needs.push(Need {
            what: "disabling removed guests (policy.guestOnRemoval: disable)",
            least: "User.EnableDisableAccount.All",
            broader: &["User.ReadWrite.All", "Directory.ReadWrite.All"],
        }),
        GuestOnRemoval::Delete => needs.push(Need {
            what: "deleting removed guests (policy.guestOnRemoval: delete)",
            least: "User.DeleteRestore.All",
            broader: &["User.ReadWrite.All"],
        }),
    }
    needs
}

/// Permissions broader than guestops ever needs.
const BROADER: [&str; 3] = [
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

/// Check 3: the `roles` of the token against [`needs`].
fn permission_check(config: &Config, token: &SecretString) -> Check {
    let name = "graph.permissions";
    // Diagnostic only, never used for a decision (see `token_roles`).
    let Some(roles) = super::token_roles(token.expose_secret()) else {
        return Check::warning(
            name,
            "unknown: the access token is not a readable JWT, so its permissions cannot be read",
            "check the app's API permissions in Entra (App registrations → API permissions): User.Invite.All and User.Read.All, granted with admin consent",
        );
    };
    let has = |p: &str| roles.iter().any(|r| r.eq_ignore_ascii_case(p));
    let needs = needs(config);
    let missing: Vec<&Need> = needs
        .iter()
        .filter(|n| !has(n.least) && !n.broader.iter().any(|b| has(b)))
        .collect();
    let shown = if roles.is_empty() {
        "none".to_owned()
    } else {
        roles.join(", ")
    };
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|n| n.least).collect();
        let whats: Vec<&str> = missing.iter().map(|n| n.what).collect();
        return Check::failed(
            name,
            format!(
                "the token lacks {} (needed for {}); it has: {shown}",
                names.join(", "),
                whats.join(", ")
            ),
            format!(
                "grant the application permission {} to the app and grant admin consent (Entra: App registrations → API permissions → Microsoft Graph → Application permissions)",
                names.join(" and ")
            ),
        );
    }
    let broader: Vec<&str> = BROADER.iter().copied().filter(|b| has(b)).collect();
    if !broader.is_empty() {
        let least: Vec<&str> = needs.iter().map(|n| n.least).collect();
        return Check::warning(
            name,
            format!(
                "the token carries {}, broader than needed; it has: {shown}",
                broader.join(", ")
            ),
            format!(
                "grant {} instead and remove {} from the app",
                least.join(", "),
                broader.join(", ")
            ),
        );
    }
    Check::ok(
        name,
        format!("the token's application permissions: {shown}"),
    )
}

/// The edge of the doctor's own Graph reads: one at a time, few retries, short timeouts (a
/// diagnostic should answer quickly).
fn diagnostic_edge() -> Option<Edge> {
    let retry = RetryPolicy {
        max_retries: 2,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        max_total_wait: Duration::from_secs(10),
        timeout: Duration::from_secs(30),
    };
    Edge::new(retry, 1).ok()
}

/// A Graph answer, as the doctor reads it.
struct GraphAnswer {
    status: u16,
    date: Option<SystemTime>,
    received: SystemTime,
    body: Option<Value>,
}

impl GraphAnswer {
    /// `error.code` of an OData error body.
    fn error_code(&self) -> Option<&str> {
        self.body.as_ref()?.get("error")?.get("code")?.as_str()
    }
}

/// `GET {root}{path}` with the token; any status is an answer.
async fn graph_get(
    edge: &Option<Edge>,
    token: &SecretString,
    root: &url::Url,
    path: &str,
) -> Result<GraphAnswer, String> {
    let edge = edge
        .as_ref()
        .ok_or_else(|| "the HTTP client cannot be built".to_owned())?;
    let url = root
        .join(path)
        .map_err(|err| format!("bad Graph URL: {err}"))?;
    let request = Request::new(Method::GET, url)
        .bearer(token)
        .map_err(|_| "the access token cannot be sent in a header".to_owned())?
        .header(reqwest::header::ACCEPT, "application/json");
    let reply = edge
        .send(&request, Idempotency::Idempotent)
        .await
        .map_err(|err| crate::error::chain(&err))?;
    let date = reply
        .headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    Ok(GraphAnswer {
        status: reply.status.as_u16(),
        date,
        received: SystemTime::now(),
        body: serde_json::from_slice(&reply.body).ok(),
    })
}

/// Check 4: one cheap read of the tenant.
fn graph_read_check(answer: &Result<GraphAnswer, String>) -> Check {
    let name = "graph.read";
    match answer {
        Err(err) => Check::failed(
            name,
            format!("GET /v1.0/users got no answer: {err}"),
            "check tenant.graphEndpoint and the network (a proxy, a firewall)",
        ),
        Ok(a) if (200..300).contains(&a.status) => {
            Check::ok(name, format!("GET /v1.0/users answered {}", a.status))
        }
        Ok(a) if a.status == 403 => Check::failed(
            name,
            format!(
                "GET /v1.0/users answered 403 {}",
                a.error_code().unwrap_or("(no error code)")
            ),
            "grant the application permission User.Read.All to the app and grant admin consent",
        ),
        Ok(a) => Check::failed(
            name,
            format!(
                "GET /v1.0/users answered {} {}",
                a.status,
                a.error_code().unwrap_or("")
            )
            .trim_end()
            .to_owned(),
            "check tenant.graphEndpoint and the app registration",
        ),
    }
}

/// Check 5: `allowInvitesFrom` of the tenant's authorization policy.
fn invitation_check(answer: &Result<GraphAnswer, String>) -> Check {
    let name = "graph.invitations";
    let answer = match answer {
        Err(err) => {
            return Check::warning(
                name,
                format!("unknown: GET /v1.0/policies/authorizationPolicy got no answer: {err}"),
                "check the B2B invitation setting in Entra (External Identities → External collaboration settings)",
            );
        }
        Ok(answer) => answer,
    };
    if answer.status == 403 {
        return Check::warning(
            name,
            "unknown: reading the tenant's invitation setting needs Policy.Read.All (403)",
            "to let guestops doctor check it, grant the application permission Policy.Read.All with admin consent; or check External Identities → External collaboration settings by hand",
        );
    }
    if !(200..300).contains(&answer.status) {
        return Check::warning(
            name,
            format!(
                "unknown: GET /v1.0/policies/authorizationPolicy answered {}",
                answer.status
            ),
            "check the B2B invitation setting in Entra (External Identities → External collaboration settings)",
        );
    }
    // v1.0 answers the singleton; beta (and some proxies) a collection.
    let policy = answer.body.as_ref().map(|b| match b.get("value") {
        Some(Value::Array(items)) => items.first().cloned().unwrap_or(Value::Null),
        _ => b.clone(),
    });
    let setting = policy
        .as_ref()
        .and_then(|p| p.get("allowInvitesFrom"))
        .and_then(Value::as_str);
    match setting {
        None => Check::warning(
            name,
            "unknown: the authorization policy has no allowInvitesFrom",
            "check the B2B invitation setting in Entra (External Identities → External collaboration settings)",
        ),
        Some("none") => Check::failed(
            name,
            "allowInvitesFrom is none: nobody in the tenant may invite guests",
            "allow invitations in Entra (External Identities → External collaboration settings → Guest invite settings), at least for admins and users in the Guest Inviter role",
        ),
        Some("adminsAndGuestInviters") => Check::warning(
            name,
            "allowInvitesFrom is adminsAndGuestInviters: the app may invite only with the Guest Inviter role",
            "assign the Guest Inviter directory role to the app's service principal (Entra → Roles and administrators → Guest Inviter)",
        ),
        Some(other) => Check::ok(name, format!("allowInvitesFrom is {other}")),
    }
}

/// Check 6: `GET /api/user?pageNumber=1` with the key.
fn portal_key_check(
    config: &Config,
    answer: &Result<crate::remote::portal::RawAnswer, crate::remote::portal::PortalError>,
) -> Check {
    let name = "portal.key";
    let base = config.portal.base_url.as_str();
    match answer {
        Err(err) => Check::failed(
            name,
            format!("GET /api/user got no answer: {}", crate::error::chain(err)),
            "check portal.baseUrl and the network",
        ),
        Ok(a) if a.is_success() => {
            let users = a
                .json()
                .and_then(|b| b.get("data").and_then(Value::as_array).map(Vec::len));
            Check::ok(
                name,
                match users {
                    Some(n) => format!(
                        "GET {base}api/user answered {} ({} on page 1)",
                        a.status,
                        crate::markup::count(n, "user")
                    ),
                    None => format!("GET {base}api/user answered {}", a.status),
                },
            )
        }
        Ok(a) if a.status == 401 => Check::failed(
            name,
            "the portal refused the API key (401)",
            "check the key's file or variable (see secret.portal) or regenerate it in the Administration Portal (Settings → API)",
        ),
        Ok(a) if a.status == 403 => Check::failed(
            name,
            "the API key is valid but lacks the user endpoints (403)",
            "give the key the user endpoints (list, create, update, delete users; link/unlink groups and reports) in the Administration Portal (Settings → API)",
        ),
        Ok(a) => Check::failed(
            name,
            format!("GET /api/user answered {}: {}", a.status, a.text()),
            "check portal.baseUrl",
        ),
    }
}

/// Check 8: `source.repo` fetchable at `source.branch`, `source.path` present and valid.
async fn source_check(config: &Config) -> Check {
    use crate::desired::source::{GitSettings, GitSource};
    let name = "source";
    let Some(settings) = GitSettings::from_config(&config.source) else {
        return Check::ok(
            name,
            "source.repo is not set: the commands read --desired FILE (the daemon needs source.repo or --desired)",
        );
    };
    let shown = format!(
        "{} at {} ({})",
        settings.display_repo(),
        settings.branch,
        settings.path
    );
    // A mirror of its own, removed afterwards: the daemon's mirror is never touched.
    let scratch = match tempfile::Builder::new()
        .prefix("guestops-doctor-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(err) => {
            return Check::warning(
                name,
                format!("skipped: no temporary directory for the fetch: {err}"),
                "set TMPDIR to a writable directory",
            );
        }
    };
    let source = GitSource::new(settings, scratch.path().join("mirror"));
    let revision = match source.fetch().await {
        Ok(revision) => revision,
        Err(err) => {
            return Check::failed(
                name,
                format!("cannot fetch {shown}"),
                crate::error::chain(&err),
            );
        }
    };
    let bytes = match source.read(&revision).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return Check::failed(
                name,
                format!("{shown}: commit {} has no users file", revision.short),
                crate::error::chain(&err),
            );
        }
    };
    let parsed = crate::desired::spec::parse(&bytes, &crate::desired::spec::SpecPolicy::default());
    match &parsed.desired {
        Some(desired) if !parsed.has_errors() => Check::ok(
            name,
            format!(
                "{shown}: commit {} lists {}",
                revision.short,
                crate::markup::count(desired.users.len(), "user")
            ),
        ),
        _ => Check::failed(
            name,
            format!("{shown}: the file at commit {} is invalid", revision.short),
            "run guestops validate on it and fix the errors it lists",
        ),
    }
}

/// Check 9: `state.dir` writable and not locked by another instance (except the daemon).
fn state_check(dir: &Path) -> Check {
    let name = "state";
    if !dir.exists() {
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|p| p.exists())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        return match tempfile::tempfile_in(&parent) {
            Ok(_) => Check::ok(
                name,
                format!(
                    "state.dir {} does not exist yet; it is created on the first run",
                    dir.display()
                ),
            ),
            Err(err) => Check::failed(
                name,
                format!(
                    "state.dir {} does not exist and {} is not writable: {err}",
                    dir.display(),
                    parent.display()
                ),
                format!(
                    "create it for the guestops user: install -d -m 700 {}",
                    dir.display()
                ),
            ),
        };
    }
    if let Err(err) = tempfile::tempfile_in(dir) {
        return Check::failed(
            name,
            format!("state.dir {} is not writable: {err}", dir.display()),
            format!(
                "give the guestops user write access: chown guestops {} && chmod 700 {}",
                dir.display(),
                dir.display()
            ),
        );
    }
    let lock_path = dir.join(crate::reconcile::state::LOCK_FILE);
    let Ok(lock) = std::fs::File::open(&lock_path) else {
        return Check::ok(
            name,
            format!("state.dir {} is writable and not locked", dir.display()),
        );
    };
    match lock.try_lock_shared() {
        // Released when `lock` is dropped, at once.
        Ok(()) => Check::ok(
            name,
            format!("state.dir {} is writable and not locked", dir.display()),
        ),
        Err(std::fs::TryLockError::Error(err)) => Check::warning(
            name,
            format!("cannot test the lock {}: {err}", lock_path.display()),
            "check the permissions of the state directory",
        ),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock_path).ok();
            locked_check(dir, &Holder::parse(holder.as_deref().unwrap_or("")))
        }
    }
}

/// Who holds the lock, as the lock file and `/proc` tell.
#[derive(Debug, Default)]
struct Holder {
    pid: Option<u32>,
    started: Option<String>,
}

impl Holder {
    /// The `pid=` and `started=` lines of the lock file (`reconcile::state`).
    fn parse(text: &str) -> Holder {
        let mut holder = Holder::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => holder.pid = v.trim().parse().ok(),
                Some(("started", v)) => holder.started = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        holder
    }
}

fn locked_check(dir: &Path, holder: &Holder) -> Check {
    let name = "state";
    let Some(pid) = holder.pid else {
        return Check::failed(
            name,
            format!(
                "state.dir {} is locked by another guestops, which the lock file does not name",
                dir.display()
            ),
            "find the process holding it (fuser on the lock file); wait for it or stop it",
        );
    };
    let started = holder
        .started
        .as_deref()
        .map_or_else(String::new, |s| format!(", started {s}"));
    let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let subcommand = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    let unit = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| {
            text.split(['/', '\n'])
                .find(|part| part.ends_with(".service"))
                .map(str::to_owned)
        });
    match (subcommand.as_deref(), unit) {
        (Some("run"), Some(unit)) => Check::ok(
            name,
            format!(
                "state.dir {} is held by the daemon, the systemd service {unit} (pid {pid}{started}): expected while it runs",
                dir.display()
            ),
        ),
        (Some("run"), None) => Check::warning(
            name,
            format!(
                "state.dir {} is held by a daemon, `guestops run` (pid {pid}{started}), not run as a systemd service",
                dir.display()
            ),
            "that is fine for a trial; in production run the daemon as the systemd service (deploy/)",
        ),
        (sub, _) => Check::failed(
            name,
            format!(
                "state.dir {} is locked by another guestops{} (pid {pid}{started})",
                dir.display(),
                sub.map_or_else(String::new, |s| format!(" `guestops {s}`"))
            ),
            "wait for it to finish, or stop it if it hangs; apply and run need the lock",
        ),
    }
}

/// Check 10: the `Date` of Graph's and the portal's answers against the local clock.
fn clock_check(dates: &[(&str, SystemTime, SystemTime)]) -> Check {
    let name = "clock";
    if dates.is_empty() {
        return Check::warning(
            name,
            "unknown: no answer carried a Date header",
            "check that the host's clock is synchronized (timedatectl status)",
        );
    }
    let mut worst: Option<(&str, f64)> = None;
    for (who, remote, local) in dates {
        // Seconds the local clock is ahead of the remote one (negative: behind). A Date header
        // has a resolution of one second.
        let offset = match local.duration_since(*remote) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        };
        if worst.is_none_or(|(_, w)| offset.abs() > w.abs()) {
            worst = Some((who, offset));
        }
    }
    let (who, offset) = worst.unwrap_or(("", 0.0));
    let whom: Vec<&str> = dates.iter().map(|(w, _, _)| *w).collect();
    if offset.abs() > MAX_CLOCK_OFFSET.as_secs_f64() {
        Check::failed(
            name,
            format!(
                "the local clock is {:.0} s {} {who}'s",
                offset.abs(),
                if offset > 0.0 { "ahead of" } else { "behind" }
            ),
            "synchronize the clock (timedatectl set-ntp true); tokens and signatures are refused beyond about five minutes",
        )
    } else {
        // The offset itself is noise at this size (a Date header has whole seconds).
        Check::ok(
            name,
            format!(
                "the local clock agrees with {} (within {} minutes)",
                whom.join(" and "),
                MAX_CLOCK_OFFSET.as_secs() / 60
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_check_fails_beyond_five_minutes() {
        let now = SystemTime::now();
        let ok = clock_check(&[("Graph", now - Duration::from_secs(30), now)]);
        assert!(ok.is_ok(), "{ok:?}");
        let off = clock_check(&[
            ("Graph", now, now),
            ("the portal", now + Duration::from_secs(600), now),
        ]);
        assert_eq!(off.status, super::super::CheckStatus::Failed);
        assert!(off.message.contains("600 s behind the portal's"), "{off:?}");
        assert!(!clock_check(&[]).is_ok());
    }

    fn token(roles: &[&str]) -> SecretString {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = serde_json::json!({ "roles": roles }).to_string();
        SecretString::from(format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(&payload)
        ))
    }

    fn config(on_removal: GuestOnRemoval) -> Config {
        let base = url::Url::parse("http://127.0.0.1:1/").expect("url");
        let mut config = Config::for_simulator(&base, Path::new("/nonexistent"));
        config.policy.guest_on_removal = on_removal;
        config
    }

    #[test]
    fn permissions_are_checked_against_what_the_config_needs() {
        use super::super::CheckStatus::{Failed, Ok, Warning};
        let keep = config(GuestOnRemoval::Keep);
        let least = ["User.Invite.All", "User.Read.All"];
        assert_eq!(permission_check(&keep, &token(&least)).status, Ok);
        let missing = permission_check(&keep, &token(&["User.Read.All"]));
        assert_eq!(missing.status, Failed);
        assert!(
            missing.message.contains("lacks User.Invite.All"),
            "{missing:?}"
        );
        assert!(
            missing
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("grant the application permission User.Invite.All")),
            "{missing:?}"
        );
        let broad = permission_check(&keep, &token(&["User.Invite.All", "User.ReadWrite.All"]));
        assert_eq!(broad.status, Warning, "{broad:?}");
        assert!(broad.message.contains("broader than needed"), "{broad:?}");
        let delete = config(GuestOnRemoval::Delete);
        let check = permission_check(&delete, &token(&least));
        assert_eq!(check.status, Failed);
        assert!(
            check.message.contains("User.DeleteRestore.All"),
            "{check:?}"
        );
        let disable = config(GuestOnRemoval::Disable);
        let all = [
            "User.Invite.All",
            "User.Read.All",
            "User.EnableDisableAccount.All",
        ];
        assert_eq!(permission_check(&disable, &token(&all)).status, Ok);
        let opaque = permission_check(&keep, &SecretString::from("opaque"));
        assert_eq!(
            opaque.status, Warning,
            "an unreadable token is unknown, never failed"
        );
    }

    #[test]
    fn the_lock_file_names_its_holder() {
        let holder = Holder::parse("pid=42\nstarted=2026-01-01T00:00:00Z\n");
        assert_eq!(holder.pid, Some(42));
        assert_eq!(holder.started.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(Holder::parse("").pid, None);
    }
}
