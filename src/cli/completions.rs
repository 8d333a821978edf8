//! `guestops completions SHELL`: shell completions generated from the command definition.

use std::io::Write;

use super::Status;

/// Arguments of `guestops completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints the completion script on stdout. For example:
  bash:  guestops completions bash > /etc/bash_completion.d/guestops
  zsh:   guestops completions zsh > \"${fpath[1]}/_guestops\"
  fish:  guestops completions fish > ~/.config/fish/completions/guestops.fish

Exit codes: 0 printed, 1 a usage error (an unknown shell) or stdout cannot be written.")]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs `guestops completions`: the script for `command` (the whole `guestops` definition).
pub fn run(args: &Args, command: &mut clap::Command) -> anyhow::Result<Status> {
    // Generated into memory first: the generators panic on a failed write, and a closed
    // stdout (`| head`) must end quietly instead.
    let mut script = Vec::new();
    let name = command.get_name().to_owned();
    clap_complete::generate(args.shell, command, name, &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(Status::Success)
}
