//! Paced writes (design §11): one token bucket per remote system ([`Pacer`]), shared by every
//! write in flight to that system, and paused by every `Retry-After`.
//!
//! - A [`WriteRate`] is an average rate (one write per [`WriteRate::interval`]) and a burst
//!   (writes that may go at once after a quiet spell). `n` writes take at least
//!   `(n − burst) × interval`.
//! - Graph's rate is a constant from its documented write quota ([`WriteRate::GRAPH`]); the
//!   portal's comes from `portal.maxWritesPerSecond`.
//! - [`Pacer::pause`] holds every writer back until the pause ends (a `429` with
//!   `Retry-After`, on a read or a write of the system). Writers that had already been given a
//!   later slot take a new one, and after the pause writes resume at the average rate, without
//!   a burst: the service just said it had enough.
//!
//! The bucket is a GCRA (generic cell rate algorithm, the "virtual scheduling" form of a token
//! bucket): one instant, the theoretical arrival time of the next write, under a mutex that is
//! never held across an `.await`. Time is `tokio::time::Instant`, so tests run it on a paused
//! clock (`tokio::time::pause`).
//!
//! Hand-written rather than `governor`: governor has no "pause everyone until" operation for a
//! `Retry-After`, its async wait (`until_ready`) sleeps on `futures-timer` (wall time, blind to
//! tokio's paused clock), and it would add about 17 crates (`dashmap`, `quanta`, `raw-cpuid`, a
//! second `rand` and `hashbrown`; about 23 s of cold build with its dependencies on one core)
//! for some 60 lines here.
//!
//! Must not: know HTTP, methods or statuses ([`crate::remote::http::Edge`] decides what is a
//! write and what pauses), nor read the configuration.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Graph's write quota for one application in one tenant: 3,000 requests per 2 min 30 s
/// (`docs/specs/microsoft-graph.md` §5, "Identity and access service limits", app + tenant pair).
pub const GRAPH_WRITE_QUOTA: u32 = 3_000;

/// The window of [`GRAPH_WRITE_QUOTA`].
pub const GRAPH_WRITE_WINDOW: Duration = Duration::from_secs(150);

/// Graph writes that may go at once after a quiet spell.
pub const GRAPH_WRITE_BURST: u32 = 20;

/// How fast writes to one system may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRate {
    interval: Duration,
    burst: u32,
}

impl WriteRate {
    /// Microsoft Graph: at most [`GRAPH_WRITE_QUOTA`] writes in any window of
    /// [`GRAPH_WRITE_WINDOW`], counting the burst: `burst + window / interval` stays below the
    /// quota, so the interval is `150 s / (3000 − 20 − 1)` ≈ 50.4 ms (about 19.9 writes per
    /// second, against the quota's 20).
    pub const GRAPH: WriteRate = WriteRate {
        interval: Duration::from_nanos(
            GRAPH_WRITE_WINDOW.as_nanos() as u64
                / (GRAPH_WRITE_QUOTA - GRAPH_WRITE_BURST - 1) as u64
                + 1,
        ),
        burst: GRAPH_WRITE_BURST,
    };

    /// One write per `interval` on average (at least 1 ns), `burst` (at least 1) at once.
    pub const fn every(interval: Duration, burst: u32) -> WriteRate {
        WriteRate {
            interval: if interval.is_zero() {
                Duration::from_nanos(1)
            } else {
                interval
            },
            burst: if burst == 0 { 1 } else { burst },
        }
    }

    /// `per_second` writes per second on average, `burst` (at least 1) at once. `None` when
    /// `per_second` is not a finite number greater than 0, or so small that the interval
    /// overflows.
    pub fn per_second(per_second: f64, burst: u32) -> Option<WriteRate> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return None;
        }
        let interval = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
        Some(WriteRate::every(interval, burst))
    }

    /// The average time between two writes.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Writes that may go at once after a quiet spell.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// How far ahead of the average a write may go: `(burst − 1) × interval`.
    fn tolerance(&self) -> Duration {
        self.interval.saturating_mul(self.burst - 1)
    }
}

