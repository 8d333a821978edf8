//! Reconcile cost against the in-process simulator (issue "large tenants", design §11).
//!
//! `cargo bench --bench reconcile` starts the simulator on loopback with an injected latency per
//! request, seeds a tenant of unrelated guests, and measures with the real HTTP clients:
//!
//! - **P2 cold onboarding**: one reconcile that invites and registers `ADMINS` new admins, at
//!   the configured concurrency and with one request in flight at a time (the sequential
//!   baseline); requests per admin per system, wall time, and the latency lower bound
//!   (`max over systems of ceil(requests / concurrency) × latency`);
//! - **P1 steady state**: the next reconcile with no drift: its Graph and portal requests.
//!
//! Sizes come from the environment (`BENCH_GUESTS`, `BENCH_ADMINS`, `BENCH_LATENCY_MS`) so that a
//! short run fits a laptop and a long one measures a large tenant. Prints a table; asserts nothing
//! about speed (timing claims belong here, not in `cargo test`). Write pacing is not built yet, so
//! no write-rate bound is printed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use guestops::config::Config;
use guestops::desired::source::Revision;
use guestops::desired::spec::{self, SpecPolicy};
use guestops::reconcile::state::StateStore;
use guestops::reconcile::{Context, Desired, Mode, Settings, run_once};
use guestops::remote::Credential;
use guestops::remote::graph::GraphClient;
use guestops::remote::http::RetryPolicy;
use guestops::remote::portal::PortalClient;
use guestops::sim::{Sim, seed};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one measured reconcile cost.
struct Run {
    graph: u64,
    portal: u64,
    wall: Duration,
}

struct Bench {
    sim: Sim,
    base: url::Url,
    _stop: tokio_util::sync::DropGuard,
    latency: Duration,
}

impl Bench {
    async fn new(guests: usize, latency: Duration) -> Bench {
        let sim = Sim::new();
        seed::unrelated(&sim, guests, 50);
        let stop = CancellationToken::new();
        let base = sim
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)), stop.clone())
            .await
            .expect("the simulator listens");
        {
            let mut state = sim.state();
            state.graph.set_replication_delay(Duration::ZERO);
            state.graph_faults.latency = latency;
            state.portal_faults.latency = latency;
        }
        Bench {
            sim,
            base,
            _stop: stop.drop_guard(),
            latency,
        }
    }

    /// One reconcile (apply mode) of `desired` with `settings`, counting requests.
    async fn reconcile(
        &self,
        desired: &Desired,
        settings: &Settings,
        store: &mut StateStore,
    ) -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::for_simulator(&self.base, dir.path());
        let tenant = GraphClient::with_client_secret(
            &config.tenant.graph_settings(),
            Credential::new(
                SecretString::from(seed::CLIENT_SECRET.to_owned()),
                "the simulator's client secret",
            ),
            RetryPolicy::default(),
        )
        .expect("graph client");
        let portal = PortalClient::new(
            &config.portal.portal_settings(),
            Credential::new(
                SecretString::from(seed::API_KEY.to_owned()),
                "the simulator's API key",
            ),
            RetryPolicy::default(),
        )
        .expect("portal client");
        let ctx = Context {
            tenant: &tenant,
            portal: &portal,
            settings,
        };
        let before = self.sim.state().counters.clone();
        let started = Instant::now();
        let mode = Mode::Apply {
            store,
            progress: None,
        };
        let outcome = run_once(&ctx, desired, mode, &CancellationToken::new())
            .await
            .expect("the reconcile completes");
        let wall = started.elapsed();
        assert_eq!(outcome.failed(), 0, "{:?}", outcome.report);
        let after = self.sim.state().counters.clone();
        Run {
            graph: after.graph_requests - before.graph_requests,
            portal: after.portal_requests - before.portal_requests,
            wall,
        }
    }

    /// `max over systems of ceil(requests / concurrency) × latency`.
    fn latency_bound(&self, run: &Run, settings: &Settings) -> Duration {
        let series =
            |requests: u64, concurrency: usize| requests.div_ceil(concurrency.max(1) as u64) as u32;
        let graph = series(run.graph, settings.tenant_concurrency);
        let portal = series(run.portal, settings.portal_concurrency);
        self.latency * graph.max(portal)
    }
}

fn desired(admins: usize) -> Desired {
    let mut text = String::from("apiVersion: guestops/v1\nusers:\n");
    for n in 0..admins {
        text.push_str(&format!(
            "  - email: admin{n:05}@partner.example\n    name: Admin {n:05}\n"
        ));
    }
    let parsed = spec::parse(text.as_bytes(), &SpecPolicy::default());
    Desired {
        state: parsed.desired.expect("a valid users.yaml"),
        revision: Revision {
            id: "bench".into(),
            short: "bench".into(),
            author: String::new(),
            time: chrono::Utc::now(),
            subject: "benchmark".into(),
        },
        branch: None,
    }
}

#[tokio::main]
async fn main() {
    let guests = env_or("BENCH_GUESTS", 20_000) as usize;
    let admins = env_or("BENCH_ADMINS", 200) as usize;
    let latency = Duration::from_millis(env_or("BENCH_LATENCY_MS", 30));
    let wanted = desired(admins);
    println!(
        "reconcile benchmark: {guests} unrelated guests, {admins} new admins, {} ms per request",
        latency.as_millis()
    );
    println!(
        "{:<34} {:>7} {:>7} {:>9} {:>9} {:>9} {:>7}",
        "run", "graph", "portal", "per-admin", "wall", "bound", "ratio"
    );
    let row = |name: &str, run: &Run, bound: Duration, per_admin: bool| {
        let per = if per_admin {
            format!(
                "{:.2}/{:.2}",
                run.graph as f64 / admins as f64,
                run.portal as f64 / admins as f64
            )
        } else {
            "-".to_owned()
        };
        println!(
            "{:<34} {:>7} {:>7} {:>9} {:>8.2}s {:>8.2}s {:>7.2}",
            name,
            run.graph,
            run.portal,
            per,
            run.wall.as_secs_f64(),
            bound.as_secs_f64(),
            run.wall.as_secs_f64() / bound.as_secs_f64().max(f64::EPSILON)
        );
    };

    // The configured concurrency (the host configuration's defaults).
    let concurrent = Settings::default();
    let bench = Bench::new(guests, latency).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = StateStore::open(dir.path()).expect("state");
    let cold = bench.reconcile(&wanted, &concurrent, &mut store).await;
    row(
        "P2 cold onboarding (concurrent)",
        &cold,
        bench.latency_bound(&cold, &concurrent),
        true,
    );
    let steady = bench.reconcile(&wanted, &concurrent, &mut store).await;
    row(
        "P1 steady state (no drift)",
        &steady,
        bench.latency_bound(&steady, &concurrent),
        false,
    );
    drop(bench);

    // The sequential baseline: one request at a time, on a fresh tenant of the same size.
    let sequential = Settings {
        tenant_concurrency: 1,
        portal_concurrency: 1,
        ..Settings::default()
    };
    let bench = Bench::new(guests, latency).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = StateStore::open(dir.path()).expect("state");
    let baseline = bench.reconcile(&wanted, &sequential, &mut store).await;
    row(
        "P2 sequential baseline",
        &baseline,
        bench.latency_bound(&baseline, &sequential),
        true,
    );
    println!(
        "P2 speed-up over the sequential baseline: {:.1}x",
        baseline.wall.as_secs_f64() / cold.wall.as_secs_f64().max(f64::EPSILON)
    );
}
