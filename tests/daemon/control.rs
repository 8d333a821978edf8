//! Issue 10: the control socket of a running `guestops run` (`state.dir/control.sock`) and the
//! commands that go through it — `suspend`, `resume`, `reconcile`, `state forget` — plus
//! `state list|show`, and the same commands with no daemon running (the lock taken, the state
//! edited directly). The real binary against the simulator, following a git repository.
//!
//! "Does not reconcile while suspended" is checked without timing: the loop is sequential, so
//! once `/readyz` shows a revision loaded *after* another one, the iteration that loaded the
//! earlier one (and would have reconciled it) has finished.

use std::time::Duration;

use guestops::config::Config;
use guestops::sim::FailRule;

use super::{
    ANA, BOB, CARL, Repo, Setup, readyz, reconciles, support, support::users_yaml,
    support::wait_for,
};

/// `guestops <command> --config <setup's config> <args…>`.
async fn run(setup: &Setup, command: &[&str], args: &[&str]) -> support::Run {
    let config = setup.config.display().to_string();
    let mut all: Vec<&str> = command.to_vec();
    all.extend(["--config", &config]);
    all.extend(args);
    support::guestops(&all).await
}

/// Polls and resyncs that never come during a test: only the commands make it reconcile.
fn quiet(config: &mut Config) {
    config.source.poll_interval = Duration::from_secs(3600);
    config.source.resync_interval = Duration::from_secs(3600);
}

