//! `guestops apply`: one reconcile — observe, plan, apply, record.

use std::io::{IsTerminal, Write};

use guestops::reconcile::apply::{ApplyReport, ChangeOutcome, Progress};
use guestops::reconcile::plan::{self, PlanFormat, RenderOptions};
use guestops::reconcile::state::StateStore;
use guestops::reconcile::{Context, Mode, Outcome, Settings, run_once};
use tokio_util::sync::CancellationToken;

use super::plan::{Loaded, TargetArgs, dry_run, load};
use super::{Status, connect, stdout_color};

/// Arguments of `guestops apply`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 every change done (or nothing to do), 1 error or a failed \
change, 3 refused by policy (the refused changes were not made; a mass-removal refusal stops \
the whole plan). With --format json, stdout is one JSON document: the plan and the result of \
every change (docs/plan-json.md)."
)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the plan and stop (the same as `guestops plan`).
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `guestops apply`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    let Some(Loaded { config, desired }) = load(&args.target.source).await? else {
        return Ok(Status::Error);
    };
    let format = args.target.format;
    let outcome = if args.dry_run {
        let state = StateStore::read_only(&config.state.dir)?;
        dry_run(&config, &desired, args.target.force, state).await?
    } else {
        // Taken before reading anything, so that two instances never plan against each other.
        let mut store = StateStore::open(&config.state.dir)?;
        super::warn_if_suspended(store.state());
        let clients = connect(&config)?;
        let settings = Settings::from_config(&config, args.target.force);
        let ctx = Context {
            tenant: &clients.tenant,
            portal: &clients.portal,
            settings: &settings,
        };
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_signal.cancel();
            }
        });
        super::reading_notice();
        let mode = Mode::Apply {
            store: &mut store,
            progress: terminal_progress(format),
        };
        run_once(&ctx, &desired, mode, &cancel).await?
    };
    print(&outcome, format, &mut std::io::stdout().lock())?;
    Ok(Status::of(outcome.verdict(), false))
}

/// The plan, then what became of each change: one JSON document with `--format json`.
fn print(outcome: &Outcome, format: PlanFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    if format == PlanFormat::Json {
        guestops::reconcile::apply::write_json(
            &outcome.plan,
            Some(&outcome.revision),
            outcome.report.as_ref(),
            out,
        )?;
    } else {
        let options = RenderOptions {
            revision: Some(outcome.revision.clone()),
            color: stdout_color(),
        };
        plan::render_with(&outcome.plan, format, &options, out)?;
        if let Some(report) = &outcome.report {
            print_report(report, out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// One line per finished change on stderr, only when stderr is a terminal (quiet in logs
/// and pipes).
fn terminal_progress(format: PlanFormat) -> Option<Progress> {
    if !std::io::stderr().is_terminal() || format == PlanFormat::Json {
        return None;
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    Some(std::sync::Arc::new(move |outcome: &ChangeOutcome| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "[{n}] {:<6} {} {}",
            if outcome.is_failed() {
                "failed"
            } else {
                "done"
            },
            outcome.change.action.name(),
            outcome.change.email
        );
    }))
}

/// The summary after an apply: counts, then every failure with its reason.
pub fn print_report(report: &ApplyReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "\nApplied: {} done, {} failed, {} skipped.",
        report.succeeded(),
        report.failed(),
        report.skipped()
    )?;
    for outcome in report.outcomes.iter().filter(|o| o.is_failed()) {
        writeln!(
            out,
            "  failed: {} {}: {}",
            outcome.change.action.name(),
            outcome.change.email,
            outcome.detail()
        )?;
    }
    if report.failed() > 0 {
        writeln!(
            out,
            "The failed changes are retried by the next apply; nothing else was affected."
        )?;
    }
    Ok(())
}
