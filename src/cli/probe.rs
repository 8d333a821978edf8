//! `guestops probe portal`: the write probe of `guestops::preflight::probe`, confirmed and
//! rendered.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use guestops::preflight::probe;

use super::{ConfigArg, Status};

/// `guestops probe <system>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Learn the portal's undocumented behaviour once, with a throw-away user that is deleted
    /// again; the facts go to state.dir/portal-facts.json.
    Portal(PortalArgs),
}

/// Arguments of `guestops probe portal`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Writes to the portal: creates the throw-away user --test-email as a viewer (no welcome e-mail),
creates it again (duplicate behaviour), optionally links --test-group, updates it with a minimal
PUT (does the portal keep the groups and flags it was not sent?), and deletes it twice. The
user is deleted at the end whatever fails; the portal bills it for about a day. Nothing is
written unless portal.knownAdmin is reported with roleCodes.administrator and the address is
not registered yet.

Exit codes: 0 the probe ran and the facts are recorded, 1 refused, stopped, or not confirmed.")]
pub struct PortalArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// A throw-away address nobody uses (it is registered, then deleted).
    #[arg(long, value_name = "ADDR")]
    pub test_email: String,
    /// A portal group id to link the user to, to learn whether a PUT keeps groups.
    #[arg(long, value_name = "ID")]
    pub test_group: Option<String>,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// Runs `guestops probe …`.
pub async fn run(command: Command) -> anyhow::Result<Status> {
    match command {
        Command::Portal(args) => portal(args).await,
    }
}

async fn portal(args: PortalArgs) -> anyhow::Result<Status> {
    let config = super::load_config(&args.config.config)?;
    let client = super::doctor::portal_client(&config)?;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "guestops probe portal registers {} in {} as a viewer (no welcome e-mail), changes it and deletes it again.\n\
         The portal bills a registered user for about a day; the user is deleted at the end whatever happens.",
        args.test_email.trim(),
        config.portal.base_url
    )?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            writeln!(
                err,
                "error: refusing to write without confirmation: no terminal to ask on; pass --yes"
            )?;
            return Ok(Status::Error);
        }
        write!(err, "Proceed? [y/N] ")?;
        err.flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            writeln!(err, "Not confirmed: nothing was written.")?;
            return Ok(Status::Error);
        }
    }
    let settings = probe::Settings {
        test_email: args.test_email.trim().to_owned(),
        test_group: args.test_group.clone(),
        now: chrono::Utc::now(),
    };
    let outcome = probe::run(&config, &client, &settings, &mut err).await?;
    let mut out = std::io::stdout().lock();
    match outcome {
        probe::Outcome::Refused(check) => {
            writeln!(
                err,
                "{} {}: {}",
                check.status.symbol(),
                check.name,
                check.message
            )?;
            if let Some(hint) = &check.hint {
                writeln!(err, "    → {hint}")?;
            }
            Ok(Status::Error)
        }
        probe::Outcome::Ran { facts, path } => {
            probe::render_summary(&facts, &path, &mut out)?;
            let cleaned = facts.cleanup.as_ref().is_none_or(|c| c.user_removed);
            if !cleaned {
                writeln!(
                    err,
                    "warning: {}",
                    facts.cleanup.as_ref().map_or("", |c| c.detail.as_str())
                )?;
            }
            Ok(if facts.complete && cleaned {
                Status::Success
            } else {
                Status::Error
            })
        }
    }
}
