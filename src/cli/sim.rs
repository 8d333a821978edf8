//! `guestops sim`: serve the simulator on a loopback port, for trying things and for tests.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use guestops::config::{Cloud, Config};
use guestops::sim::graph::SimCloud;
use guestops::sim::{Faults, Sim, seed};
use tokio_util::sync::CancellationToken;

use super::Status;

/// Arguments of `guestops sim`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Serves the token endpoint (/{tenant}/oauth2/v2.0/token), Graph (/v1.0/...) \
and the portal API (/api/...) on one loopback port, prints a ready config, and runs until Ctrl-C."
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
    /// Hide newly invited guests from reads for this long (Entra replication delay), e.g. 5s.
    #[arg(long, value_parser = humantime_like)]
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

/// Parses `500ms`, `5s`, `2m`.
fn humantime_like(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text}"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {text}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Runs `guestops sim`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "the simulator only listens on loopback addresses, not {}: use 127.0.0.1:PORT",
            args.listen.ip()
        );
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
        state.graph.set_credentials(credentials);
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
    writeln!(
        out,
        "  export GUESTOPS_TENANT_CLIENT_SECRET={}",
        seed::CLIENT_SECRET
    )?;
    writeln!(out, "  export GUESTOPS_PORTAL_API_KEY={}", seed::API_KEY)?;
    writeln!(out)?;
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
