//! In-process emulators of Microsoft Graph (token endpoint, users, invitations) and of the
//! Power Embedded API, with fault injection.
//!
//! One listener serves all three: the token authority at `/{tenant}/oauth2/v2.0/token`, Graph at
//! `/v1.0/...` and the portal at `/api/...`, so a single base URL configures `authorityHost`,
//! `graphEndpoint` and `portal.baseUrl`. The same listener serves the identity endpoints of
//! [`entra`]: test OIDC issuers at `/oidc/{name}/...` and the managed-identity endpoints of
//! Azure hosts (`/msi/token`, `/metadata/identity/oauth2/token`).
//!
//! The emulators follow `docs/specs/` including the quirks (opaque `$skiptoken` paging, default
//! property set without `$select`, `#EXT#` UPNs, replication delay, delta query with opaque
//! skip/delta tokens, `@removed` and `410 Gone` on expired tokens, the portal's contains-match
//! email filter, `PUT` that clears missing fields). Where the real behaviour is unknown they are
//! strict: they reject what the real service might reject.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod entra;
pub mod graph;
pub mod portal;
pub mod seed;

/// Fault injection for one emulated system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every response.
    pub latency: Duration,
    /// Every Nth request (1-based count of this system's requests) is answered `429`.
    pub throttle_every: Option<u64>,
    /// `Retry-After` value sent with injected `429`/`503` (`None`: no header).
    pub retry_after: Option<String>,
    /// Requests answered with an injected failure, by rule.
    pub fail: Vec<FailRule>,
    /// Requests processed at once but answered late, by rule (the kill matrix kills the
    /// client while the service has done the work and the answer is held).
    pub hold: Vec<HoldRule>,
    /// Every Nth request (1-based count of this system's requests, token requests excluded)
    /// is processed, then its connection is dropped instead of answered: the body of the
    /// answer fails, so the client sees a broken connection (for a write: one that happened).
    pub drop_every: Option<u64>,
}

/// A response extension the listing handlers set on a page they served, so that a test can
/// tell from [`SimState::requests`] whether a client read a listing to its end before it
/// wrote (issue 9's chaos soak).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingPage {
    /// Which listing (e.g. `graph delta`, `graph users userType eq 'Guest'`, `portal users`):
    /// pages of one listing share it.
    pub listing: String,
    /// The first page of a listing (a fresh start, a delta round from its deltaLink).
    pub first: bool,
    /// The listing ends with this page (no nextLink; the delta round's deltaLink; the last
    /// portal page holding users).
    pub last: bool,
}

/// What a successful write changed, a response extension the write handlers set, kept in
/// [`LoggedRequest::wrote`] even when the answer was then replaced by an injected failure
/// or a dropped connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrote {
    /// The kind of write.
    pub kind: WriteKind,
    /// The address of the user written (lower case): the invited address, the guest's `mail`
    /// (else its UPN), the portal email.
    pub address: String,
}

/// The kinds of [`Wrote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `POST /v1.0/invitations`.
    Invite,
    /// `PATCH /v1.0/users/{id}` with `accountEnabled: false` only.
    DisableGuest,
    /// Any other `PATCH /v1.0/users/{id}` (re-enabling included).
    UpdateGuest,
    /// `DELETE /v1.0/users/{id}`.
    DeleteGuest,
    /// `POST /v1.0/directory/deletedItems/{id}/restore`.
    RestoreGuest,
    /// `POST /api/user`.
    Register,
    /// `PUT /api/user`.
    UpdatePortal,
    /// `DELETE /api/user/{email}`.
    Unregister,
    /// Any other portal write (group links).
    OtherPortal,
}

impl WriteKind {
    /// Whether the write takes access away (the removals `policy.maxDeletions` bounds).
    pub fn is_removal(self) -> bool {
        matches!(
            self,
            WriteKind::DisableGuest | WriteKind::DeleteGuest | WriteKind::Unregister
        )
    }
}

/// `response` with the extension saying it wrote `kind` for `address`.
pub(crate) fn wrote(mut response: Response, kind: WriteKind, address: &str) -> Response {
    response.extensions_mut().insert(Wrote {
        kind,
        address: address.to_lowercase(),
    });
    response
}

