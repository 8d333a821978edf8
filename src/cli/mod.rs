//! One module per subcommand. `anyhow` lives here and in `main` only.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use guestops::desired::spec::{self, OutputFormat, SpecPolicy};
use guestops::reconcile::Desired;

pub mod apply;
pub mod completions;
pub mod control;
pub mod demo;
pub mod diff;
pub mod doctor;
pub mod history;
pub mod import;
pub mod man;
pub mod plan;
pub mod probe;
pub mod run;
pub mod sim;
pub mod state;
pub mod status;
pub mod validate;

/// `--config` of the commands that read the host configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Host configuration file.
    #[arg(
        long,
        short,
        env = "GUESTOPS_CONFIG",
        default_value = "/etc/guestops/config.yaml"
    )]
    pub config: PathBuf,
}

/// What a command ended with; maps to the documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 0
    Success,
    /// 1
    Error,
    /// 2 (`--detailed-exitcode` only)
    Changes,
    /// 3
    Refused,
}

impl Status {
    /// The exit status of a reconcile: a failed change 1, else a refusal 3, else (with
    /// `--detailed-exitcode`) pending changes 2, else 0.
    pub fn of(verdict: guestops::reconcile::Verdict, detailed_exitcode: bool) -> Status {
        use guestops::reconcile::Verdict;
        match verdict {
            Verdict::Failed => Status::Error,
            Verdict::Refused => Status::Refused,
            Verdict::Changes if detailed_exitcode => Status::Changes,
            Verdict::Changes | Verdict::InSync => Status::Success,
        }
    }
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> Self {
        ExitCode::from(match status {
            Status::Success => 0,
            Status::Error => 1,
            Status::Changes => 2,
            Status::Refused => 3,
        })
    }
}

/// The async runtime of the commands that talk to the network.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

/// Whether to colour output written to stdout.
pub fn stdout_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Reads and validates `users.yaml`: from `path` when given, else from the configured git
/// source at the tip of `source.branch` (fetched into the mirror under `state.dir`, read from
/// the commit tree). Diagnostics go to `err` in the human format; `Ok(None)` means the file
/// is invalid (exit 1, nothing done).
pub async fn read_desired(
    path: Option<&Path>,
    config: &guestops::config::Config,
    err: &mut dyn Write,
) -> anyhow::Result<Option<Desired>> {
    use guestops::desired::source::{AnySource, DesiredSource as _};
    // The same sources, and so the same revisions, as the daemon.
    let source = AnySource::choose(path, config)?;
    let (revision, bytes) = source.load().await?;
    // The domain policy is enforced by the plan (a refused change), not by validation.
    let parsed = spec::parse(&bytes, &SpecPolicy::default());
    if !parsed.diagnostics.is_empty() {
        spec::render(
            &parsed.diagnostics,
            &bytes,
            &source.describe(),
            OutputFormat::Human,
            err,
        )?;
    }
    if parsed.has_errors() {
        return Ok(None);
    }
    Ok(parsed.desired.map(|state| Desired {
        state,
        revision,
        branch: source.branch(),
    }))
}

/// The two remote systems, connected as configured.
pub struct Clients {
    /// Microsoft Graph.
    pub tenant: guestops::remote::graph::GraphClient,
    /// Power Embedded.
    pub portal: guestops::remote::portal::PortalClient,
}

/// Loads the sign-in credential and the portal key and builds both clients.
pub fn connect(config: &guestops::config::Config) -> anyhow::Result<Clients> {
    let credential = config.load_credential()?;
    let api_key = config.portal.api_key.load()?;
    let Clients { tenant, portal } = clients(config, credential, &api_key)?;
    Ok(match terminal_read_progress() {
        Some(progress) => Clients {
            tenant: tenant.with_progress(progress.clone()),
            portal: portal.with_progress(progress),
        },
        None => Clients { tenant, portal },
    })
}

/// A progress line on stderr while a long read goes on, only when stderr is a terminal (never
/// in logs and pipes): from the second page of a listing, rewritten in place
/// (`enumerate the tenant's users (delta query): page 12, 11988 users so far…`), ended with its total.
pub fn terminal_read_progress() -> Option<guestops::remote::ReadProgress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(guestops::remote::ReadProgress::new(|page| {
        if let Some(line) = read_progress_line(page) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{line}");
            let _ = err.flush();
        }
    }))
}

/// What [`terminal_read_progress`] writes for `page` (`None`: a one-page read shows nothing).
fn read_progress_line(page: guestops::remote::ReadPage<'_>) -> Option<String> {
    if page.pages < 2 {
        return None;
    }
    let items = guestops::markup::count(page.items, "user");
    Some(if page.done {
        format!("\r\x1b[2K{}: {items} in {} pages.\n", page.what, page.pages)
    } else {
        format!(
            "\r\x1b[2K{}: page {}, {items} so far…",
            page.what, page.pages
        )
    })
}

/// Both clients from credentials already loaded.
pub fn clients(
    config: &guestops::config::Config,
    graph_credential: guestops::remote::graph::CredentialSettings,
    portal_api_key: &guestops::config::LoadedSecret,
) -> anyhow::Result<Clients> {
    Ok(Clients {
        tenant: graph_client(config, graph_credential)?,
        portal: portal_client(config, portal_api_key)?,
    })
}

