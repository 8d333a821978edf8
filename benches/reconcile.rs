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
//! about speed (timing claims belong here, not in `cargo test`). The bound is the larger of the
//! latency bound and the write-rate bound (Graph at 3,000 writes per 150 s, the portal at
//! `portal.maxWritesPerSecond`); the speed-up over the sequential baseline is measured with
//! rates high enough not to bind.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use guestops::config::Config;
use guestops::desired::source::Revision;
use guestops::desired::spec::{self, SpecPolicy};
use guestops::reconcile::apply::ChangeResult;
use guestops::reconcile::plan::System;
use guestops::reconcile::state::StateStore;
use guestops::reconcile::{Context, Desired, Mode, Settings, run_once};
use guestops::remote::Credential;
use guestops::remote::graph::GraphClient;
use guestops::remote::http::RetryPolicy;
use guestops::remote::pace::WriteRate;
use guestops::remote::portal::PortalClient;
use guestops::sim::{Sim, seed};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

/// One line on stdout (the benchmark's output; the library itself prints nothing).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Writes per second high enough not to bind, so that the speed-up over the sequential baseline
/// measures concurrency and request count, not pacing.
const UNBOUND: f64 = 1000.0;

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
    graph_writes: u64,
    portal_writes: u64,
    portal_rate: f64,
    graph_rate: f64,
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
        portal_rate: f64,
        unbound_graph: bool,
        store: &mut StateStore,
    ) -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_simulator(&self.base, dir.path());
        config.portal.max_writes_per_second = portal_rate;
        let mut graph_settings = config.tenant.graph_settings();
        if unbound_graph {
            graph_settings.write_rate = WriteRate::per_second(UNBOUND, 20).expect("a rate");
        }
        let tenant = GraphClient::with_client_secret(
            &graph_settings,
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
        let writes = |system: System| {
            outcome.report.as_ref().map_or(0, |r| {
                r.outcomes
                    .iter()
                    .filter(|o| o.change.action.system() == system)
                    .filter(|o| {
                        matches!(
                            o.result,
                            ChangeResult::Done {
                                remote_write: true,
                                ..
                            }
                        )
                    })
                    .count() as u64
            })
        };
        Run {
            graph: after.graph_requests - before.graph_requests,
            portal: after.portal_requests - before.portal_requests,
            graph_writes: writes(System::Tenant),
            portal_writes: writes(System::Portal),
            portal_rate,
            graph_rate: if unbound_graph { UNBOUND } else { 20.0 },
            wall,
        }
    }

    /// The larger of the latency bound (`max over systems of ceil(requests / concurrency) ×
    /// latency`) and the write-rate bound (`writes / rate`, Graph at its documented 3,000 per
    /// 150 s, the portal at `portal.maxWritesPerSecond`).
    fn bound(&self, run: &Run, settings: &Settings) -> Duration {
        let series =
            |requests: u64, concurrency: usize| requests.div_ceil(concurrency.max(1) as u64) as u32;
        let graph = series(run.graph, settings.tenant_concurrency);
        let portal = series(run.portal, settings.portal_concurrency);
        let latency = self.latency * graph.max(portal);
        let rate = Duration::from_secs_f64(
            (run.graph_writes as f64 / run.graph_rate)
                .max(run.portal_writes as f64 / run.portal_rate),
        );
        latency.max(rate)
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
    say!(
        "reconcile benchmark: {guests} unrelated guests, {admins} new admins, {} ms per request",
        latency.as_millis()
    );
    say!(
        "{:<34} {:>7} {:>7} {:>9} {:>9} {:>9} {:>7}",
        "run",
        "graph",
        "portal",
        "per-admin",
        "wall",
        "bound",
        "ratio"
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
        say!(
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

    let default_rate = Config::for_simulator(
        &url::Url::parse("http://127.0.0.1/").expect("url"),
        std::path::Path::new("/tmp"),
    )
    .portal
    .max_writes_per_second;
    let concurrent = Settings::default();
    let sequential = Settings {
        tenant_concurrency: 1,
        portal_concurrency: 1,
        ..Settings::default()
    };

    let mut walls = Vec::new();
    for (name, settings, rate) in [
        (
            "P2 cold onboarding, default rates",
            &concurrent,
            default_rate,
        ),
        ("P2 cold onboarding, rates unbound", &concurrent, UNBOUND),
        ("P2 sequential baseline, unbound", &sequential, UNBOUND),
    ] {
        let bench = Bench::new(guests, latency).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(dir.path()).expect("state");
        let unbound = rate == UNBOUND;
        let cold = bench
            .reconcile(&wanted, settings, rate, unbound, &mut store)
            .await;
        row(name, &cold, bench.bound(&cold, settings), true);
        if walls.is_empty() {
            let steady = bench
                .reconcile(&wanted, settings, rate, unbound, &mut store)
                .await;
            row(
                "P1 steady state (no drift)",
                &steady,
                bench.bound(&steady, settings),
                false,
            );
        }
        walls.push(cold.wall);
    }
    say!(
        "rates: default = portal.maxWritesPerSecond {default_rate} and Graph's 3,000 writes per 150 s; unbound = {UNBOUND}/s on both"
    );
    say!(
        "P2 speed-up over the sequential baseline (rates unbound): {:.1}x",
        walls[2].as_secs_f64() / walls[1].as_secs_f64().max(f64::EPSILON)
    );
}