/// `response` with the extension marking it as a page of `listing`.
pub(crate) fn listing_page(
    mut response: Response,
    listing: String,
    first: bool,
    last: bool,
) -> Response {
    response.extensions_mut().insert(ListingPage {
        listing,
        first,
        last,
    });
    response
}

/// Process matching requests at once, then hold their answer for `delay` before sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRule {
    /// HTTP method to match, e.g. `POST`; `None` = any.
    pub method: Option<String>,
    /// The request path (without query) must start with this.
    pub path_prefix: String,
    /// How long the answer is held after processing.
    pub delay: Duration,
    /// How many matching requests to hold; `None` = all of them.
    pub times: Option<u32>,
}

/// Answer matching requests with `status` (a `503` carries `retry_after` when set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailRule {
    /// HTTP method to match, e.g. `GET`; `None` = any.
    pub method: Option<String>,
    /// The request path (without query) must start with this.
    pub path_prefix: String,
    /// The query string must contain this (e.g. `$skiptoken` to fail only later pages).
    pub query_contains: Option<String>,
    /// Status to answer.
    pub status: u16,
    /// How many matching requests to fail; `None` = all of them.
    pub times: Option<u32>,
    /// Let the request be processed first, then answer the failure (a write that happened
    /// although the client saw an error, like a gateway timeout after the backend committed).
    pub after_processing: bool,
}

/// Which emulated system a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    /// Token endpoint and Graph.
    Graph,
    /// Power Embedded API.
    Portal,
    /// The identity endpoints of [`entra`] (OIDC issuers, managed identity): no fault
    /// injection of Graph or the portal applies to them.
    Identity,
}

/// Counters of what the emulators served, for tests and the demo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Graph requests (token requests excluded).
    pub graph_requests: u64,
    /// Portal requests.
    pub portal_requests: u64,
    /// Token requests.
    pub token_requests: u64,
    /// Requests to the identity endpoints (OIDC issuers, managed identity); in neither
    /// `graph_requests` nor `token_requests`.
    pub identity_requests: u64,
    /// Injected 429s.
    pub throttled: u64,
    /// Injected failures.
    pub injected_failures: u64,
    /// Successful writes (invitations, portal POST/PUT/DELETE, Graph PATCH/DELETE).
    pub writes: u64,
    /// Accepted `POST /v1.0/$batch` requests (also counted in `graph_requests`).
    pub graph_batches: u64,
    /// Inner requests of accepted batches (not counted in `graph_requests`: they are not
    /// requests on the wire).
    pub graph_batch_inner_requests: u64,
    /// Requests processed whose answer is being held, or was ([`HoldRule`]).
    pub held: u64,
    /// Connections dropped instead of answered ([`Faults::drop_every`]; also counted in
    /// `injected_failures`).
    pub dropped: u64,
}

/// One request the simulator received on the wire (inner `$batch` requests and the identity
/// endpoints are not logged), with when it arrived and when it was answered, so that a test
/// can count what reached a service within a span of the simulator's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// When the request arrived (before any injected latency).
    pub received: tokio::time::Instant,
    /// When its answer left.
    pub answered: tokio::time::Instant,
    /// Graph (token endpoint included) or the portal.
    pub system: SystemKind,
    /// Whether it went to the token endpoint rather than Graph itself.
    pub token: bool,
    /// HTTP method.
    pub method: String,
    /// Path (no query: it may hold addresses).
    pub path: String,
    /// Status of the answer.
    pub status: u16,
    /// The connection was dropped instead of answered ([`Faults::drop_every`]).
    pub dropped: bool,
    /// The listing page this was, when the client received it whole (a `200` not dropped).
    pub listing: Option<ListingPage>,
    /// What the service wrote, even when the client got an injected failure or a dropped
    /// connection instead of the answer.
    pub wrote: Option<Wrote>,
}

/// The most requests [`SimState::requests`] keeps (the oldest are dropped).
pub const REQUEST_LOG_LIMIT: usize = 65_536;

