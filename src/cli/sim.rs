//! `guestops sim`: serve the simulator on a loopback port, for trying things and for tests.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use guestops::config::{Cloud, Config};
use guestops::sim::entra::oidc::{self, SimIssuer};
use guestops::sim::entra::{SimCertificate, SimFederatedCredential, SimManagedIdentity};
use guestops::sim::graph::SimCloud;
use guestops::sim::{Faults, Sim, seed};
use tokio_util::sync::CancellationToken;

use super::Status;

/// Arguments of `guestops sim`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Serves the token endpoint (/{tenant}/oauth2/v2.0/token), Graph (/v1.0/...) \
and the portal API (/api/...) on one loopback port, prints a ready config, and runs until Ctrl-C. \
With --federated it also serves test OIDC issuers (/oidc/NAME/...), with --managed-identity the \
managed-identity endpoints (/msi/token, /metadata/identity/oauth2/token); the banner prints the \
environment a client needs for them.\n\nExit codes: 0 stopped by Ctrl-C (SIGINT), 1 it \
cannot start (the address is in use or not loopback, a bad --certificate)."
)]
pub struct Args {
    /// Loopback address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seed this many unrelated guests into the tenant.
    #[arg(long, default_value_t = 0)]
    pub guests: usize,
    /// Seed this many unrelated users into the portal.
    #[arg(long, default_value_t = 0)]
    pub portal_users: usize,
    /// Seed the demo scenario (the users that examples/users.yaml adopts and updates).
    #[arg(long)]
    pub demo: bool,
    /// Hide newly invited guests from reads for this long (Entra replication delay): a
    /// duration as in the config, e.g. 5s, 2m.
    #[arg(long, value_parser = guestops::config::parse_duration)]
    pub replication_delay: Option<Duration>,
    /// Answer every Nth Graph and portal request with 429.
    #[arg(long)]
    pub throttle_every: Option<u64>,
    /// Retry-After sent with injected 429s, in seconds (e.g. 1 or 0.5).
    #[arg(long, default_value = "1")]
    pub retry_after: String,
    /// Where the printed config puts state.
    #[arg(long, default_value = "./guestops-state")]
    pub state_dir: std::path::PathBuf,
    /// The Microsoft cloud the simulated tenant lives in: global, usgov, usgov-dod or china.
    /// Tokens are issued only for that cloud's Graph resource, and the printed config names
    /// the cloud (with the simulator as authority and Graph endpoint).
    #[arg(long, default_value = "global", value_parser = parse_cloud)]
    pub cloud: Cloud,
    /// Register this certificate (a PEM file; its first CERTIFICATE block) on the application,
    /// for sign-in with a client assertion signed by its private key. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub certificate: Vec<std::path::PathBuf>,
    /// The application has no client secret: every secret is refused (AADSTS7000215).
    #[arg(long)]
    pub no_client_secret: bool,
    /// The Graph application permissions granted (comma-separated), instead of the default
    /// User.Invite.All,User.Read.All,User.EnableDisableAccount.All,User.DeleteRestore.All.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    /// Serve a test OIDC issuer at /oidc/NAME minting tokens for SUBJECT, and trust it with a
    /// federated identity credential (that issuer, SUBJECT, audience api://AzureADTokenExchange).
    /// Repeatable.
    #[arg(long, value_name = "NAME=SUBJECT", value_parser = parse_federated)]
    pub federated: Vec<(String, String)>,
    /// The bearer token the test issuers' GitHub-Actions-style token endpoint requires
    /// (ACTIONS_ID_TOKEN_REQUEST_TOKEN).
    #[arg(long, value_name = "TOKEN", default_value = guestops::sim::entra::oidc::DEFAULT_REQUEST_TOKEN)]
    pub github_request_token: String,
    /// Serve the managed-identity endpoints (App Service /msi/token, IMDS
    /// /metadata/identity/oauth2/token) for a system-assigned identity with the granted roles.
    #[arg(long)]
    pub managed_identity: bool,
    /// Also attach this user-assigned managed identity (its client id). Repeatable.
    #[arg(long, value_name = "CLIENT_ID", requires = "managed_identity")]
    pub user_assigned_identity: Vec<String>,
    /// Behave as an Azure Arc host: the IMDS path challenges with a secret file written into
    /// this folder.
    #[arg(long, value_name = "DIR", requires = "managed_identity")]
    pub arc_key_dir: Option<std::path::PathBuf>,
    /// allowInvitesFrom of the tenant's authorization policy (GET
    /// /v1.0/policies/authorizationPolicy, which needs Policy.Read.All).
    #[arg(long, value_name = "VALUE", default_value = "everyone", value_parser = [
        "none", "adminsAndGuestInviters", "adminsGuestInvitersAndAllMembers", "everyone",
    ])]
    pub allow_invites_from: String,
}

