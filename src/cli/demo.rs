//! `guestops demo`: start the simulator, seed it, plan, apply, plan again — so a newcomer
//! understands the product from the output alone.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use guestops::config::Config;
use guestops::desired::source::Revision;
use guestops::desired::spec::{self, SpecPolicy};
use guestops::reconcile::plan::{self, PlanFormat};
use guestops::reconcile::state::StateStore;
use guestops::reconcile::{Context, Desired, Mode, Settings, Verdict, run_once};
use guestops::remote::Credential;
use guestops::remote::graph::GraphClient;
use guestops::remote::http::RetryPolicy;
use guestops::remote::portal::PortalClient;
use guestops::sim::{Sim, seed};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::{Status, stdout_color};

/// Arguments of `guestops demo`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Everything runs in this process against the built-in simulator on a \
loopback port; nothing leaves the machine.\n\nExit codes: 0 the demo converged (the second plan \
is empty), 1 it did not, or an error."
)]
pub struct Args {
    /// Unrelated guests seeded into the simulated tenant (several pages of 999).
    #[arg(long, default_value_t = 2500)]
    pub guests: usize,
    /// Unrelated users seeded into the simulated portal.
    #[arg(long, default_value_t = 60)]
    pub portal_users: usize,
    /// Simulated Entra replication delay of new guests: a duration as in the config, e.g.
    /// 3s, 1m.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = guestops::config::parse_duration)]
    pub replication_delay: Duration,
}