/// Everything the emulators hold, behind one lock.
#[derive(Debug, Default)]
pub struct SimState {
    /// The tenant.
    pub graph: graph::Directory,
    /// The portal organization.
    pub portal: portal::PortalDb,
    /// Graph faults (token endpoint included).
    pub graph_faults: Faults,
    /// Portal faults.
    pub portal_faults: Faults,
    /// Faults of Graph's `$batch` (inner throttling).
    pub graph_batch_faults: graph::batch::BatchFaults,
    /// What was served.
    pub counters: Counters,
    /// The last [`REQUEST_LOG_LIMIT`] requests on the wire, in the order they were answered.
    pub requests: std::collections::VecDeque<LoggedRequest>,
    /// The test OIDC issuers and the managed-identity host.
    pub identity: entra::IdentityState,
}

/// A handle on the emulators; cheap to clone, shared by the HTTP handlers and tests.
#[derive(Debug, Clone, Default)]
pub struct Sim {
    inner: Arc<Mutex<SimState>>,
}

impl Sim {
    /// An empty tenant and portal with the default credentials of [`graph::SimCredentials`]
    /// and [`portal::SIM_API_KEY`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks the state for inspection or seeding. Never held across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock only happens in a failing test; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The router serving token endpoint, Graph and portal.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(graph::routes())
            .merge(entra::routes())
            .merge(portal::routes())
            .layer(middleware::from_fn_with_state(self.clone(), inject_faults))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }

    /// Binds `addr` (use port 0 for any), spawns the server and returns its base URL.
    pub async fn spawn(
        &self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<url::Url> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let sim = self.clone();
        tokio::spawn(async move {
            if let Err(err) = sim.serve(listener, shutdown).await {
                tracing::error!(error = %err, "simulator stopped");
            }
        });
        Ok(url::Url::parse(&format!("http://{local}/"))
            .expect("a socket address forms a valid URL"))
    }
}

impl Sim {
    /// A token of test issuer `issuer_name` of this simulator served at `base` (issuer URL
    /// [`entra::oidc::issuer_url`]), for `subject` and `audience`, expiring `expires_in`
    /// seconds from now (negative: already expired); e.g. for a Kubernetes-style token file.
    pub fn mint_federated_token(
        &self,
        base: &url::Url,
        issuer_name: &str,
        subject: &str,
        audience: &str,
        expires_in: i64,
    ) -> String {
        let issuer = entra::oidc::issuer_url(base.as_str(), issuer_name);
        entra::oidc::mint(&issuer, subject, audience, expires_in)
    }
}

fn system_of(path: &str) -> SystemKind {
    if path.starts_with("/api/") || path == "/api" {
        SystemKind::Portal
    } else if entra::is_identity_path(path) {
        SystemKind::Identity
    } else {
        SystemKind::Graph
    }
}

