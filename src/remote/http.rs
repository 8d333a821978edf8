//! The one HTTP edge of guestops ([`Edge`]), shared by the Graph client, its token credential
//! and the portal client. It owns everything about a request that is not the remote system's
//! business:
//!
//! - the `reqwest` client: rustls, **redirects off** (a `3xx` is handed back as an answer, so a
//!   secret header — `Authorization`, `X-API-Key` — never follows a redirect to another
//!   origin), a connect timeout, and a timeout per attempt;
//! - the URL check: `https`, or plain `http` on loopback only ([`check_url`]);
//! - the concurrency permit (requests of one edge in flight at most);
//! - paced writes ([`Edge::with_pacer`], design §11): every attempt of a `POST`, `PUT`,
//!   `PATCH` or `DELETE` waits for a slot of the system's [`Pacer`] (a token bucket shared by
//!   every writer of that system) after taking its permit, so the slot's time is the time it is
//!   sent; a `429` or `503` with `Retry-After`, on a read or a write, pauses that pacer for
//!   every writer (at most [`RetryPolicy::max_total_wait`]). A `POST` that writes nothing (a
//!   `$batch` of reads) says so with [`Request::not_a_write`];
//! - sending, and reading the body up to a size limit;
//! - the retry policy:
//!   - `429` is always retried: the request was refused, nothing happened;
//!   - `500`, `502`, `503`, `504` and transport errors are retried only for idempotent requests
//!     (reads, `PUT`, `DELETE`). A non-idempotent write (`POST /invitations`, `POST /api/user`)
//!     that meets one of them is returned to the caller, which must re-observe before
//!     repeating it (design §7, style §12). A connection that could not be established is
//!     retried for any request (nothing was sent), with one `warn` line per retry naming the
//!     wait — except a **refused** connection, which fails at once with a message naming the
//!     address (nobody listens there; waiting does not help within one request);
//!   - `Retry-After` (integer seconds, fractional seconds or an HTTP date) is honoured inside
//!     the edge; without it the delay is a capped exponential with jitter;
//!   - the total time spent waiting is bounded ([`RetryPolicy::max_total_wait`]): a throttle
//!     that outlasts it is returned as the last answer with its `Retry-After`
//!     ([`Reply::retry_after`]), and the client's error carries it up to the daemon's backoff.
//!
//! It must not know what a request means: statuses other than the retryable ones, error
//! bodies and operation names are the clients' business, and it never imports a client, the
//! configuration or the plan.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::BackoffBuilder;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use url::Url;

use super::pace::Pacer;

/// Time allowed to establish a connection (the per-attempt timeout is
/// [`RetryPolicy::timeout`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest response body read by default (a Graph page of 999 users is a few MB).
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;

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

/// What kind of failure left a request without a (complete) answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Nobody listens at the address (`ECONNREFUSED`): not retried.
    ConnectionRefused,
    /// The connection could not be established (DNS, TLS handshake, connect timeout, …).
    Connect,
    /// No answer within the attempt timeout.
    Timeout,
    /// The connection broke after the request was (maybe) sent, or while reading the answer.
    Broken,
    /// The answer's body is larger than the edge reads.
    BodyTooLarge,
}

/// A request that produced no (complete) HTTP answer. Its message names the address and what
/// happened; the underlying `reqwest` error, if any, is its [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("{}", transport_message(self))]
pub struct TransportError {
    /// What happened.
    pub kind: TransportKind,
    /// `host:port` the request went to.
    pub address: String,
    /// Whether the request may have reached the server (a timeout or a reset after sending):
    /// a write may have happened.
    pub maybe_sent: bool,
    /// Attempts made.
    pub attempts: usize,
    /// The body limit, for [`TransportKind::BodyTooLarge`].
    pub limit: usize,
    /// The underlying error (absent for [`TransportKind::BodyTooLarge`]).
    #[source]
    pub source: Option<reqwest::Error>,
}