/// A token bucket shared by every writer of one system. Cheap to clone; clones share the
/// bucket.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: WriteRate,
    bucket: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Theoretical arrival time of the next write: the bucket is full when it is at or before
    /// now − tolerance.
    tat: Instant,
    /// No write goes before this instant.
    paused_until: Option<Instant>,
    /// Counts pauses: a slot handed out before the latest pause is void.
    pauses: u64,
}

impl Pacer {
    /// A full bucket pacing at `rate`.
    pub fn new(rate: WriteRate) -> Pacer {
        Pacer {
            rate,
            bucket: Arc::new(Mutex::new(Bucket {
                tat: Instant::now(),
                paused_until: None,
                pauses: 0,
            })),
        }
    }

    /// The rate.
    pub fn rate(&self) -> WriteRate {
        self.rate
    }

    fn lock(&self) -> MutexGuard<'_, Bucket> {
        // The critical sections cannot panic; a poisoned lock still holds a valid bucket.
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until one more write may go, and takes its slot. Writers are served in the order
    /// they asked; a pause that starts while one waits sends it to the back of the queue,
    /// behind the pause.
    pub async fn acquire(&self) {
        loop {
            let (slot, pauses) = {
                let mut bucket = self.lock();
                let now = Instant::now();
                let start = bucket.paused_until.map_or(now, |until| until.max(now));
                let tolerance = self.rate.tolerance();
                // GCRA: the write may go once the bucket holds a token, i.e. at tat − tolerance.
                let slot = if bucket.tat > start + tolerance {
                    bucket.tat - tolerance
                } else {
                    start
                };
                bucket.tat = bucket.tat.max(start) + self.rate.interval;
                (slot, bucket.pauses)
            };
            tokio::time::sleep_until(slot).await;
            if self.lock().pauses == pauses {
                return;
            }
            tracing::debug!("a Retry-After paused the writes meanwhile; waiting for a new slot");
        }
    }

    /// Holds every writer back for `delay` from now (a `Retry-After`). A pause never shortens
    /// one already running; after it, writes resume at the average rate, without a burst.
    pub fn pause(&self, delay: Duration) {
        let mut bucket = self.lock();
        let until = Instant::now() + delay;
        if bucket.paused_until.is_some_and(|current| current >= until) {
            return;
        }
        bucket.paused_until = Some(until);
        // Slots handed out so far are void (their writers take new ones); the first slot
        // after the pause is `until`, then one per interval.
        bucket.tat = until + self.rate.tolerance();
        bucket.pauses += 1;
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "writes paused by a Retry-After"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> WriteRate {
        WriteRate::per_second(per_second, burst).expect("a valid rate")
    }

    /// The virtual time at which each of `n` writes in a row got its slot, from the start.
    async fn slots_in_a_row(pacer: &Pacer, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            pacer.acquire().await;
            slots.push(start.elapsed());
        }
        slots
    }

