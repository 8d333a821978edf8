//! The `guestops` command line: parses arguments, sets up tracing, dispatches to
//! `cli::<subcommand>` and maps the result to an exit code. The work is in the library.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

mod cli;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (validate: the file is valid; plan: no error; apply: every change done;
     doctor: no check failed; probe portal: the facts are recorded)
  1  error: invalid users.yaml or config, a failed read, a change that failed, a failed
     doctor check, a refused probe, or a usage error (an unknown command or option)
  2  changes pending (plan --detailed-exitcode only, as Terraform)
  3  refused by policy: the refused changes were not made (allowedDomains refuses one user's
     changes, the others proceed; maxDeletions and an empty desired state stop the whole plan)

Environment:
  RUST_LOG            log filter, e.g. guestops=debug (logs go to stderr; default: info for
                      `run`, which says what it changed, warn for the other commands)
  GUESTOPS_*          overrides of every config key (see docs/config.md)";

/// guestops: the external administrators of a Power Embedded organization, declared in git.
///
/// users.yaml lists the external admins; guestops makes the Entra ID tenant (B2B guest
/// invitations through Microsoft Graph) and the Power Embedded portal (user registrations)
/// match it, safely: it adopts what exists, never removes what it does not own, and refuses
/// mass removals.
#[derive(Debug, Parser)]
#[command(name = "guestops", version, after_help = EXIT_CODES, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a users.yaml file: every problem at once, with line and column.
    Validate(cli::validate::Args),
    /// Read the tenant and the portal and print what apply would change (read-only).
    Plan(cli::plan::Args),
    /// Reconcile once: plan, then make the changes.
    Apply(cli::apply::Args),
    /// Run the daemon: follow the git branch (or a file) and keep both systems in sync.
    Run(cli::run::Args),
    /// One row per desired user: invited / pending since / accepted, registered, role, owned.
    Status(cli::status::Args),
    /// What a change of users.yaml between two git revisions grants and revokes (offline).
    Diff(cli::diff::Args),
    /// Write a first users.yaml from the portal's admins and their tenant accounts (read-only).
    Import(cli::import::Args),
    /// Check the setup: config, secrets, Graph permissions, portal, git, state, clock (read-only).
    Doctor(cli::doctor::Args),
    /// One-time probe of the portal's undocumented behaviour (a throw-away user, deleted again).
    #[command(
        subcommand,
        after_help = "Exit codes: 0 the probe ran and the facts are recorded, 1 refused, \
stopped, not confirmed, or a usage error."
    )]
    Probe(cli::probe::Command),
    /// Run guestops against its built-in simulator and show what it does.
    Demo(cli::demo::Args),
    /// Serve the simulator (Graph, token endpoint, portal API) on a loopback port.
    Sim(cli::sim::Args),
    /// Suspend the daemon's reconciles (recorded in state.json; health and metrics go on).
    Suspend(cli::control::SuspendArgs),
    /// Resume the daemon's reconciles (it reconciles at once).
    Resume(cli::control::ResumeArgs),
    /// Ask the running daemon to reconcile now and print that reconcile's outcome.
    Reconcile(cli::control::ReconcileArgs),
    /// What guestops owns and why; drop ownership of one user.
    #[command(
        subcommand,
        after_help = "Exit codes: 0 done, 1 an error, a user with no record, or a forget \
refused (see the --help of each subcommand)."
    )]
    State(cli::state::Command),
    /// The remote writes recorded in the audit log, by user, date or revision (offline).
    History(cli::history::Args),
    /// Print shell completions (bash, zsh, fish, powershell, elvish).
    Completions(cli::completions::Args),
    /// Print the manual page (roff).
    Man(cli::man::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return cli::usage(&err),
    };
    // A daemon says what it did at its default level; a one-shot command prints its result.
    cli::init_tracing(if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    });
    let result = match cli.command {
        Command::Validate(args) => cli::validate::run(args),
        Command::Plan(args) => cli::runtime().and_then(|rt| rt.block_on(cli::plan::run(args))),
        Command::Apply(args) => cli::runtime().and_then(|rt| rt.block_on(cli::apply::run(args))),
        Command::Run(args) => cli::runtime().and_then(|rt| rt.block_on(cli::run::run(args))),
        Command::Status(args) => cli::runtime().and_then(|rt| rt.block_on(cli::status::run(args))),
        Command::Diff(args) => cli::diff::run(args),
        Command::Import(args) => cli::runtime().and_then(|rt| rt.block_on(cli::import::run(args))),
        Command::Doctor(args) => cli::runtime().and_then(|rt| rt.block_on(cli::doctor::run(args))),
        Command::Probe(command) => {
            cli::runtime().and_then(|rt| rt.block_on(cli::probe::run(command)))
        }
        Command::Demo(args) => cli::runtime().and_then(|rt| rt.block_on(cli::demo::run(args))),
        Command::Sim(args) => cli::runtime().and_then(|rt| rt.block_on(cli::sim::run(args))),
        Command::Suspend(args) => {
            cli::runtime().and_then(|rt| rt.block_on(cli::control::suspend(args)))
        }
        Command::Resume(args) => {
            cli::runtime().and_then(|rt| rt.block_on(cli::control::resume(args)))
        }
        Command::Reconcile(args) => {
            cli::runtime().and_then(|rt| rt.block_on(cli::control::reconcile(args)))
        }
        Command::State(command) => {
            cli::runtime().and_then(|rt| rt.block_on(cli::state::run(command)))
        }
        Command::History(args) => cli::history::run(args),
        Command::Completions(args) => cli::completions::run(&args, &mut Cli::command()),
        Command::Man(_) => cli::man::run(Cli::command()),
    };
    cli::finish(result)
}