async fn suspended_gauge(guestops: &support::Guestops) -> Option<f64> {
    let (_, text) = super::get(&guestops.url("/metrics")).await?;
    support::sample(&support::parse_exposition(&text), "guestops_suspended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_stops_reconciling_keeps_serving_and_resume_reconciles_without_a_restart() {
    let repo = Repo::new();
    repo.commit(&users_yaml(&[ANA]), "add ana");
    let setup = Setup::new(&repo).await;
    let guestops = setup.start(None);
    wait_for("ana registered", &guestops, || async {
        setup.registered(ANA.0).then_some(())
    })
    .await;
    assert_eq!(suspended_gauge(&guestops).await, Some(0.0));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let socket = setup.dir.path().join("state/control.sock");
        let mode = std::fs::metadata(&socket)
            .expect("the daemon created its control socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", socket.display());
    }

    let out = run(&setup, &["suspend"], &["--reason", "CHG-42 freeze"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("suspended since") && out.stdout.contains("CHG-42 freeze"),
        "{}",
        out.stdout
    );
    // Recorded by the daemon in state.json, and shown by /readyz and /metrics.
    let state = setup.state_json();
    assert_eq!(state["suspended"]["reason"], "CHG-42 freeze", "{state}");
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").expect("/proc/self").uid()
    };
    assert!(
        state["suspended"]["by"]
            .as_str()
            .is_some_and(|by| by.contains(&format!("uid {uid}"))),
        "the uid the socket saw: {state}"
    );
    let (status, body) = readyz(&guestops).await.expect("/readyz answers");
    assert_eq!(status, 200, "a suspension is not a fault: {body}");
    assert_eq!(body["suspended"]["reason"], "CHG-42 freeze", "{body}");
    assert_eq!(suspended_gauge(&guestops).await, Some(1.0));
    let again = run(&setup, &["suspend"], &["--reason", "other"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("already suspended"),
        "{}",
        again.stdout
    );
    assert_eq!(
        setup.state_json()["suspended"]["reason"],
        "CHG-42 freeze",
        "the first suspension is kept"
    );

    // Two commits loaded one after the other: the iteration that loaded the first one is over,
    // and it reconciled nothing.
    let second = repo.commit(&users_yaml(&[ANA, BOB]), "add bob");
    wait_for("the second commit loaded", &guestops, || async {
        readyz(&guestops)
            .await
            .filter(|(_, b)| b["loadedRevision"] == second.as_str())
    })
    .await;
    let successes = reconciles(&guestops, "success").await;
    let third = repo.commit(&users_yaml(&[ANA, BOB, (CARL, "Carl")]), "add carl");
    wait_for("the third commit loaded", &guestops, || async {
        readyz(&guestops)
            .await
            .filter(|(_, b)| b["loadedRevision"] == third.as_str())
    })
    .await;
    assert_eq!(
        setup.invitations(BOB.0),
        0,
        "nothing reconciled while suspended"
    );
    assert!(!setup.registered(BOB.0));
    assert_eq!(reconciles(&guestops, "success").await, successes);

    // reconcile says why it does nothing; plan works; both leave the suspension in place.
    let refused = run(&setup, &["reconcile"], &[]).await;
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("suspended") && refused.stderr.contains("guestops resume"),
        "{}",
        refused.stderr
    );
    let plan = run(&setup, &["plan"], &[]).await;
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stdout.contains(BOB.0), "{}", plan.stdout);
    assert_eq!(setup.invitations(BOB.0), 0);

    let resumed = run(&setup, &["resume"], &[]).await;
    assert_eq!(resumed.code, 0, "{}{}", resumed.stdout, resumed.stderr);
    assert!(resumed.stdout.contains("resumed"), "{}", resumed.stdout);
    wait_for("bob and carl invited and registered", &guestops, || async {
        (setup.registered(BOB.0) && setup.registered(CARL)).then_some(())
    })
    .await;
    assert_eq!(setup.invitations(BOB.0), 1);
    let (_, body) = readyz(&guestops).await.expect("/readyz answers");
    assert_eq!(body["suspended"], serde_json::Value::Null, "{body}");
    assert_eq!(suspended_gauge(&guestops).await, Some(0.0));
    assert!(setup.state_json().get("suspended").is_none());

    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !setup.dir.path().join("state/control.sock").exists(),
        "the socket is removed on a clean exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_waits_for_its_own_reconcile_and_exits_as_apply() {
    let repo = Repo::new();
    repo.commit(&users_yaml(&[ANA]), "add ana");
    let setup = Setup::new_with(&repo, |config| {
        quiet(config);
        config.policy.allowed_domains = vec!["partner.example".to_owned()];
    })
    .await;
    let guestops = setup.start(None);
    wait_for("the first reconcile", &guestops, || async {
        reconciles(&guestops, "success").await.filter(|n| *n >= 1.0)
    })
    .await;

    // A commit the daemon will not poll for an hour: the reconcile asked for reads it.
    let second = repo.commit(&users_yaml(&[ANA, BOB]), "add bob");
    let out = run(&setup, &["reconcile"], &[]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&second[..7]) && out.stdout.contains("changes applied"),
        "the outcome of that reconcile: {}",
        out.stdout
    );
    assert!(
        setup.registered(BOB.0) && setup.invitations(BOB.0) == 1,
        "done when the command returns"
    );

    // A failed change: exit 1, the failure printed.
    setup.sim.state().portal_faults.fail.push(FailRule {
        method: Some("POST".to_owned()),
        path_prefix: "/api/user".to_owned(),
        query_contains: None,
        status: 403,
        times: None,
        after_processing: false,
    });
    repo.commit(&users_yaml(&[ANA, BOB, (CARL, "Carl")]), "add carl");
    let out = run(&setup, &["reconcile"], &[]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("failed: register carl@partner.example"),
        "{}",
        out.stdout
    );
    setup.sim.state().portal_faults.fail.clear();

    // Refused by policy (a domain outside allowedDomains): exit 3, the others applied.
    repo.commit(
        &users_yaml(&[ANA, BOB, (CARL, "Carl"), ("eve@elsewhere.example", "Eve")]),
        "add eve",
    );
    let out = run(&setup, &["reconcile"], &[]).await;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("refused by policy"), "{}", out.stdout);
    assert!(setup.registered(CARL), "carl is retried and registered");
    assert_eq!(setup.invitations("eve@elsewhere.example"), 0);

    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    let out = run(&setup, &["reconcile"], &[]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no guestops daemon runs") && out.stderr.contains("guestops apply"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_list_and_show_say_how_and_forget_through_the_daemon_drops_ownership_for_good() {
    let repo = Repo::new();
    let first = repo.commit(&users_yaml(&[ANA, BOB]), "add ana and bob");
    let setup = Setup::new_with(&repo, |config| {
        quiet(config);
        config.policy.prune = true;
        config.policy.guest_on_removal = guestops::reconcile::plan::GuestOnRemoval::Delete;
    })
    .await;
    setup.sim.state().graph.add_guest(ANA.0, ANA.1);
    let guestops = setup.start(None);
    wait_for("ana and bob registered", &guestops, || async {
        (setup.registered(ANA.0) && setup.registered(BOB.0)).then_some(())
    })
    .await;
    wait_for("the first reconcile recorded", &guestops, || async {
        reconciles(&guestops, "success").await.filter(|n| *n >= 1.0)
    })
    .await;

    let list = run(&setup, &["state", "list"], &["--format", "json"]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let doc: serde_json::Value = serde_json::from_str(&list.stdout).expect("one JSON document");
    let users = doc["users"].as_array().expect("users");
    let of = |email: &str| {
        users
            .iter()
            .find(|u| u["email"] == email)
            .unwrap_or_else(|| panic!("{email} listed: {doc}"))
            .clone()
    };
    assert_eq!(of(ANA.0)["guest"]["acquired"]["how"], "adopted", "{doc}");
    assert_eq!(of(BOB.0)["guest"]["acquired"]["how"], "invited", "{doc}");
    assert_eq!(
        of(BOB.0)["portal"]["acquired"]["how"],
        "registered",
        "{doc}"
    );
    assert_eq!(of(BOB.0)["portal"]["acquired"]["revision"], first.as_str());
    assert_eq!(doc["suspended"], serde_json::Value::Null);
    let text = run(&setup, &["state", "list"], &[]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("adopted") && text.stdout.contains(&format!("@{}", &first[..7])),
        "{}",
        text.stdout
    );
    let show = run(&setup, &["state", "show", "BOB@partner.example"], &[]).await;
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(
        show.stdout.contains("guest:   owned: invited at") && show.stdout.contains(&first),
        "{}",
        show.stdout
    );
    let unknown = run(&setup, &["state", "show", "nobody@partner.example"], &[]).await;
    assert_eq!(unknown.code, 1, "{}", unknown.stdout);
    assert!(unknown.stderr.contains("no record"), "{}", unknown.stderr);

    // Still in users.yaml: refused, with the reason.
    let refused = run(&setup, &["state", "forget", BOB.0], &[]).await;
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("still in users.yaml") && refused.stderr.contains(&first[..7]),
        "{}",
        refused.stderr
    );

    // Removed from users.yaml (prune on): forgotten before the daemon saw the commit, so the
    // reconcile that follows leaves bob alone — here and at every later reconcile.
    let second = repo.commit(&users_yaml(&[ANA]), "remove bob");
    let forgot = run(&setup, &["state", "forget", BOB.0], &[]).await;
    assert_eq!(forgot.code, 0, "{}{}", forgot.stdout, forgot.stderr);
    assert!(
        forgot.stdout.contains("forgot bob@partner.example"),
        "{}",
        forgot.stdout
    );
    for _ in 0..2 {
        let out = run(&setup, &["reconcile"], &[]).await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(&second[..7]), "{}", out.stdout);
    }
    assert!(setup.registered(BOB.0), "bob's registration is left alone");
    assert!(
        !setup.sim.state().graph.find_by_email(BOB.0).is_empty(),
        "bob's guest is left alone"
    );
    assert!(setup.state_json()["users"].get(BOB.0).is_none());
    let audit =
        std::fs::read_to_string(setup.dir.path().join("state/audit.jsonl")).expect("audit.jsonl");
    let line: serde_json::Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["action"] == "forget")
        .unwrap_or_else(|| panic!("a forget line in:\n{audit}"));
    assert_eq!(line["system"], "state");
    assert_eq!(line["user"], BOB.0);
    assert_eq!(line["revision"], second.as_str());
    let again = run(&setup, &["state", "forget", BOB.0], &[]).await;
    assert_eq!(again.code, 1, "{}", again.stdout);
    assert!(again.stderr.contains("no record"), "{}", again.stderr);

    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "{log}");
}

