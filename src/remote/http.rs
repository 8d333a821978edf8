//! The one retry / backoff / `Retry-After` / timeout policy shared by the Graph and portal
//! clients.
//!
//! - `429` is always retried: the request was refused, nothing happened.
//! - `500`, `502`, `503`, `504` and transport errors are retried only for idempotent requests
//!   (reads, `PUT`, `DELETE`). A non-idempotent write (`POST /invitations`, `POST /api/user`)
//!   that meets one of them is returned to the caller, which must re-observe before repeating
//!   it (design §7, style §12). A connection that was never established is retried for any
//!   request: nothing was sent.
//! - `Retry-After` (integer seconds, fractional seconds or an HTTP date) is honoured; without
//!   it the delay is a capped exponential with jitter.
//! - The total time spent waiting is bounded: a throttle that outlasts it is returned as the
//!   last response, and the caller reports it (fail closed).

use std::time::{Duration, SystemTime};

use backon::BackoffBuilder;
use reqwest::{RequestBuilder, Response, StatusCode};

/// How hard to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First backoff delay (without `Retry-After`).
    pub base_delay: Duration,
    /// Largest single backoff delay (without `Retry-After`).
    pub max_delay: Duration,
    /// Upper bound of all waits of one request; also caps a single `Retry-After`.
    pub max_total_wait: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// Kiota-like defaults: a handful of retries, at most three minutes of waiting in total.
    fn default() -> Self {
        Self {
            max_retries: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_total_wait: Duration::from_secs(180),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Whether a request may be repeated without re-observing first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads, `PUT`, `DELETE`, `PATCH` of a fixed value.
    Idempotent,
    /// `POST` that creates something.
    NotIdempotent,
}

/// A request that produced no HTTP response.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct TransportError {
    /// The underlying error (timeout, connection reset, TLS, …).
    #[source]
    pub source: reqwest::Error,
    /// Whether the request may have reached the server (a timeout or a reset after sending):
    /// a write may have happened.
    pub maybe_sent: bool,
    /// Attempts made.
    pub attempts: usize,
}

/// Parses a `Retry-After` value: integer or fractional seconds, or an HTTP date
/// (relative to `now`). Negative, non-finite or unparseable values give `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && (0.0..1e9).contains(&secs) {
            return Some(Duration::from_secs_f64(secs));
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of a response, if any.
pub fn retry_after(response: &Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// Whether `status` may be retried for a request of this idempotency.
pub fn is_retryable(status: StatusCode, idempotency: Idempotency) -> bool {
    match status.as_u16() {
        429 => true,
        500 | 502 | 503 | 504 => idempotency == Idempotency::Idempotent,
        _ => false,
    }
}

/// Sends the request built by `build` (called once per attempt), retrying as the module
/// header describes. Returns the last HTTP response, successful or not; the caller turns a
/// non-success status into its typed error.
pub async fn send(
    policy: &RetryPolicy,
    idempotency: Idempotency,
    build: impl Fn() -> RequestBuilder,
) -> Result<Response, TransportError> {
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(policy.base_delay)
        .with_max_delay(policy.max_delay)
        .with_jitter()
        .with_max_times(policy.max_retries)
        .build();
    let mut waited = Duration::ZERO;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = build().timeout(policy.timeout).send().await;
        let next = backoff.next();
        let delay = match &outcome {
            Ok(response) if is_retryable(response.status(), idempotency) => {
                retry_after(response).or(next)
            }
            Ok(_) => None,
            Err(err) if err.is_connect() || idempotency == Idempotency::Idempotent => next,
            Err(_) => None,
        };
        // No retry left, or the budget would be exceeded: hand back what we have.
        let delay = match (delay, next) {
            (Some(d), Some(_)) if waited + d <= policy.max_total_wait => d,
            _ => {
                return outcome.map_err(|source| TransportError {
                    maybe_sent: !source.is_connect(),
                    source,
                    attempts,
                });
            }
        };
        match &outcome {
            Ok(response) => tracing::debug!(
                status = response.status().as_u16(),
                url = %redact_query(response.url()),
                delay_ms = delay.as_millis() as u64,
                attempt = attempts,
                "retrying after a retryable status"
            ),
            Err(err) => tracing::debug!(
                error = %err,
                delay_ms = delay.as_millis() as u64,
                attempt = attempts,
                "retrying after a transport error"
            ),
        }
        drop(outcome);
        tokio::time::sleep(delay).await;
        waited += delay;
    }
}

/// A URL for logs: scheme, host and path only (query strings may hold tokens or emails).
pub fn redact_query(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("10", now), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_retry_after(" 2.128 ", now),
            Some(Duration::from_millis(2128))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn writes_are_not_retried_on_ambiguous_statuses() {
        use Idempotency::*;
        assert!(is_retryable(StatusCode::TOO_MANY_REQUESTS, NotIdempotent));
        assert!(!is_retryable(
            StatusCode::SERVICE_UNAVAILABLE,
            NotIdempotent
        ));
        assert!(!is_retryable(StatusCode::GATEWAY_TIMEOUT, NotIdempotent));
        assert!(is_retryable(StatusCode::GATEWAY_TIMEOUT, Idempotent));
        assert!(!is_retryable(StatusCode::NOT_FOUND, Idempotent));
    }
}