fn transport_message(err: &TransportError) -> String {
    let address = &err.address;
    let attempts = match err.attempts {
        1 => String::new(),
        n => format!(" (after {n} attempts)"),
    };
    match err.kind {
        TransportKind::ConnectionRefused => {
            format!("cannot connect to {address}: connection refused (nothing listens there)")
        }
        TransportKind::Connect => format!("cannot connect to {address}{attempts}"),
        TransportKind::Timeout => format!("no answer from {address} in time{attempts}"),
        TransportKind::Broken => format!("the exchange with {address} broke off{attempts}"),
        TransportKind::BodyTooLarge => format!(
            "the answer of {address} is larger than {} bytes; it was not read",
            err.limit
        ),
    }
}

impl TransportError {
    fn from_reqwest(source: reqwest::Error, url: &Url, attempts: usize) -> Self {
        let kind = if is_connection_refused(&source) {
            TransportKind::ConnectionRefused
        } else if source.is_connect() {
            TransportKind::Connect
        } else if source.is_timeout() {
            TransportKind::Timeout
        } else {
            TransportKind::Broken
        };
        TransportError {
            maybe_sent: !matches!(
                kind,
                TransportKind::ConnectionRefused | TransportKind::Connect
            ),
            kind,
            address: address_of(url),
            attempts,
            limit: 0,
            // The URL's query may hold an address or a token; the address is named above.
            source: Some(source.without_url()),
        }
    }
}

/// `host:port` of `url`, for messages (`[::1]:8080` for IPv6).
pub fn address_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("(no host)");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// Whether `err` (or one of its causes) is an `ECONNREFUSED`.
fn is_connection_refused(err: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(next) = cause {
        if let Some(io) = next.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = next.source();
    }
    false
}

/// Whether `url` may be used: `https`, or plain `http` on a loopback host. The `Err` says
/// what to fix (without naming the key: the caller does).
pub fn check_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err("plain http is allowed on loopback only: use https://".to_owned()),
        other => Err(format!(
            "the scheme `{other}` is not supported: use https://"
        )),
    }
}

/// Whether `url`'s host is this machine (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// One request, as the edge sends it (again, on a retry). Secret values are marked sensitive.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Body>,
    /// A `POST` (or other write method) that changes nothing: not paced.
    not_a_write: bool,
}

#[derive(Clone)]
enum Body {
    Json(Vec<u8>),
    Form(String),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A form may carry a client secret: never shown.
        match self {
            Body::Json(bytes) => write!(f, "Json({} bytes)", bytes.len()),
            Body::Form(_) => f.write_str("Form([redacted])"),
        }
    }
}

impl Request {
    /// `method url`, without headers or body.
    pub fn new(method: Method, url: Url) -> Self {
        Request {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            not_a_write: false,
        }
    }

    /// Marks a request whose method is a write method but which changes nothing (a `$batch`
    /// of reads): it is not paced as a write. A `Retry-After` it meets still pauses the pacer.
    pub fn not_a_write(mut self) -> Self {
        self.not_a_write = true;
        self
    }

    /// Whether the edge paces this request as a write: `POST`, `PUT`, `PATCH` or `DELETE`,
    /// unless marked with [`Request::not_a_write`].
    pub fn is_write(&self) -> bool {
        !self.not_a_write
            && matches!(
                self.method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            )
    }

    /// Adds a header that is not a secret. A value that cannot be a header value is dropped.
    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }

    /// Adds a secret header (marked sensitive). `Err` when the secret cannot be a header value.
    pub fn secret_header(
        mut self,
        name: HeaderName,
        secret: &SecretString,
    ) -> Result<Self, InvalidHeaderValue> {
        let mut value = HeaderValue::from_str(secret.expose_secret())?;
        value.set_sensitive(true);
        self.headers.insert(name, value);
        Ok(self)
    }

    /// Adds `Authorization: Bearer <token>` (sensitive). `Err` when the token cannot be a
    /// header value.
    pub fn bearer(self, token: &SecretString) -> Result<Self, InvalidHeaderValue> {
        let value = SecretString::from(format!("Bearer {}", token.expose_secret()));
        self.secret_header(reqwest::header::AUTHORIZATION, &value)
    }

    /// A JSON body.
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.body = Some(Body::Json(body.to_string().into_bytes()));
        self
    }

    /// An `application/x-www-form-urlencoded` body.
    pub fn form(mut self, pairs: &[(&str, &str)]) -> Self {
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.body = Some(Body::Form(encoded));
        self
    }

    /// The URL the request goes to.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

