//! `guestops apply`: one reconcile — observe, plan, apply.

use std::io::{IsTerminal, Write};

use guestops::reconcile::apply::{ApplyOptions, ApplyReport};
use guestops::reconcile::plan;
use guestops::reconcile::state::StateStore;
use tokio_util::sync::CancellationToken;

use super::plan::{Loaded, TargetArgs, load};
use super::{Status, connect, stdout_color};

/// Arguments of `guestops apply`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 every change done (or nothing to do), 1 error or a failed \
change, 3 refused by policy (nothing written)."
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
    // Taken before reading anything, so that two instances never plan against each other.
    let mut store = StateStore::open(&config.state.dir)?;
    let clients = connect(&config)?;
    super::reading_notice();
    let observed = guestops::reconcile::observe(
        &desired.state,
        store.state(),
        &clients.tenant,
        &clients.portal,
        config.tenant.concurrency,
    )
    .await?;
    if store.state_mut().note_seen_guests(&observed) {
        store.save()?;
    }
    let plan = plan::plan(
        &desired.state,
        &observed,
        store.state(),
        &config.policy(args.target.force),
        chrono::Utc::now(),
    );
    let mut out = std::io::stdout().lock();
    plan::render(&plan, args.target.format, stdout_color(), &mut out)?;
    out.flush()?;
    if plan.is_refused() {
        return Ok(Status::Refused);
    }
    if args.dry_run || plan.is_empty() {
        return Ok(Status::Success);
    }

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let options = ApplyOptions {
        tenant_concurrency: config.tenant.concurrency,
        portal_concurrency: config.portal.concurrency,
        revision: Some(desired.revision.clone()),
        author: None,
        progress: terminal_progress(plan.changes.len()),
        ..ApplyOptions::default()
    };
    let report = guestops::reconcile::apply::apply(
        &plan,
        &clients.tenant,
        &clients.portal,
        &mut store,
        &options,
        &cancel,
    )
    .await?;
    store.state_mut().revision = Some(desired.revision);
    store.save()?;
    print_report(&report, &mut out)?;
    Ok(if report.failed() > 0 || cancel.is_cancelled() {
        Status::Error
    } else {
        Status::Success
    })
}

/// One line per finished change on stderr, only when stderr is a terminal (quiet in logs
/// and pipes).
fn terminal_progress(total: usize) -> Option<guestops::reconcile::apply::Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    Some(std::sync::Arc::new(
        move |outcome: &guestops::reconcile::apply::ChangeOutcome| {
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "[{n}/{total}] {:<6} {} {}",
                if outcome.is_failed() {
                    "failed"
                } else {
                    "done"
                },
                outcome.change.action.name(),
                outcome.change.email
            );
        },
    ))
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
