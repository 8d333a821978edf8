//! The plan function (placeholder: the plan work fills this in).

use chrono::{DateTime, Utc};

use super::{Observed, Plan, Policy};
use crate::spec::DesiredState;
use crate::state::State;

/// Computes the plan that makes `observed` equal `desired` under `policy` at `now`.
pub fn plan(
    desired: &DesiredState,
    observed: &Observed,
    state: &State,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Plan {
    let _ = (observed, state, policy);
    Plan {
        generated_at: now,
        desired_users: desired.users.len(),
        in_sync: 0,
        changes: Vec::new(),
        refusals: Vec::new(),
        notices: Vec::new(),
    }
}
