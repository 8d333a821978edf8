//! [`Config::to_yaml`]: a config file that loads back to the same configuration, without any
//! secret value.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{Config, CredentialConfig, SecretSource};
use crate::reconcile::plan::GuestOnRemoval;

pub(crate) fn to_yaml(config: &Config) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(
        "# guestops host configuration (docs/config.md). Secret values are never written here."
            .into(),
    );

    let s = &config.source;
    line("source:".into());
    match &s.repo {
        Some(repo) => line(format!("  repo: {}", scalar(repo))),
        None => line(
            "  # repo: https://github.com/contoso/portal-admins.git   (unset: use --desired FILE)"
                .into(),
        ),
    }
    line(format!("  branch: {}", scalar(&s.branch)));
    line(format!("  path: {}", scalar(&s.path)));
    line(format!("  pollInterval: {}", duration(s.poll_interval)));
    line(format!("  resyncInterval: {}", duration(s.resync_interval)));
    if let Some(path) = &s.credential_file {
        line(format!("  credentialFile: {}", path_scalar(path)));
    }
    let v = &s.verify;
    line("  verify:".into());
    line(format!("    mode: {}", v.mode.as_str()));
    if let Some(path) = &v.allowed_signers_file {
        line(format!("    allowedSignersFile: {}", path_scalar(path)));
    }
    if let Some(path) = &v.keyring_file {
        line(format!("    keyringFile: {}", path_scalar(path)));
    }

    let t = &config.tenant;
    line("tenant:".into());
    line(format!("  tenantId: {}", scalar(&t.tenant_id)));
    // A managed identity names itself: no application id.
    if !t.client_id.is_empty() {
        line(format!("  clientId: {}", scalar(&t.client_id)));
    }
    line("  credential:".into());
    line(format!("    kind: {}", t.credential.kind().as_str()));
    match &t.credential {
        CredentialConfig::ClientSecret => {
            secret_line(&mut line, "    secretFile", &t.client_secret);
        }
        CredentialConfig::ClientCertificate {
            certificate_file,
            password,
            send_chain,
            algorithm,
        } => {
            match certificate_file {
                Some(path) => line(format!("    certificateFile: {}", path_scalar(path))),
                None => line(
                    "    certificateFile: ~   # read from $CREDENTIALS_DIRECTORY/graph-certificate"
                        .into(),
                ),
            }
            secret_line(&mut line, "    passwordFile", password);
            line(format!("    sendCertificateChain: {send_chain}"));
            line(format!("    assertionAlgorithm: {algorithm}"));
        }
        CredentialConfig::WorkloadIdentity { token_file } => match token_file {
            Some(path) => line(format!("    tokenFile: {}", path_scalar(path))),
            None => line("    tokenFile: ~   # read from $AZURE_FEDERATED_TOKEN_FILE".into()),
        },
        CredentialConfig::GithubActions { audience } => {
            line(format!("    audience: {}", scalar(audience)));
        }
        CredentialConfig::ManagedIdentity { client_id } => match client_id {
            Some(id) => line(format!("    clientId: {}", scalar(id))),
            None => line("    clientId: ~   # the system-assigned identity".into()),
        },
    }
    line(format!("  cloud: {}", t.cloud));
    line(format!(
        "  authorityHost: {}",
        scalar(t.authority_host.as_str())
    ));
    line(format!(
        "  graphEndpoint: {}",
        scalar(t.graph_endpoint.as_str())
    ));
    line(format!(
        "  inviteRedirectUrl: {}",
        scalar(&t.invite_redirect_url)
    ));
    line(format!("  concurrency: {}", t.concurrency));
    line(format!("  deltaQuery: {}", t.delta_query));
    line(format!(
        "  fullResyncInterval: {}",
        duration(t.full_resync_interval)
    ));
    line(format!(
        "  replicationGrace: {}",
        duration(t.replication_grace)
    ));

    let p = &config.portal;
    line("portal:".into());
    line(format!("  baseUrl: {}", scalar(p.base_url.as_str())));
    secret_line(&mut line, "  apiKeyFile", &p.api_key);
    line(format!("  concurrency: {}", p.concurrency));
    line(format!("  maxWritesPerSecond: {}", p.max_writes_per_second));
    match &p.known_admin {
        Some(admin) => line(format!("  knownAdmin: {}", scalar(admin))),
        None => {
            line("  # knownAdmin: an administrator the portal lists (checked by doctor)".into())
        }
    }
    let stated = p.write_only_flags.stated();
    if stated.is_empty() {
        line("  # writeOnlyFlags: { bypassFirewall: …, canExportReportOtherPages: … } (not stated: never sent)".into());
    } else {
        line("  writeOnlyFlags:".into());
        for (flag, value) in p.write_only_flags.all() {
            match value {
                Some(value) => line(format!("    {flag}: {value}")),
                None => line(format!("    # {flag}: not stated (never sent)")),
            }
        }
    }
    line("  roleCodes:".into());
    let c = &p.role_codes;
    line(format!("    administrator: {}", c.administrator));
    line(format!("    contributor: {}", c.contributor));
    line(format!("    viewer: {}", c.viewer));
    line(format!(
        "    workspace-contributor: {}",
        c.workspace_contributor
    ));

    let pol = &config.policy;
    line("policy:".into());
    let domains: Vec<String> = pol.allowed_domains.iter().map(|d| scalar(d)).collect();
    line(format!("  allowedDomains: [{}]", domains.join(", ")));
    line(format!("  prune: {}", pol.prune));
    let guest = match pol.guest_on_removal {
        GuestOnRemoval::Keep => "keep",
        GuestOnRemoval::Disable => "disable",
        GuestOnRemoval::Delete => "delete",
    };
    line(format!("  guestOnRemoval: {guest}"));
    line(format!("  maxDeletions: {}", pol.max_deletions));
    line(format!(
        "  resendAfter: {}",
        pol.resend_after.map_or_else(|| "0".to_owned(), duration)
    ));
    line(format!(
        "  pendingAlertAfter: {}",
        pol.pending_alert_after
            .map_or_else(|| "0".to_owned(), duration)
    ));
    line(format!(
        "  expiryNoticeBefore: {}",
        pol.expiry_notice_before
            .map_or_else(|| "0".to_owned(), duration)
    ));

    line("state:".into());
    line(format!("  dir: {}", path_scalar(&config.state.dir)));

    line("server:".into());
    line(format!(
        "  listen: {}",
        scalar(&config.server.listen.to_string())
    ));
    match &config.server.webhook_secret {
        Some(source) => secret_line(&mut line, "  webhookSecretFile", source),
        None => line("  # no webhook secret: /hooks/github is off".into()),
    }

    if config.notify.is_empty() {
        line("# notify: no notifications (docs/config.md, `notify`)".into());
    } else {
        line("notify:".into());
        for n in &config.notify {
            line(format!("  - kind: {}", n.kind.as_str()));
            line(format!("    urlFile: {}", path_scalar(&n.url_file)));
            if let Some(path) = &n.secret_file {
                line(format!("    secretFile: {}", path_scalar(path)));
            }
            let events: Vec<&str> = n.events.iter().map(|e| e.as_str()).collect();
            line(format!("    events: [{}]", events.join(", ")));
        }
    }
    out
}