/// The Graph client of `config`, signing in with `credential`.
pub fn graph_client(
    config: &guestops::config::Config,
    credential: guestops::remote::graph::CredentialSettings,
) -> anyhow::Result<guestops::remote::graph::GraphClient> {
    Ok(guestops::remote::graph::GraphClient::with_credential(
        &config.tenant.graph_settings(),
        credential,
        guestops::remote::http::RetryPolicy::default(),
    )?)
}

/// The portal client of `config`, with `api_key`.
pub fn portal_client(
    config: &guestops::config::Config,
    api_key: &guestops::config::LoadedSecret,
) -> anyhow::Result<guestops::remote::portal::PortalClient> {
    Ok(guestops::remote::portal::PortalClient::new(
        &config.portal.portal_settings(),
        api_key.credential(),
        guestops::remote::http::RetryPolicy::default(),
    )?)
}

/// Tells a person at a terminal what the wait is for; silent in logs and pipes.
pub fn reading_notice() {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = writeln!(
            err,
            "Reading the tenant and the portal completely (nothing is changed while reading)…"
        );
    }
}

/// Warns on stderr when `state.dir` holds no `state.json` yet (`plan`, `status`, `apply`):
/// without state guestops owns nothing, which is wrong when `state.dir` names the wrong folder.
pub fn warn_if_no_state(config: &guestops::config::Config) {
    if let Some(message) = guestops::reconcile::state::StateStore::warn_if_new(&config.state.dir) {
        let _ = writeln!(std::io::stderr(), "warning: {message}");
    }
}

/// Warns on stderr when reconciles are suspended (`guestops suspend`): `apply` applies
/// anyway, as the operator's explicit act.
pub fn warn_if_suspended(state: &guestops::reconcile::state::State) {
    if let Some(s) = &state.suspended {
        let _ = writeln!(
            std::io::stderr(),
            "warning: reconciles are {}; this apply is a manual act and applies anyway (the suspension stays: `guestops resume` lifts it)",
            guestops::reconcile::operator::describe_suspension(s)
        );
    }
}

/// Loads the host config, warning about `GUESTOPS_*` variables that override nothing (a typo
/// would otherwise be silently ignored).
pub fn load_config(path: &Path) -> anyhow::Result<guestops::config::Config> {
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k != "GUESTOPS_CONFIG")
        .collect();
    for name in guestops::config::unrecognized_variables(names.iter().map(String::as_str)) {
        tracing::warn!(variable = %name, "unknown GUESTOPS_* variable ignored: see docs/config.md for the names");
    }
    Ok(guestops::config::Config::load(path)?)
}

/// The exit code of a command's result: its status, or `error: …` with each cause once and
/// exit 1; a closed stdout (`guestops plan | head`) ends quietly with 0, nobody is left to tell.
pub fn finish(result: anyhow::Result<Status>) -> ExitCode {
    match result {
        Ok(status) => status.into(),
        Err(err) if is_broken_pipe(&err) => Status::Success.into(),
        Err(err) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {}", guestops::error::chain(err.as_ref()));
            Status::Error.into()
        }
    }
}

/// Prints what clap has to say: `--help` and `--version` on stdout with exit 0, a usage error
/// on stderr with exit 1 (2 means "changes pending").
pub fn usage(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    // Nothing to do when the stream is closed (`guestops --help | head -1`).
    let _ = err.print();
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Status::Success.into(),
        _ => Status::Error.into(),
    }
}

/// Whether `err` comes from writing to a closed pipe, anywhere in its chain of causes.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    err.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>();
        // An I/O error of a JSON writer wrapped as `io::Error::other(serde_json::Error)`.
        let wrapped_json = io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<serde_json::Error>())
            .or_else(|| cause.downcast_ref::<serde_json::Error>());
        io.is_some_and(|io| io.kind() == BrokenPipe)
            || wrapped_json.is_some_and(|json| json.io_error_kind() == Some(BrokenPipe))
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_filter`). No timestamps when journald
/// adds its own; no colour unless stderr is a terminal.
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use guestops::remote::ReadPage;

    use super::read_progress_line;

    fn page(pages: usize, items: usize, done: bool) -> ReadPage<'static> {
        ReadPage {
            what: "list the portal's users",
            pages,
            items,
            done,
        }
    }

    #[test]
    fn a_long_read_shows_a_line_rewritten_in_place_and_ended_with_its_total() {
        assert_eq!(read_progress_line(page(1, 25, false)), None);
        assert_eq!(
            read_progress_line(page(1, 25, true)),
            None,
            "one page: silent"
        );
        assert_eq!(
            read_progress_line(page(2, 50, false)).as_deref(),
            Some("\r\x1b[2Klist the portal's users: page 2, 50 users so far…")
        );
        assert_eq!(
            read_progress_line(page(3, 61, true)).as_deref(),
            Some("\r\x1b[2Klist the portal's users: 61 users in 3 pages.\n")
        );
    }
}