/// An HTTP answer, read completely.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body (at most the edge's body limit).
    pub body: Vec<u8>,
    /// The answer's `Retry-After`, if any (set on a throttle that outlasted the budget).
    pub retry_after: Option<Duration>,
    /// Attempts made.
    pub attempts: usize,
}

/// The HTTP edge: one `reqwest` client, one retry policy, one concurrency bound, and
/// optionally one write pacer. Cheap to clone; clones share the connection pool, the permits
/// and the pacer.
#[derive(Debug, Clone)]
pub struct Edge {
    http: reqwest::Client,
    retry: RetryPolicy,
    permits: Arc<Semaphore>,
    max_body: usize,
    pacer: Option<Pacer>,
}

impl Edge {
    /// An edge retrying by `retry`, with at most `concurrency` requests in flight (at least 1).
    pub fn new(retry: RetryPolicy, concurrency: usize) -> Result<Edge, reqwest::Error> {
        Self::build_with(retry, concurrency, true)
    }

    /// An edge like [`Edge::new`] that never goes through a proxy (`HTTP(S)_PROXY` is
    /// ignored): for a host-local endpoint such as Azure's managed-identity endpoints (IMDS
    /// must not be reached through a proxy).
    pub fn without_proxy(retry: RetryPolicy, concurrency: usize) -> Result<Edge, reqwest::Error> {
        Self::build_with(retry, concurrency, false)
    }

