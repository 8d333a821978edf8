//! guestops keeps the external administrators of a Power Embedded organization declared in git.
//!
//! Data flows one way (`docs/design.md` §10):
//!
//! ```text
//!  desired ──────────────┐
//!  (git / file source,   │
//!   users.yaml)          ▼
//!                 reconcile::run_once ── observe ──▶ plan (pure) ──▶ apply ──▶ record
//!                        ▲               (remote)                   (remote)   (state, audit)
//!  service (daemon loop, │
//!  server, metrics) ─────┘        cli: one thin wrapper per command over the same call
//! ```
//!
//! | folder | owns | must not |
//! |---|---|---|
//! | [`desired`] | `users.yaml` (parse, validate, diagnostics), the git and file sources, `diff` between revisions | talk to Graph or the portal |
//! | [`remote`] | the HTTP edge, the Graph and portal clients, identity matching, in-memory fakes | decide what to change |
//! | [`reconcile`] | observe → pure plan → apply → record (state, audit), the views built from an observation (`status`, `import`), the audit log read back (`history`) and saved plans (`saved`) | read the config file or the clock inside the plan |
//! | [`service`] | the daemon loop, the HTTP server, metrics, systemd | reconcile differently from the CLI |
//! | [`error`] | printing an error chain once | |
//! | [`config`] | the host configuration and secret loading | be imported by the clients |
//! | [`preflight`] | `doctor` (read-only checks of the host setup, as data) and `probe portal` (the one-time portal write probe, facts in `state.dir`) | change the tenant, or the portal beyond the probe's own throw-away user |
//! | [`sim`] | emulators of Graph, the token endpoint and the portal (written from `docs/specs/`) | share matching code with the clients |

pub mod config;
pub mod desired;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod markup;
pub mod preflight;
pub mod reconcile;
pub mod remote;
pub mod service;
pub mod sim;