fn secret_line(line: &mut impl FnMut(String), key: &str, source: &SecretSource) {
    match source {
        SecretSource::File(path) => line(format!("{key}: {}", path_scalar(path))),
        SecretSource::Env(var) => line(format!(
            "{key}: ~   # read from the environment variable {var}"
        )),
        SecretSource::CredentialOrEnv {
            credential, env, ..
        } => line(format!(
            "{key}: ~   # read from $CREDENTIALS_DIRECTORY/{credential}, else the environment variable {env}"
        )),
    }
}

/// A duration in the largest unit that divides it exactly (`90s`, `5m`, `7d`, `0`), as the
/// configuration writes it; sub-second parts are dropped.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn path_scalar(path: &Path) -> String {
    scalar(&path.to_string_lossy())
}

/// `text` as a YAML scalar: plain when unambiguous, else double-quoted (JSON escaping is
/// valid YAML).
fn scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@+".contains(c))
        && !text.starts_with(['-', ':', '@'])
        && !text.ends_with(':')
        && !text.contains(": ")
        && !looks_typed(text);
    if plain {
        text.to_owned()
    } else {
        let mut quoted = String::new();
        // Writing to a String cannot fail.
        let _ = write!(quoted, "{}", serde_json::Value::String(text.to_owned()));
        quoted
    }
}

/// Whether YAML would read `text` as something other than a string.
fn looks_typed(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~" | "y" | "n"
    ) || text.parse::<f64>().is_ok()
        || text.starts_with("0x")
        || text.starts_with("0o")
        || text.starts_with(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_quote_what_yaml_would_misread() {
        assert_eq!(scalar("main"), "main");
        assert_eq!(
            scalar("https://graph.microsoft.com/"),
            "https://graph.microsoft.com/"
        );
        assert_eq!(scalar("true"), "\"true\"");
        assert_eq!(scalar("123"), "\"123\"");
        assert_eq!(scalar("a b"), "\"a b\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(scalar("#x"), "\"#x\"");
    }

    #[test]
    fn durations_use_the_largest_exact_unit() {
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_secs(300)), "5m");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(duration(Duration::from_secs(7 * 86_400)), "7d");
    }
}
