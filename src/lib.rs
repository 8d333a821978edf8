//! guestops keeps the external administrators of a Power Embedded organization declared in git.
//!
//! Data flows one way: **source → desired → observe → plan → (guard) → apply → record**
//! (`docs/design.md` §10). Each module owns one concern:
//!
//! | module | owns |
//! |---|---|
//! | [`spec`] | `users.yaml`: parsing with spans, validation, diagnostics |
//! | [`config`] | host configuration and secret loading |
//! | [`http`] | the retry / backoff / `Retry-After` policy shared by both clients |
//! | [`graph`] | the Microsoft Graph client (tokens, guests, invitations) |
//! | [`portal`] | the Power Embedded client (users list/create/update/delete) |
//! | [`plan`] | the pure function `plan(desired, observed, state, policy, now)` and its renderings |
//! | [`apply`] | executing a plan change by change, recording results |
//! | [`state`] | `state.json`, `audit.jsonl`, the instance lock |
//! | [`reconcile`] | observe → plan → apply, shared by `plan`, `apply`, `status` and the daemon |
//! | [`source`] | git (bare mirror, blob at the fetched commit, `read_at`) and the file watch |
//! | [`daemon`] | `guestops run`: triggers, the reconcile loop, backoff, shutdown |
//! | [`server`] | `/healthz`, `/readyz`, `/metrics`, `/hooks/github` |
//! | [`metrics`] | the Prometheus registry |
//! | [`systemd`] | `sd_notify` (READY, STATUS, WATCHDOG, STOPPING) |
//! | [`diff`] | what a change of `users.yaml` grants and revokes (`guestops diff`) |
//! | [`status`] | one row per desired user (`guestops status`) |
//! | [`import`] | `guestops import`: a first `users.yaml` from the portal admins and their guests |
//! | [`sim`] | in-process emulators of Graph and of the portal API, with fault injection |

pub mod apply;
pub mod config;
pub mod daemon;
pub mod diff;
pub mod fake;
pub mod graph;
pub mod http;
pub mod import;
mod markup;
pub mod metrics;
pub mod plan;
pub mod portal;
pub mod reconcile;
pub mod server;
pub mod sim;
pub mod source;
pub mod spec;
pub mod state;
pub mod status;
pub mod systemd;