fn parse_federated(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, subject))
            if !name.is_empty()
                && !subject.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Ok((name.to_owned(), subject.to_owned()))
        }
        _ => Err(format!(
            "expected NAME=SUBJECT (NAME of letters, digits, - and _), e.g. github=repo:org/repo:pull_request; got `{text}`"
        )),
    }
}

fn parse_cloud(text: &str) -> Result<Cloud, String> {
    Cloud::from_name(text).ok_or_else(|| {
        format!("unknown cloud `{text}`; expected one of global, usgov, usgov-dod, china")
    })
}

/// The simulator's stand-in for `cloud`.
fn sim_cloud(cloud: Cloud) -> SimCloud {
    match cloud {
        Cloud::Global => SimCloud::Global,
        Cloud::UsGov => SimCloud::UsGov,
        Cloud::UsGovDod => SimCloud::UsGovDod,
        Cloud::China => SimCloud::China,
    }
}

/// What a client needs for the sign-in kinds beyond the secret: certificates, federated
/// issuers, managed identity.
fn identity_banner(
    out: &mut impl Write,
    args: &Args,
    base: &url::Url,
    certificates: &[SimCertificate],
) -> std::io::Result<()> {
    let base_text = base.as_str().trim_end_matches('/');
    if let Some(roles) = &args.roles {
        writeln!(out, "Granted Graph permissions: {}", roles.join(", "))?;
        writeln!(out)?;
    }
    for (path, certificate) in args.certificate.iter().zip(certificates) {
        writeln!(
            out,
            "Certificate {} registered (thumbprint {}): sign client assertions with its private key.",
            path.display(),
            certificate.thumbprint()
        )?;
    }
    if !certificates.is_empty() {
        writeln!(out)?;
    }
    for (name, subject) in &args.federated {
        writeln!(
            out,
            "Federated issuer {} (subject {subject}, audience {}):",
            oidc::issuer_url(base_text, name),
            guestops::sim::entra::TOKEN_EXCHANGE_AUDIENCE
        )?;
        writeln!(
            out,
            "  export ACTIONS_ID_TOKEN_REQUEST_URL='{}'",
            oidc::token_request_url(base_text, name)
        )?;
        writeln!(
            out,
            "  export ACTIONS_ID_TOKEN_REQUEST_TOKEN={}",
            args.github_request_token
        )?;
        writeln!(out)?;
    }
    if args.managed_identity {
        writeln!(
            out,
            "Managed identity (client id {}):",
            guestops::sim::entra::SIM_MANAGED_CLIENT_ID
        )?;
        let imds = format!("{base_text}{}", guestops::sim::entra::managed::IMDS_PATH);
        if args.arc_key_dir.is_some() {
            writeln!(out, "  Azure Arc style:")?;
            writeln!(out, "  export IDENTITY_ENDPOINT={imds}")?;
            writeln!(out, "  export IMDS_ENDPOINT={base_text}")?;
        } else {
            writeln!(out, "  App Service style:")?;
            writeln!(
                out,
                "  export IDENTITY_ENDPOINT={base_text}{}",
                guestops::sim::entra::managed::APP_SERVICE_PATH
            )?;
            writeln!(
                out,
                "  export IDENTITY_HEADER={}",
                guestops::sim::entra::SIM_IDENTITY_HEADER
            )?;
            writeln!(out, "  IMDS style (header Metadata: true): {imds}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Runs `guestops sim`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "the simulator only listens on loopback addresses, not {}: use 127.0.0.1:PORT",
            args.listen.ip()
        );
    }
    let mut certificates = Vec::new();
    for path in &args.certificate {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the certificate {}", path.display()))?;
        let certificate = SimCertificate::from_pem(&pem)
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        certificates.push(certificate);
    }
    let sim = Sim::new();
    seed::unrelated(&sim, args.guests, args.portal_users);
    if args.demo {
        seed::demo_scenario(&sim);
    }
    {
        let mut state = sim.state();
        let mut credentials = state.graph.credentials().clone();
        credentials.cloud = sim_cloud(args.cloud);
        credentials.certificates = certificates.clone();
        if args.no_client_secret {
            credentials.client_secret = String::new();
        }
        if let Some(roles) = &args.roles {
            credentials.roles = roles
                .iter()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect();
        }
        if args.managed_identity {
            credentials.managed_identity = Some(SimManagedIdentity {
                user_assigned: args.user_assigned_identity.clone(),
                roles: credentials.roles.clone(),
                ..SimManagedIdentity::default()
            });
        }
        state.graph.set_credentials(credentials);
        state.graph.set_allow_invites_from(&args.allow_invites_from);
        state.identity.arc_key_dir = args.arc_key_dir.clone();
        for (name, subject) in &args.federated {
            state.identity.add_issuer(
                name,
                SimIssuer {
                    request_token: Some(args.github_request_token.clone()),
                    ..SimIssuer::with_subject(subject)
                },
            );
        }
        if let Some(delay) = args.replication_delay {
            state.graph.set_replication_delay(delay);
        }
        if let Some(every) = args.throttle_every {
            let faults = Faults {
                throttle_every: Some(every),
                retry_after: Some(args.retry_after.clone()),
                ..Faults::default()
            };
            state.graph_faults = faults.clone();
            state.portal_faults = faults;
        }
    }
    let shutdown = CancellationToken::new();
    let base = sim
        .spawn(args.listen, shutdown.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // The issuers' URLs depend on the address served at.
    {
        let mut state = sim.state();
        let mut credentials = state.graph.credentials().clone();
        credentials.federated = args
            .federated
            .iter()
            .map(|(name, subject)| {
                SimFederatedCredential::new(name, &oidc::issuer_url(base.as_str(), name), subject)
            })
            .collect();
        state.graph.set_credentials(credentials);
    }
    let mut config = Config::for_simulator(&base, &args.state_dir);
    config.tenant.cloud = args.cloud;
    let mut out = std::io::stdout().lock();
    writeln!(out, "guestops simulator listening on {base}")?;
    writeln!(
        out,
        "  token endpoint  {base}{}/oauth2/v2.0/token",
        seed::TENANT_DOMAIN
    )?;
    writeln!(out, "  Microsoft Graph {base}v1.0/")?;
    writeln!(out, "  Power Embedded  {base}api/")?;
    writeln!(out)?;
    writeln!(
        out,
        "Secrets (export them, then run guestops against the config below):"
    )?;
    if !args.no_client_secret {
        writeln!(
            out,
            "  export GUESTOPS_TENANT_CLIENT_SECRET={}",
            seed::CLIENT_SECRET
        )?;
    }
    writeln!(out, "  export GUESTOPS_PORTAL_API_KEY={}", seed::API_KEY)?;
    writeln!(out)?;
    identity_banner(&mut out, &args, &base, &certificates)?;
    writeln!(out, "# config.yaml")?;
    write!(out, "{}", config.to_yaml())?;
    writeln!(out)?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    out.flush()?;
    drop(out);
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    Ok(Status::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federated_flags_name_an_issuer_and_a_subject() {
        assert_eq!(
            parse_federated("gh=repo:org/repo:environment:prod"),
            Ok(("gh".to_owned(), "repo:org/repo:environment:prod".to_owned()))
        );
        for bad in ["gh", "=repo:x", "gh=", "g/h=repo:x", "g h=repo:x"] {
            assert!(parse_federated(bad).is_err(), "{bad}");
        }
    }
}