/// No daemon: the commands take the lock and edit the state; a daemon started afterwards
/// starts suspended; `apply` warns and applies; a lock held by a process that does not
/// answer on the socket is reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_the_commands_edit_the_state_and_a_silent_lock_holder_is_named() {
    let repo = Repo::new();
    repo.commit(&users_yaml(&[ANA, BOB]), "add ana and bob");
    let setup = Setup::new(&repo).await;
    let apply = run(&setup, &["apply"], &[]).await;
    assert_eq!(apply.code, 0, "{}{}", apply.stdout, apply.stderr);

    let refused = run(&setup, &["state", "forget", BOB.0], &[]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("still in users.yaml"),
        "{}",
        refused.stderr
    );
    repo.commit(&users_yaml(&[ANA]), "remove bob");
    let forgot = run(&setup, &["state", "forget", BOB.0], &[]).await;
    assert_eq!(forgot.code, 0, "{}{}", forgot.stdout, forgot.stderr);
    assert!(setup.state_json()["users"].get(BOB.0).is_none());

    let suspend = run(&setup, &["suspend"], &["--reason", "migration"]).await;
    assert_eq!(suspend.code, 0, "{}{}", suspend.stdout, suspend.stderr);
    assert!(
        suspend.stdout.contains("no daemon runs"),
        "{}",
        suspend.stdout
    );
    assert_eq!(setup.state_json()["suspended"]["reason"], "migration");

    // A daemon started now is suspended from the start and reconciles nothing.
    repo.commit(&users_yaml(&[ANA, (CARL, "Carl")]), "add carl");
    let guestops = setup.start(None);
    let (status, body) = wait_for("the daemon loaded the tip", &guestops, || async {
        readyz(&guestops)
            .await
            .filter(|(_, b)| b["loadedRevision"].is_string())
    })
    .await;
    assert_eq!(body["suspended"]["reason"], "migration", "{body}");
    assert_eq!(status, 200);
    let out = run(&setup, &["reconcile"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("suspended"), "{}", out.stderr);
    assert_eq!(setup.invitations(CARL), 0);
    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "{log}");

    // A manual apply while suspended: a warning, and it applies.
    let apply = run(&setup, &["apply"], &[]).await;
    assert_eq!(apply.code, 0, "{}{}", apply.stdout, apply.stderr);
    assert!(
        apply.stderr.contains("warning: reconciles are suspended"),
        "{}",
        apply.stderr
    );
    assert_eq!(setup.invitations(CARL), 1);
    let resume = run(&setup, &["resume"], &[]).await;
    assert_eq!(resume.code, 0, "{}{}", resume.stdout, resume.stderr);
    assert!(setup.state_json().get("suspended").is_none());

    // The lock held by a process that has no control socket (here: this test).
    let state_dir = setup.dir.path().join("state");
    let _held = guestops::reconcile::state::StateStore::open(&state_dir).expect("the lock");
    for command in [
        &["suspend"][..],
        &["resume"],
        &["reconcile"],
        &["state", "forget", BOB.0],
    ] {
        let out = run(&setup, command, &[]).await;
        assert_eq!(out.code, 1, "{command:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("nothing answers on")
                && out.stderr.contains(&format!("pid {}", std::process::id())),
            "{command:?}: {}",
            out.stderr
        );
    }
    // list and show need no lock.
    let list = run(&setup, &["state", "list"], &[]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains(ANA.0), "{}", list.stdout);
}

