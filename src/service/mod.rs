//! The long-running service (`guestops run`): the reconcile loop and its triggers
//! ([`daemon`]), the HTTP server ([`server`]), Prometheus metrics ([`metrics`]), systemd
//! notifications ([`systemd`]), notifications to Teams, Slack or a webhook ([`notify`]), and the
//! control socket ([`control`]) through which `suspend`, `resume`, `reconcile` and `state forget`
//! reach it. The loop reconciles through [`crate::reconcile`], exactly as the CLI does.

pub mod control;
pub mod daemon;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod systemd;
