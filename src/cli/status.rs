//! `guestops status`: one row per desired user.

use guestops::reconcile::state::StateStore;
use guestops::reconcile::status::{self, StatusFormat};

use super::Status;
use super::plan::{Loaded, SourceArgs, load};

/// Arguments of `guestops status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Read-only.\n\nExit codes: 0 the rows are printed, 1 error (config, an invalid \
users.yaml, or the tenant or the portal cannot be read)."
)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: StatusFormat,
}

/// Runs `guestops status`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    let Some(Loaded { config, desired }) = load(&args.source).await? else {
        return Ok(Status::Error);
    };
    let state = StateStore::read_only(&config.state.dir)?;
    let outcome = super::plan::dry_run(&config, &desired, false, state.clone()).await?;
    let now = chrono::Utc::now();
    let mut rows = status::rows(&desired.state, &outcome.observed, &state, now.date_naive());
    let expiring = guestops::reconcile::plan::expiring_access(
        &desired.state,
        now,
        config.policy.expiry_notice_before,
    );
    status::mark_expiring(&mut rows, &expiring);
    status::render(&rows, args.format, &mut std::io::stdout().lock())?;
    Ok(Status::Success)
}