// ---------------------------------------------------------------------------------------------
// The loop on a paused clock, with requests sent straight into its control channel

mod paused {
    use std::time::Duration;

    use guestops::reconcile::state::StateStore;
    use guestops::remote::graph::fake::{FakeTenant, TenantOp};
    use guestops::remote::portal::fake::{FakePortal, PortalOp};
    use guestops::service::control::{Answer, ControlRequest, Request, Response};
    use guestops::service::daemon::{Daemon, DaemonError};
    use guestops::service::metrics::Metrics;
    use guestops::service::server::Health;
    use guestops::service::systemd::Notifier;
    use tokio::sync::{mpsc, oneshot};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use super::super::{ANA, BOB, MemSource, RESYNC, pass, settings};
    use super::users_yaml;

    struct Controlled {
        source: MemSource,
        tenant: FakeTenant,
        portal: FakePortal,
        control: mpsc::Sender<ControlRequest>,
        shutdown: CancellationToken,
        task: JoinHandle<Result<(), DaemonError>>,
    }

    fn start(dir: &std::path::Path, portal: FakePortal) -> Controlled {
        let source = MemSource::new(&users_yaml(&[ANA]));
        let tenant = FakeTenant::new();
        let (_triggers, trigger_rx) = mpsc::channel(4);
        let (control, control_rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let daemon = Daemon {
            settings: settings(),
            source: source.clone(),
            tenant: tenant.clone(),
            portal: portal.clone(),
            store: StateStore::open(dir).expect("state directory"),
            metrics: Metrics::new(),
            health: Health::new(Duration::from_secs(3600)),
            notifier: Notifier::disabled(),
            notifications: guestops::service::notify::Notifications::disabled(),
        };
        let task = tokio::spawn(daemon.run_with_control(trigger_rx, control_rx, shutdown.clone()));
        Controlled {
            source,
            tenant,
            portal,
            control,
            shutdown,
            task,
        }
    }

    impl Controlled {
        /// Sends `request`; the answer arrives on the returned receiver.
        async fn send(&self, request: Request) -> oneshot::Receiver<Response> {
            let (reply, answer) = oneshot::channel();
            self.control
                .send(ControlRequest {
                    request,
                    peer_uid: Some(0),
                    reply,
                })
                .await
                .expect("the loop takes requests");
            answer
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task
                .await
                .expect("no panic")
                .expect("a clean shutdown");
        }
    }

    /// Waits (in virtual time, at most an hour) for the answer.
    async fn answer_of(mut answer: oneshot::Receiver<Response>) -> Response {
        for _ in 0..3600 {
            match answer.try_recv() {
                Ok(response) => return response,
                Err(oneshot::error::TryRecvError::Empty) => pass(Duration::from_secs(1)).await,
                Err(oneshot::error::TryRecvError::Closed) => panic!("the loop dropped the request"),
            }
        }
        panic!("no answer within an hour of virtual time");
    }

    /// A `reconcile` asked for while a reconcile runs is answered by the next one, which
    /// reads the source again, never by the one in flight.
    #[tokio::test(start_paused = true)]
    async fn a_reconcile_asked_for_during_a_reconcile_is_answered_by_the_next_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let portal = FakePortal::new();
        portal.set_latency(Duration::from_secs(30));
        let d = start(dir.path(), portal);
        while d.portal.calls(PortalOp::CreateUser) == 0 {
            pass(Duration::from_secs(1)).await;
        }
        assert!(
            d.portal.users().is_empty(),
            "ana's registration is in flight"
        );
        let first = d.source.revision_id();
        d.source.set(&users_yaml(&[ANA, BOB]));
        let answer = d.send(Request::Reconcile).await;
        let response = answer_of(answer).await;
        assert_eq!(response.answer, Answer::Ok, "{response:?}");
        let report = response.reconcile.expect("the reconcile's outcome");
        assert_ne!(report.revision, first, "not the reconcile in flight");
        assert_eq!(report.revision, d.source.revision_id());
        assert!(
            d.portal.user(BOB.0).is_some(),
            "bob registered when the answer comes"
        );
        d.stop().await;
    }