/// Runs `guestops demo`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    let color = stdout_color();
    let mut out = std::io::stdout().lock();
    let heading = |out: &mut dyn Write, text: &str| -> std::io::Result<()> {
        if color {
            writeln!(out, "\n\x1b[1m{text}\x1b[0m")
        } else {
            writeln!(out, "\n{text}")
        }
    };

    let sim = Sim::new();
    seed::unrelated(&sim, args.guests, args.portal_users);
    seed::demo_scenario(&sim);
    sim.state()
        .graph
        .set_replication_delay(args.replication_delay);
    let shutdown = CancellationToken::new();
    let base = sim
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone())
        .await
        .context("cannot start the simulator on a loopback port")?;
    let state_dir = tempfile::Builder::new()
        .prefix("guestops-demo-")
        .tempdir()
        .context("cannot create a temporary state directory")?;
    let config = Config::for_simulator(&base, state_dir.path());

    writeln!(out, "guestops demo")?;
    writeln!(
        out,
        "A simulated Entra ID tenant and Power Embedded portal are serving on {base}"
    )?;
    writeln!(
        out,
        "(Microsoft Graph at {base}v1.0/, the portal API at {base}api/). Seeded with:"
    )?;
    writeln!(
        out,
        "  - tenant: {} unrelated guests, plus Bob (a guest, address in another letter case),",
        args.guests
    )?;
    writeln!(
        out,
        "    Carla (a guest known by another mail; her address is in otherMails) and Dana (an internal member);"
    )?;
    writeln!(
        out,
        "  - portal: {} unrelated viewers, plus Bob registered as a viewer with 2 groups and 3 reports.",
        args.portal_users
    )?;
    writeln!(
        out,
        "  - new guests stay invisible to reads for {}, like Entra's replication delay.",
        guestops::config::format_duration(args.replication_delay)
    )?;

    heading(
        &mut out,
        "users.yaml — the desired external administrators (reviewed by pull request):",
    )?;
    for line in seed::DEMO_USERS_YAML
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        writeln!(out, "  {line}")?;
    }
    let parsed = spec::parse(seed::DEMO_USERS_YAML.as_bytes(), &SpecPolicy::default());
    let desired = parsed
        .desired
        .context("the embedded examples/users.yaml is invalid")?;

    let tenant = GraphClient::with_client_secret(
        &config.tenant.graph_settings(),
        Credential::new(
            SecretString::from(seed::CLIENT_SECRET.to_owned()),
            "the demo's built-in client secret",
        ),
        RetryPolicy::default(),
    )?;
    let portal = PortalClient::new(
        &config.portal.portal_settings(),
        Credential::new(
            SecretString::from(seed::API_KEY.to_owned()),
            "the demo's built-in API key",
        ),
        RetryPolicy::default(),
    )?;
    let settings = Settings::from_config(&config, false);
    let ctx = Context {
        tenant: &tenant,
        portal: &portal,
        settings: &settings,
    };
    let desired = Desired {
        state: desired,
        revision: Revision {
            id: "demo".into(),
            short: "demo".into(),
            author: String::new(),
            time: chrono::Utc::now(),
            subject: "examples/users.yaml".into(),
        },
        branch: None,
    };
    let cancel = CancellationToken::new();
    let mut store = StateStore::open(state_dir.path())?;

    heading(
        &mut out,
        "1. guestops plan — read the tenant and the portal completely, then compute the changes:",
    )?;
    let before = sim.state().counters.clone();
    let first = run_once(&ctx, &desired, Mode::DryRun(store.state().clone()), &cancel).await?;
    plan::render(&first.plan, PlanFormat::Text, color, &mut out)?;
    let after = sim.state().counters.clone();
    writeln!(
        out,
        "  (read with {} Graph requests — $select, $top=999, @odata.nextLink paging — and {} portal requests)",
        after.graph_requests - before.graph_requests,
        after.portal_requests - before.portal_requests
    )?;

    heading(&mut out, "2. guestops apply — make the changes:")?;
    let mode = Mode::Apply {
        store: &mut store,
        progress: None,
    };
    let applied = run_once(&ctx, &desired, mode, &cancel).await?;
    let report = applied.report.clone().unwrap_or_default();
    for outcome in &report.outcomes {
        writeln!(
            out,
            "  {:<6} {:<18} {}",
            if outcome.is_failed() {
                "FAILED"
            } else {
                "done"
            },
            outcome.change.action.name(),
            outcome.change.email
        )?;
    }
    super::apply::print_report(&report, &mut out)?;
    {
        let state = sim.state();
        if let Some(bob) = state.portal.find("bob.stone@vendor.example") {
            writeln!(
                out,
                "  Bob in the portal now: role {}, groups {}, reports {} — his role changed, nothing else.",
                bob.get("role")
                    .and_then(serde_json::Value::as_i64)
                    .and_then(|code| config.portal.role_codes.role(code))
                    .map_or_else(|| "unknown".to_owned(), |r| r.to_string()),
                bob.get("groups")
                    .and_then(|g| g.as_array())
                    .map_or(0, Vec::len),
                bob.get("reports")
                    .and_then(|g| g.as_array())
                    .map_or(0, Vec::len),
            )?;
        }
        writeln!(
            out,
            "  Invitations sent: {}; state.json and audit.jsonl written to {} (removed when the demo ends).",
            state.graph.invitations().len(),
            state_dir.path().display()
        )?;
    }

    heading(
        &mut out,
        "3. guestops plan again — the tenant and the portal now match users.yaml:",
    )?;
    let second = run_once(&ctx, &desired, Mode::DryRun(store.state().clone()), &cancel).await?;
    plan::render(&second.plan, PlanFormat::Text, color, &mut out)?;
    writeln!(
        out,
        "  (the new guests are not visible to reads yet; guestops knows it invited them and waits\n   instead of inviting twice)"
    )?;
    let converged = second.plan.is_empty() && applied.verdict() == Verdict::InSync;

    heading(&mut out, "What next")?;
    writeln!(
        out,
        "  guestops validate users.yaml               check a file, line-precise errors (add --format github in CI)"
    )?;
    writeln!(
        out,
        "  guestops sim --listen 127.0.0.1:8080 --demo   serve this simulator and print a ready config"
    )?;
    writeln!(
        out,
        "  guestops plan --config C --desired U       the same plan against a real tenant (README.md)"
    )?;
    shutdown.cancel();
    Ok(if converged {
        Status::Success
    } else {
        Status::Error
    })
}