    #[test]
    fn rates_must_be_positive_and_finite() {
        assert_eq!(rate(2.0, 1).interval(), Duration::from_millis(500));
        assert_eq!(rate(0.5, 1).interval(), Duration::from_secs(2));
        assert_eq!(
            rate(2.0, 0).burst(),
            1,
            "a burst of 0 would never admit a write"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE] {
            assert_eq!(WriteRate::per_second(bad, 1), None, "{bad} accepted");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn n_writes_take_n_minus_burst_intervals() {
        for (per_second, burst, n) in [(2.0, 1, 10), (10.0, 5, 23), (0.5, 1, 4)] {
            let pacer = Pacer::new(rate(per_second, burst));
            let slots = slots_in_a_row(&pacer, n).await;
            let interval = pacer.rate().interval();
            let expected = interval * (n as u32 - burst);
            let took = *slots.last().expect("n > 0");
            assert!(
                took >= expected,
                "{n} writes at {per_second}/s took {took:?}"
            );
            assert!(
                took < expected + interval,
                "{n} writes at {per_second}/s waited longer than needed: {took:?}"
            );
            // The burst goes at once, the rest one interval apart.
            assert!(
                slots[..burst as usize].iter().all(Duration::is_zero),
                "{slots:?}"
            );
            assert!(
                slots[burst as usize - 1..]
                    .windows(2)
                    .all(|w| w[1] - w[0] >= interval),
                "{slots:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_spell_refills_the_bucket_up_to_the_burst() {
        let pacer = Pacer::new(rate(10.0, 3));
        slots_in_a_row(&pacer, 6).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let slots = slots_in_a_row(&pacer, 5).await;
        assert_eq!(slots[2], Duration::ZERO, "three at once: {slots:?}");
        assert!(
            slots[3] >= Duration::from_millis(100),
            "never more than the burst: {slots:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_writers_share_one_bucket() {
        let pacer = Pacer::new(rate(4.0, 1));
        let start = Instant::now();
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    let mut slots = Vec::new();
                    for _ in 0..3 {
                        pacer.acquire().await;
                        slots.push(start.elapsed());
                    }
                    slots
                })
            })
            .collect();
        let mut slots = Vec::new();
        for writer in writers {
            slots.extend(writer.await.expect("a writer"));
        }
        slots.sort();
        assert_eq!(slots.len(), 24);
        assert!(
            slots
                .windows(2)
                .all(|w| w[1] - w[0] >= Duration::from_millis(250)),
            "24 writes of 8 writers, one every 250 ms: {slots:?}"
        );
        assert!(slots[23] >= Duration::from_millis(23 * 250), "{slots:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_pauses_every_writer() {
        let pacer = Pacer::new(rate(1.0, 1));
        let start = Instant::now();
        pacer.acquire().await;
        // Three writers queue behind the first write: slots at 1 s, 2 s, 3 s.
        let writers: Vec<_> = (0..3)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.acquire().await;
                    start.elapsed()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Someone's request met `429 Retry-After: 10`.
        pacer.pause(Duration::from_secs(10));
        let mut slots = Vec::new();
        for writer in writers {
            slots.push(writer.await.expect("a writer"));
        }
        slots.sort();
        assert!(
            slots[0] >= Duration::from_millis(10_500),
            "no writer went during the pause: {slots:?}"
        );
        assert!(
            slots
                .windows(2)
                .all(|w| w[1] - w[0] >= Duration::from_secs(1)),
            "after the pause, one per interval: {slots:?}"
        );
        // A writer arriving later waits for the pause too, behind the others.
        let late = slots_in_a_row(&pacer, 1).await;
        assert!(start.elapsed() >= Duration::from_millis(13_500), "{late:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_pause_does_not_shorten_a_longer_one() {
        let pacer = Pacer::new(rate(100.0, 10));
        pacer.pause(Duration::from_secs(30));
        pacer.pause(Duration::from_secs(1));
        let slots = slots_in_a_row(&pacer, 1).await;
        assert!(slots[0] >= Duration::from_secs(30), "{slots:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn graph_writes_stay_within_the_documented_quota() {
        let rate = WriteRate::GRAPH;
        assert!(
            rate.interval() >= Duration::from_millis(50),
            "never above 20 writes per second: {rate:?}"
        );
        let pacer = Pacer::new(rate);
        let slots = slots_in_a_row(&pacer, 2 * GRAPH_WRITE_QUOTA as usize + 500).await;
        // Every window of 150 s (both ends included) holds at most 3,000 writes.
        let mut first = 0;
        let mut busiest = 0;
        for (last, slot) in slots.iter().enumerate() {
            while *slot - slots[first] > GRAPH_WRITE_WINDOW {
                first += 1;
            }
            busiest = busiest.max(last - first + 1);
        }
        assert!(
            busiest <= GRAPH_WRITE_QUOTA as usize,
            "{busiest} writes in 150 s"
        );
        assert!(
            busiest >= GRAPH_WRITE_QUOTA as usize - 2,
            "the quota is used, not wasted: {busiest} writes in 150 s"
        );
    }
}