/// The fault-injection layer: latency, periodic 429, rule-based failures.
async fn inject_faults(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let system = system_of(request.uri().path());
    if system == SystemKind::Identity {
        sim.state().counters.identity_requests += 1;
        return next.run(request).await;
    }
    // An inner request of a `$batch`: the batch itself was counted, delayed and throttled on
    // the wire; only the rules that match requests apply to it.
    let inner = request
        .extensions()
        .get::<graph::batch::InnerRequest>()
        .is_some();
    let received = tokio::time::Instant::now();
    let is_token = request.uri().path().ends_with("/oauth2/v2.0/token");
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();

    let (latency, injected, hold, dropped) = {
        let mut state = sim.state();
        let count = match (system, is_token) {
            _ if inner => 0,
            (SystemKind::Graph, true) => {
                state.counters.token_requests += 1;
                state.counters.token_requests
            }
            (SystemKind::Graph, false) => {
                state.counters.graph_requests += 1;
                state.counters.graph_requests
            }
            (SystemKind::Portal, _) => {
                state.counters.portal_requests += 1;
                state.counters.portal_requests
            }
            (SystemKind::Identity, _) => 0,
        };
        let faults = match system {
            SystemKind::Graph | SystemKind::Identity => &mut state.graph_faults,
            SystemKind::Portal => &mut state.portal_faults,
        };
        let latency = if inner {
            Duration::ZERO
        } else {
            faults.latency
        };
        let retry_after = faults.retry_after.clone();
        let mut injected: Option<(u16, bool)> = None;
        if !is_token
            && !inner
            && faults
                .throttle_every
                .is_some_and(|n| n > 0 && count % n == 0)
        {
            injected = Some((429, false));
        } else if let Some(rule) = faults.fail.iter_mut().find(|r| {
            r.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&method))
                && path.starts_with(&r.path_prefix)
                && r.query_contains
                    .as_deref()
                    .is_none_or(|q| query.contains(q))
                && r.times.is_none_or(|t| t > 0)
        }) {
            if let Some(times) = rule.times.as_mut() {
                *times -= 1;
            }
            injected = Some((rule.status, rule.after_processing));
        }
        match injected {
            Some((429, _)) => state.counters.throttled += 1,
            Some(_) => state.counters.injected_failures += 1,
            None => {}
        }
        let faults = match system {
            SystemKind::Graph | SystemKind::Identity => &mut state.graph_faults,
            SystemKind::Portal => &mut state.portal_faults,
        };
        let dropped = injected.is_none()
            && !is_token
            && !inner
            && faults.drop_every.is_some_and(|n| n > 0 && count % n == 0);
        let hold = if injected.is_none() && !dropped && !is_token && !inner {
            faults
                .hold
                .iter_mut()
                .find(|r| {
                    r.method
                        .as_deref()
                        .is_none_or(|m| m.eq_ignore_ascii_case(&method))
                        && path.starts_with(&r.path_prefix)
                        && r.times.is_none_or(|t| t > 0)
                })
                .map(|rule| {
                    if let Some(times) = rule.times.as_mut() {
                        *times -= 1;
                    }
                    rule.delay
                })
        } else {
            None
        };
        if dropped {
            state.counters.injected_failures += 1;
            state.counters.dropped += 1;
        }
        (
            latency,
            injected.map(|(status, after)| (status, after, retry_after)),
            hold,
            dropped,
        )
    };

    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match injected {
        None => match hold {
            None => next.run(request).await,
            Some(delay) => {
                let response = next.run(request).await;
                sim.state().counters.held += 1;
                tokio::time::sleep(delay).await;
                response
            }
        },
        Some((status, after_processing, retry_after)) => {
            let mut response = fault_response(system, status, retry_after);
            if after_processing {
                let processed = next.run(request).await;
                if let Some(wrote) = processed.extensions().get::<Wrote>().cloned() {
                    response.extensions_mut().insert(wrote);
                }
            }
            response
        }
    };
    let wrote = response.extensions().get::<Wrote>().cloned();
    let listing = response
        .extensions()
        .get::<ListingPage>()
        .filter(|_| !dropped && response.status().is_success())
        .cloned();
    let status = response.status().as_u16();
    let response = if dropped {
        dropped_connection(response)
    } else {
        response
    };
    if !inner {
        let mut state = sim.state();
        if state.requests.len() >= REQUEST_LOG_LIMIT {
            state.requests.pop_front();
        }
        state.requests.push_back(LoggedRequest {
            received,
            answered: tokio::time::Instant::now(),
            system,
            token: is_token,
            method,
            path,
            status,
            dropped,
            listing,
            wrote,
        });
    }
    response
}

/// `response`'s head with a body that fails at once: hyper aborts the connection, so the
/// client sees it dropped before the answer was complete.
fn dropped_connection(response: Response) -> Response {
    let (parts, _) = response.into_parts();
    let failing = futures::stream::once(async {
        Err::<axum::body::Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection dropped by the simulator's fault injection",
        ))
    });
    Response::from_parts(parts, axum::body::Body::from_stream(failing))
}

/// An injected failure in the shape of the system's own errors.
fn fault_response(system: SystemKind, status: u16, retry_after: Option<String>) -> Response {
    let status = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match system {
        SystemKind::Graph | SystemKind::Identity => graph::error_response(
            status,
            if status.as_u16() == 429 {
                "TooManyRequests"
            } else {
                "serviceNotAvailable"
            },
            if status.as_u16() == 429 {
                "Please retry again later."
            } else {
                "The service is temporarily unavailable."
            },
        ),
        SystemKind::Portal => (
            status,
            axum::Json(serde_json::json!({ "message": "injected failure" })),
        )
            .into_response(),
    };
    if let Some(value) = retry_after
        && matches!(status.as_u16(), 429 | 503)
        && let Ok(value) = axum::http::HeaderValue::from_str(&value)
    {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}
