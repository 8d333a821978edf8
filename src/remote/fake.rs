//! What the in-memory fakes of [`crate::remote::graph::fake`] and [`crate::remote::portal::fake`] share: the
//! test knobs around every call — call counts, latency, the largest number of calls in flight,
//! and injected [`Fault`]s — for an operation type `Op` of each fake.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Make matching calls of `op` fail with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault<Op> {
    /// The operation that fails.
    pub op: Op,
    /// Only calls whose argument (email or object id) equals this, case-insensitively.
    pub target: Option<String>,
    /// HTTP status of the error (`>= 500` is ambiguous).
    pub status: u16,
    /// How many matching calls fail.
    pub times: usize,
    /// The operation takes effect before the error is returned (a gateway timeout after the
    /// backend committed).
    pub after_applying: bool,
}

impl<Op> Fault<Op> {
    /// The next call of `op` fails with `status`, without taking effect.
    pub fn new(op: Op, status: u16) -> Self {
        Self {
            op,
            target: None,
            status,
            times: 1,
            after_applying: false,
        }
    }

    /// The next `n` matching calls fail.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    /// Only calls for `target` (an email or an object id) fail.
    pub fn for_target(mut self, target: &str) -> Self {
        self.target = Some(target.to_owned());
        self
    }

    /// The operation takes effect, then the error is returned.
    pub fn after_applying(mut self) -> Self {
        self.after_applying = true;
        self
    }
}

#[derive(Debug)]
struct Log<Op> {
    calls: BTreeMap<Op, usize>,
    faults: Vec<Fault<Op>>,
    latency: Duration,
    in_flight: usize,
    max_in_flight: usize,
}

/// The calls a fake received, and the knobs that shape them. `Clone` shares the log.
#[derive(Debug)]
pub(crate) struct CallLog<Op> {
    inner: Arc<Mutex<Log<Op>>>,
}

impl<Op> Clone for CallLog<Op> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<Op> Default for CallLog<Op> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Log {
                calls: BTreeMap::new(),
                faults: Vec::new(),
                latency: Duration::ZERO,
                in_flight: 0,
                max_in_flight: 0,
            })),
        }
    }
}

/// Counts a call as in flight until dropped.
pub(crate) struct InFlight<'a, Op>(&'a CallLog<Op>);

impl<Op> Drop for InFlight<'_, Op> {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

impl<Op> CallLog<Op> {
    fn lock(&self) -> MutexGuard<'_, Log<Op>> {
        // A panic while holding the lock only happens in a failing test; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<Op: Ord + Copy> CallLog<Op> {
    /// Adds a fault.
    pub(crate) fn inject(&self, fault: Fault<Op>) {
        self.lock().faults.push(fault);
    }

    /// Every call answers after `latency`.
    pub(crate) fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Calls made of `op`, failed ones included.
    pub(crate) fn calls(&self, op: Op) -> usize {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Calls made of every operation.
    pub(crate) fn total_calls(&self) -> usize {
        self.lock().calls.values().sum()
    }

    /// The largest number of calls that were in flight at the same time.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Counts the call, waits the latency (a `tokio::time` sleep, or a yield so that calls
    /// interleave), and returns the fault to apply, if any.
    pub(crate) async fn enter(
        &self,
        op: Op,
        target: &str,
    ) -> (InFlight<'_, Op>, Option<Fault<Op>>) {
        let latency = {
            let mut log = self.lock();
            *log.calls.entry(op).or_insert(0) += 1;
            log.in_flight += 1;
            log.max_in_flight = log.max_in_flight.max(log.in_flight);
            log.latency
        };
        let guard = InFlight(self);
        if latency.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(latency).await;
        }
        (guard, self.take_fault(op, target))
    }

    /// The fault to apply to one item of a call (an address of a batched lookup), if any,
    /// without counting a call: the call itself was counted by [`Self::enter`].
    pub(crate) fn take_fault(&self, op: Op, target: &str) -> Option<Fault<Op>> {
        let mut log = self.lock();
        let hit = log.faults.iter().position(|f| {
            f.op == op
                && f.times > 0
                && f.target
                    .as_deref()
                    .is_none_or(|t| t.eq_ignore_ascii_case(target))
        });
        let fault = hit.map(|i| {
            let fault = &mut log.faults[i];
            fault.times -= 1;
            fault.clone()
        });
        log.faults.retain(|f| f.times > 0);
        fault
    }
}
