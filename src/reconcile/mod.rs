//! One reconcile: observe both systems completely ([`observe`]), compute the pure plan
//! ([`plan`]), execute it ([`apply`]) and record the result ([`state`]: `state.json`,
//! `audit.jsonl`, the instance lock). [`status`] and [`import`] are read-only views built
//! from the same observation.

pub mod apply;
pub mod import;
pub mod observe;
pub mod plan;
pub mod state;
pub mod status;

pub use observe::{ObserveError, observe, observe_and_plan};
