//! The long-running service (`guestops run`): the reconcile loop and its triggers
//! ([`daemon`]), the HTTP server ([`server`]), Prometheus metrics ([`metrics`]) and systemd
//! notifications ([`systemd`]). The loop reconciles through [`crate::reconcile`], exactly as the
//! CLI does.

pub mod daemon;
pub mod metrics;
pub mod server;
pub mod systemd;