    /// A suspension asked for during a reconcile takes effect after it; then nothing is
    /// read or written over many resyncs, the state says so, and a restart stays suspended
    /// until `resume`, which reconciles at once.
    #[tokio::test(start_paused = true)]
    async fn suspended_nothing_is_read_over_many_resyncs_and_it_outlives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let portal = FakePortal::new();
        portal.set_latency(Duration::from_secs(30));
        let d = start(dir.path(), portal);
        while d.portal.calls(PortalOp::CreateUser) == 0 {
            pass(Duration::from_secs(1)).await;
        }
        let answer = d
            .send(Request::Suspend {
                reason: Some("freeze".into()),
                by: "ops".into(),
            })
            .await;
        let response = answer_of(answer).await;
        assert_eq!(response.answer, Answer::Ok, "{response:?}");
        assert!(
            d.portal.user(ANA.0).is_some(),
            "the reconcile in flight finished first"
        );
        let reads = d.tenant.calls(TenantOp::ListGuests);
        d.source.set(&users_yaml(&[ANA, BOB]));
        pass(RESYNC * 10).await;
        assert_eq!(d.tenant.calls(TenantOp::ListGuests), reads, "nothing read");
        assert!(d.portal.user(BOB.0).is_none(), "nothing written");
        let refused = answer_of(d.send(Request::Reconcile).await).await;
        assert_eq!(refused.answer, Answer::Suspended, "{refused:?}");
        d.stop().await;
        let state = StateStore::read_only(dir.path()).expect("state");
        let suspension = state.suspended.expect("recorded in state.json");
        assert_eq!(suspension.reason.as_deref(), Some("freeze"));
        assert_eq!(suspension.by, "ops (uid 0)");

        // Restarted (new fakes: nothing of the first run is counted): still suspended.
        let d = start(dir.path(), FakePortal::new());
        pass(RESYNC * 3).await;
        assert_eq!(
            d.tenant.calls(TenantOp::ListGuests),
            0,
            "a restarted daemon stays suspended"
        );
        let resumed = answer_of(d.send(Request::Resume { by: "ops".into() }).await).await;
        assert_eq!(resumed.answer, Answer::Ok, "{resumed:?}");
        pass(Duration::from_secs(1)).await;
        assert_eq!(
            d.tenant.calls(TenantOp::ListGuests),
            1,
            "resume reconciles at once, well before the next resync"
        );
        assert!(d.portal.user(ANA.0).is_some());
        d.stop().await;
    }
}
