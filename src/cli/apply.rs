//! `guestops apply`: one reconcile — observe, plan, apply, record; or a saved plan
//! (`guestops apply FILE`), applied exactly or refused when stale; at a terminal, the plan is
//! shown and confirmed first (unless `--yes`), and exactly the plan shown is applied.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use guestops::reconcile::apply::{ApplyReport, ChangeOutcome, Progress};
use guestops::reconcile::plan::{self, PlanFormat, RenderOptions};
use guestops::reconcile::saved::{PolicySettings, SavedPlan, Target};
use guestops::reconcile::state::StateStore;
use guestops::reconcile::{Context, Mode, Outcome, Settings, run_once};
use tokio_util::sync::CancellationToken;

use super::plan::{Loaded, TargetArgs, check_only, dry_run_with, load, only_note};
use super::{Status, connect, stdout_color};

/// Arguments of `guestops apply`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 every change done (or nothing to do), 1 error or a failed \
change (also: a saved plan that is stale or made for another target or policy, nothing \
written; an apply declined at the prompt), 3 refused by policy (the refused changes were not \
made; a mass-removal refusal stops the whole plan). With --format json, stdout is one JSON \
document: the plan and the result of every change (docs/plan-json.md).

At a terminal (stdin), apply shows the plan and asks before it writes, then applies exactly \
the plan shown (or nothing, when the tenant or the portal changed meanwhile); --yes, a saved \
plan and a stdin that is not a terminal (CI, scripts) apply without asking."
)]
pub struct Args {
    /// A plan saved by `guestops plan --out FILE` (docs/plan-file.md): re-read both systems,
    /// plan again and make exactly its changes; refused (exit 1, nothing written) when the
    /// fresh plan differs, users.yaml is at another revision, or the file was made for another
    /// tenant, app, portal or policy. Its --force and --only are those of the plan.
    #[arg(value_name = "FILE", conflicts_with_all = ["dry_run", "force", "only"])]
    pub plan: Option<PathBuf>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the plan and stop (the same as `guestops plan`).
    #[arg(long)]
    pub dry_run: bool,
    /// Apply without asking, also at a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Whether `apply` shows the plan and asks before it writes: only when stdin is a terminal,
/// without `--yes`, and not for a saved plan (it was reviewed when it was saved).
pub fn asks_confirmation(stdin_is_terminal: bool, yes: bool, saved_plan: bool) -> bool {
    stdin_is_terminal && !yes && !saved_plan
}

/// Asks on `prompt` whether to make `changes` changes and reads one line of `input`: only
/// `yes` confirms; anything else, or the end of the input, declines.
pub fn confirm(
    changes: usize,
    input: &mut dyn BufRead,
    prompt: &mut dyn Write,
) -> std::io::Result<bool> {
    write!(
        prompt,
        "\nMake these {changes} change{}? Only 'yes' is accepted: ",
        if changes == 1 { "" } else { "s" }
    )?;
    prompt.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// Runs `guestops apply`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    // A file that is no plan is refused before anything is read.
    let saved = args.plan.as_deref().map(SavedPlan::read).transpose()?;
    let Some(Loaded { config, desired }) = load(&args.target.source).await? else {
        return Ok(Status::Error);
    };
    let format = args.target.format;
    let mut settings = match &saved {
        Some(saved) => {
            saved.check_target(&Target::of(&config))?;
            let mut settings = Settings::from_config(&config, saved.force);
            saved.check_policy(&PolicySettings::of(&settings.policy))?;
            saved.check_revision(&desired)?;
            settings.policy.only = saved.only();
            settings
        }
        None => {
            let mut settings = Settings::from_config(&config, args.target.force);
            settings.policy.only = args.target.only();
            settings
        }
    };
    let only = settings.policy.only.clone();
    let mut stdout = std::io::stdout();
    if args.dry_run {
        let state = StateStore::read_only(&config.state.dir)?;
        check_only(only.as_ref(), &desired, &state)?;
        let outcome = dry_run_with(&config, &desired, &settings, state).await?;
        print(&outcome, format, only.as_ref(), false, &mut stdout)?;
        return Ok(Status::of(outcome.verdict(), false));
    }
    // Taken before reading anything, so that two instances never plan against each other.
    let mut store = StateStore::open(&config.state.dir)?;
    super::warn_if_suspended(store.state());
    check_only(only.as_ref(), &desired, store.state())?;
    let asks = asks_confirmation(std::io::stdin().is_terminal(), args.yes, saved.is_some());
    // The plan shown at the prompt is applied as a saved plan: it needs its facts.
    settings.facts = asks;
    let clients = connect(&config)?;
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
    let progress = terminal_progress(format);
    let mut shown = false;
    let outcome = if let Some(saved) = &saved {
        let mode = Mode::ApplySaved {
            store: &mut store,
            progress,
            saved,
        };
        run_once(&ctx, &desired, mode, &cancel).await?
    } else if asks {
        let planned =
            run_once(&ctx, &desired, Mode::DryRun(store.state().clone()), &cancel).await?;
        // The plan for the person deciding: on stdout, or as text on stderr when stdout is
        // JSON (no lock is held across the apply below).
        if format == PlanFormat::Json {
            let mut stderr = std::io::stderr().lock();
            print(
                &planned,
                PlanFormat::Text,
                only.as_ref(),
                false,
                &mut stderr,
            )?;
        } else {
            print(&planned, format, only.as_ref(), false, &mut stdout)?;
        }
        if planned.plan.is_empty() || planned.plan.is_refused() {
            // Nothing to confirm: in sync, or refused as a whole (nothing is written).
            if format == PlanFormat::Json {
                print(&planned, format, only.as_ref(), false, &mut stdout)?;
            }
            return Ok(Status::of(planned.verdict(), false));
        }
        let confirmed = confirm(
            planned.plan.changes.len(),
            &mut std::io::stdin().lock(),
            &mut std::io::stderr(),
        )?;
        if !confirmed {
            let _ = writeln!(std::io::stderr(), "Apply cancelled; nothing was changed.");
            return Ok(Status::Error);
        }
        shown = format != PlanFormat::Json;
        let confirmed_plan = SavedPlan::new(
            Target::of(&config),
            &settings.policy,
            &desired,
            &planned.plan,
            planned.facts.clone().unwrap_or_default(),
            (settings.clock)(),
        );
        let mode = Mode::ApplySaved {
            store: &mut store,
            progress,
            saved: &confirmed_plan,
        };
        run_once(&ctx, &desired, mode, &cancel)
            .await
            .context("the tenant or the portal changed while the plan waited for confirmation")?
    } else {
        let mode = Mode::Apply {
            store: &mut store,
            progress,
        };
        run_once(&ctx, &desired, mode, &cancel).await?
    };
    print(&outcome, format, only.as_ref(), shown, &mut stdout)?;
    Ok(Status::of(outcome.verdict(), false))
}

/// The plan (unless `shown` already), then what became of each change: one JSON document
/// with `--format json`.
fn print(
    outcome: &Outcome,
    format: PlanFormat,
    only: Option<&std::collections::BTreeSet<String>>,
    shown: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if format == PlanFormat::Json {
        guestops::reconcile::apply::write_json(
            &outcome.plan,
            Some(&outcome.revision),
            outcome.report.as_ref(),
            out,
        )?;
    } else {
        if !shown {
            let options = RenderOptions {
                revision: Some(outcome.revision.clone()),
                color: stdout_color(),
            };
            plan::render_with(&outcome.plan, format, &options, out)?;
            if let Some(only) = only {
                out.write_all(only_note(only).as_bytes())?;
            }
        }
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
        writeln!(out, "  failed: {}", outcome.line())?;
    }
    if report.failed() > 0 {
        writeln!(
            out,
            "The failed changes are retried by the next apply; nothing else was affected."
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_terminal_without_yes_and_without_a_saved_plan_is_asked() {
        assert!(asks_confirmation(true, false, false));
        assert!(
            !asks_confirmation(false, false, false),
            "CI, scripts, pipes"
        );
        assert!(!asks_confirmation(true, true, false), "--yes");
        assert!(!asks_confirmation(true, false, true), "a saved plan");
    }

    #[test]
    fn only_yes_confirms() {
        for (answer, expected) in [
            ("yes\n", true),
            ("  yes  \n", true),
            ("yes", true),
            ("y\n", false),
            ("YES\n", false),
            ("no\n", false),
            ("\n", false),
            ("", false),
        ] {
            let mut prompt = Vec::new();
            let confirmed = confirm(2, &mut answer.as_bytes(), &mut prompt).expect("in-memory I/O");
            assert_eq!(confirmed, expected, "answer {answer:?}");
            let prompt = String::from_utf8(prompt).expect("utf-8");
            assert!(prompt.contains("Make these 2 changes?"), "{prompt}");
            assert!(prompt.contains("Only 'yes'"), "{prompt}");
        }
    }
}
