//! `guestops man`: the manual page (roff) generated from the command definition.

use std::io::Write;

use super::Status;

/// Arguments of `guestops man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints the guestops(1) manual page in roff on stdout, e.g.
  guestops man > /usr/local/share/man/man1/guestops.1   (then: man guestops)
  guestops man | man -l -

Exit codes: 0 printed, 1 stdout cannot be written.")]
pub struct Args {}

/// Runs `guestops man`: the page of `command` (the whole `guestops` definition).
pub fn run(command: clap::Command) -> anyhow::Result<Status> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)?;
    out.flush()?;
    Ok(Status::Success)
}
