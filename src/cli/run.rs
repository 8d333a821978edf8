//! `guestops run`: the daemon (design §9).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use guestops::desired::source::AnySource;
use guestops::desired::source::watch_file;
use guestops::reconcile::state::StateStore;
use guestops::service::control;
use guestops::service::daemon::{Daemon, Settings};
use guestops::service::metrics::Metrics;
use guestops::service::notify::Notifications;
use guestops::service::server::{
    self, DEFAULT_READY_THRESHOLD, Health, ServerState, Trigger, WebhookConfig,
};
use guestops::service::systemd::Notifier;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Status;

/// How long queued notifications may take to go out after the daemon stopped.
const NOTIFY_FLUSH: Duration = Duration::from_secs(15);

/// Arguments of `guestops run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Runs until SIGTERM or SIGINT (then finishes the writes in flight, saves the \
state and exits 0). SIGHUP, a verified GitHub push webhook, a new commit (polled every \
source.pollInterval) or a changed --desired file trigger a reconcile; a full resync runs every \
source.resyncInterval. Serves /healthz, /readyz, /metrics and /hooks/github on server.listen, \
and the control socket state.dir/control.sock (mode 0600) for suspend, resume, reconcile and \
state forget.

Exit codes: 0 stopped by SIGTERM or SIGINT, 1 it cannot start (bad config, missing secret, state \
locked by another instance) or the state directory stopped being writable (it stops rather than \
make unrecorded changes). A failing reconcile does not end the daemon: it is retried with backoff \
and shown in /readyz."
)]
pub struct Args {
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Follow this users.yaml file (watched for changes) instead of the configured git source.
    #[arg(long, value_name = "FILE")]
    pub desired: Option<PathBuf>,
}

/// Runs `guestops run`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    // First, so that a SIGTERM or SIGHUP during start-up is handled rather than killing the
    // process with the signal's default action.
    let signals = Signals::install()?;
    let config = super::load_config(&args.config.config)?;
    let secrets = config.load_secrets()?;
    let store = StateStore::open(&config.state.dir)?;
    let super::Clients { tenant, portal } = super::clients(
        &config,
        secrets.graph_credential.clone(),
        &secrets.portal_api_key,
    )?;
    let notifier = Notifier::from_env().context("cannot talk to systemd (NOTIFY_SOCKET)")?;
    let metrics = Metrics::new();
    // Before anything else starts: a notifier whose URL cannot be read stops the start.
    let (notifications, senders) = Notifications::start(&config, metrics.notifications())?;
    let health = Health::new(DEFAULT_READY_THRESHOLD);
    let shutdown = CancellationToken::new();
    // Every task this command spawns, awaited before it returns.
    let tasks = TaskTracker::new();
    // Capacity 1: a burst of triggers leaves one pending reconcile.
    let (trigger_tx, trigger_rx) = mpsc::channel::<Trigger>(1);

    let source = AnySource::choose(args.desired.as_deref(), &config)?;
    // Kept alive while the daemon runs: dropping it stops the watch.
    let mut _watch = None;
    if let Some(path) = &args.desired {
        let (watch, mut changes) = watch_file(path.clone(), Duration::from_millis(500))?;
        _watch = Some(watch);
        let tx = trigger_tx.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    change = changes.recv() => match change {
                        Some(_) => { let _ = tx.try_send(Trigger::FileChanged); }
                        None => break,
                    },
                }
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on server.listen {}", config.server.listen))?;
    tracing::info!(listen = %config.server.listen, "serving /healthz /readyz /metrics /hooks/github");
    let server_state = ServerState {
        metrics: metrics.clone(),
        health: health.clone(),
        webhook: WebhookConfig::from_config(&config, &secrets),
        trigger: trigger_tx.clone(),
    };
    let server = tasks.spawn(server::serve(listener, server_state, shutdown.clone()));
    // The control socket (suspend, resume, reconcile, state forget); removed on return.
    let (control_tx, control_rx) = mpsc::channel(8);
    let _control_socket = match control::bind(&store) {
        Ok((listener, guard)) => {
            tracing::info!(socket = %control::socket_path(store.dir()).display(), "control socket ready");
            tasks.spawn(control::serve(listener, control_tx, shutdown.clone()));
            Some(guard)
        }
        Err(err) => {
            // The daemon's job does not depend on it; the commands say that nothing answers.
            tracing::warn!(
                socket = %control::socket_path(store.dir()).display(),
                error = %err,
                "cannot create the control socket: suspend, resume, reconcile and state forget cannot reach this daemon"
            );
            None
        }
    };
    signals.spawn(&tasks, shutdown.clone(), trigger_tx);

    let daemon = Daemon {
        settings: Settings {
            poll_interval: config.source.poll_interval,
            resync_interval: config.source.resync_interval,
            reconcile: guestops::reconcile::Settings::from_config(&config, false),
            ..Settings::default()
        },
        source,
        tenant,
        portal,
        store,
        metrics,
        health,
        notifier,
        notifications,
    };
    let stopped = daemon
        .run_with_control(trigger_rx, control_rx, shutdown.clone())
        .await;
    // The daemon (and its handle on the queues) is gone: what it queued last goes out.
    senders.finish(NOTIFY_FLUSH).await;
    shutdown.cancel();
    tasks.close();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "the HTTP server stopped with an error"),
        Err(err) => tracing::warn!(error = %err, "the HTTP server task failed"),
    }
    // The signal handler and the file-watch forwarder end with `shutdown`.
    tasks.wait().await;
    stopped?;
    Ok(Status::Success)
}

/// The signals the daemon handles, installed before anything else.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot install the {name} handler"))
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// SIGTERM/SIGINT stop the daemon; SIGHUP asks for a reconcile. Ends with `shutdown`.
    fn spawn(
        mut self,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        trigger: mpsc::Sender<Trigger>,
    ) {
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = self.term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                    _ = self.int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                    _ = self.hup.recv() => {
                        tracing::info!("SIGHUP: reconcile requested");
                        // Full: a reconcile is already pending.
                        let _ = trigger.try_send(Trigger::Hangup);
                    }
                }
            }
            shutdown.cancel();
        });
    }
}