    fn build_with(
        retry: RetryPolicy,
        concurrency: usize,
        proxy: bool,
    ) -> Result<Edge, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT.min(retry.timeout))
            .user_agent(concat!("guestops/", env!("CARGO_PKG_VERSION")));
        if !proxy {
            builder = builder.no_proxy();
        }
        let http = builder.build()?;
        Ok(Edge {
            http,
            retry,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            max_body: DEFAULT_MAX_BODY,
            pacer: None,
        })
    }

    /// The same edge (sharing its connection pool and permits) pacing its writes with
    /// `pacer`, and pausing it on every `Retry-After`. An edge without a pacer (the default,
    /// and the token credential's) paces nothing.
    pub fn with_pacer(mut self, pacer: Pacer) -> Self {
        self.pacer = Some(pacer);
        self
    }

    /// The write pacer, if any.
    pub fn pacer(&self) -> Option<&Pacer> {
        self.pacer.as_ref()
    }

    /// The same edge reading bodies up to `bytes` (at least 1).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes.max(1);
        self
    }

    /// The retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    fn build(&self, request: &Request) -> reqwest::RequestBuilder {
        let mut builder = self
            .http
            .request(request.method.clone(), request.url.clone())
            .headers(request.headers.clone())
            .timeout(self.retry.timeout);
        match &request.body {
            Some(Body::Json(bytes)) => {
                builder = builder
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bytes.clone());
            }
            Some(Body::Form(text)) => {
                builder = builder
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(text.clone());
            }
            None => {}
        }
        builder
    }

    /// Sends `request` under a permit, retrying as the module header describes, and reads the
    /// answer's body. Returns the last answer, successful or not; the caller turns a
    /// non-success status into its typed error.
    pub async fn send(
        &self,
        request: &Request,
        idempotency: Idempotency,
    ) -> Result<Reply, TransportError> {
        // The semaphore is never closed; without a permit we would merely be less gentle.
        let _permit = self.permits.acquire().await.ok();
        let policy = &self.retry;
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(policy.base_delay)
            .with_max_delay(policy.max_delay)
            .with_jitter()
            .with_max_times(policy.max_retries)
            .build();
        let mut waited = Duration::ZERO;
        let mut attempts = 0;
        let pacer = self.pacer.as_ref();
        loop {
            attempts += 1;
            if request.is_write()
                && let Some(pacer) = pacer
            {
                pacer.acquire().await;
            }
            let outcome = self.build(request).send().await;
            let next = backoff.next();
            let fits = |d: Duration| next.is_some() && waited + d <= policy.max_total_wait;
            let delay = match outcome {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(&response);
                    if let (Some(pacer), Some(delay)) = (pacer, retry_after)
                        && matches!(status.as_u16(), 429 | 503)
                    {
                        pacer.pause(delay.min(policy.max_total_wait));
                    }
                    let delay = if is_retryable(status, idempotency) {
                        retry_after.or(next).filter(|d| fits(*d))
                    } else {
                        None
                    };
                    let Some(delay) = delay else {
                        let headers = response.headers().clone();
                        let body = self.read_body(response, &request.url, attempts).await?;
                        return Ok(Reply {
                            status,
                            headers,
                            body,
                            retry_after,
                            attempts,
                        });
                    };
                    tracing::debug!(
                        status = status.as_u16(),
                        url = %redact_query(&request.url),
                        delay_ms = delay.as_millis() as u64,
                        attempt = attempts,
                        "retrying after a retryable status"
                    );
                    delay
                }
                Err(err) => {
                    let err = TransportError::from_reqwest(err, &request.url, attempts);
                    let retryable = match err.kind {
                        TransportKind::ConnectionRefused | TransportKind::BodyTooLarge => false,
                        TransportKind::Connect => true,
                        _ => idempotency == Idempotency::Idempotent,
                    };
                    let Some(delay) = next.filter(|d| retryable && fits(*d)) else {
                        return Err(err);
                    };
                    tracing::warn!(
                        url = %redact_query(&request.url),
                        attempt = attempts,
                        "{}; retrying in {:.1} s",
                        crate::error::chain(&err),
                        delay.as_secs_f64()
                    );
                    delay
                }
            };
            tokio::time::sleep(delay).await;
            waited += delay;
        }
    }

    /// Reads the body, refusing more than the limit.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        url: &Url,
        attempts: usize,
    ) -> Result<Vec<u8>, TransportError> {
        let too_large = || TransportError {
            kind: TransportKind::BodyTooLarge,
            address: address_of(url),
            maybe_sent: true,
            attempts,
            limit: self.max_body,
            source: None,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| {
            let mut err = TransportError::from_reqwest(err, url, attempts);
            err.maybe_sent = true;
            err
        })? {
            if body.len() + chunk.len() > self.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
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
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
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

/// A URL for logs: scheme, host and path only (query strings may hold tokens or emails).
pub fn redact_query(url: &Url) -> String {
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

    /// A loopback server answering the n-th connection (0-based) with `answers[n]` (the last
    /// one repeated); returns its URL and the number of requests served.
    async fn serve(answers: Vec<String>) -> (Url, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url =
            Url::parse(&format!("http://{}/", listener.local_addr().expect("addr"))).expect("url");
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let answer = answers[n.min(answers.len() - 1)].clone();
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        (url, served)
    }

    fn answer(status: &str, extra: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_total_wait: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
        }
    }

    #[tokio::test]
    async fn a_retry_after_within_the_budget_is_waited_inside_the_edge() {
        let (url, served) = serve(vec![
            answer("429 Too Many Requests", "Retry-After: 0\r\n", ""),
            answer("200 OK", "", "done"),
        ])
        .await;
        let edge = Edge::new(fast(), 1).expect("edge");
        let reply = edge
            .send(&Request::new(Method::GET, url), Idempotency::Idempotent)
            .await
            .expect("answered");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, b"done");
        assert_eq!(reply.attempts, 2);
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_budget_is_handed_to_the_caller() {
        let (url, served) = serve(vec![answer(
            "429 Too Many Requests",
            "Retry-After: 3600\r\n",
            "",
        )])
        .await;
        let edge = Edge::new(fast(), 1).expect("edge");
        let reply = edge
            .send(&Request::new(Method::POST, url), Idempotency::NotIdempotent)
            .await
            .expect("answered");
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.retry_after, Some(Duration::from_secs(3600)));
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let (url, _) = serve(vec![answer("200 OK", "", &"x".repeat(100))]).await;
        let edge = Edge::new(fast(), 1).expect("edge").with_max_body(64);
        let err = edge
            .send(
                &Request::new(Method::GET, url.clone()),
                Idempotency::Idempotent,
            )
            .await
            .expect_err("too large");
        assert_eq!(err.kind, TransportKind::BodyTooLarge);
        assert!(err.to_string().contains("64 bytes"), "{err}");
        let edge = Edge::new(fast(), 1).expect("edge").with_max_body(100);
        let reply = edge
            .send(&Request::new(Method::GET, url), Idempotency::Idempotent)
            .await
            .expect("exactly the limit is read");
        assert_eq!(reply.body.len(), 100);
    }

    #[test]
    fn writes_are_the_write_methods_unless_marked() {
        let url = Url::parse("https://x.example/").expect("url");
        let request = |method: Method| Request::new(method, url.clone());
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(request(method.clone()).is_write(), "{method}");
            assert!(
                !request(method.clone()).not_a_write().is_write(),
                "{method}"
            );
        }
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(!request(method.clone()).is_write(), "{method}");
        }
    }

    /// On tokio's paused clock (virtual time; the loopback server answers at once).
    #[tokio::test(start_paused = true)]
    async fn a_retry_after_on_a_read_pauses_the_writes_of_the_edge_up_to_the_budget() {
        use crate::remote::pace::{Pacer, WriteRate};
        let (url, served) = serve(vec![
            answer("429 Too Many Requests", "Retry-After: 3600\r\n", ""),
            answer("200 OK", "", "written"),
        ])
        .await;
        let policy = RetryPolicy {
            max_retries: 0,
            timeout: Duration::from_secs(24 * 3600),
            ..fast()
        };
        let rate = WriteRate::per_second(1000.0, 10).expect("a rate");
        let edge = Edge::new(policy, 4)
            .expect("edge")
            .with_pacer(Pacer::new(rate));
        let start = tokio::time::Instant::now();
        let read = edge
            .send(
                &Request::new(Method::GET, url.clone()),
                Idempotency::Idempotent,
            )
            .await
            .expect("answered");
        assert_eq!(read.status, StatusCode::TOO_MANY_REQUESTS);

        let write = edge
            .clone()
            .send(&Request::new(Method::POST, url), Idempotency::NotIdempotent)
            .await
            .expect("answered");
        assert_eq!(write.status, StatusCode::OK);
        let waited = start.elapsed();
        // Paused for the Retry-After, capped at the retry budget (5 s), not for an hour.
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
        assert!(waited < Duration::from_secs(60), "{waited:?}");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn only_https_or_loopback_http() {
        let ok = |u: &str| check_url(&Url::parse(u).expect("url")).is_ok();
        assert!(ok("https://api.powerembedded.com.br"));
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(ok("http://[::1]:8080/"));
        assert!(ok("http://localhost/"));
        assert!(!ok("http://api.powerembedded.com.br"));
        assert!(!ok("ftp://127.0.0.1/"));
    }

    #[test]
    fn secret_headers_are_sensitive_and_forms_are_not_shown() {
        let request = Request::new(Method::POST, Url::parse("https://x.example/").expect("url"))
            .secret_header(
                HeaderName::from_static("x-api-key"),
                &SecretString::from("k3y"),
            )
            .expect("a header value")
            .form(&[("client_secret", "s3cret")]);
        assert!(request.headers["x-api-key"].is_sensitive());
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("k3y") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
