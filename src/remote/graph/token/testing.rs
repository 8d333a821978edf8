//! Test helpers of the token flows: the credential fixtures, a recording HTTP server on
//! loopback (the token endpoint, GitHub's OIDC endpoint, a managed-identity endpoint), and a
//! token endpoint of its URL.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use url::Url;

use super::TokenEndpoint;
use crate::remote::http::{Edge, RetryPolicy};

/// The client id the tests sign in as.
pub(crate) const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

/// A token answer of the v2 endpoint.
pub(crate) const TOKEN_ANSWER: &str =
    r#"{"token_type":"Bearer","expires_in":3599,"access_token":"graph-access-token"}"#;

/// The path of a fixture of `tests/fixtures/credentials/`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/credentials")
        .join(name)
}

/// One request the server received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Recorded {
    /// A header's value, or "".
    pub(crate) fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }

    /// A form field of the body.
    pub(crate) fn field(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// A query parameter.
    pub(crate) fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// What the server answers.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(status: u16, body: &str) -> Self {
        Answer {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_owned(),
        }
    }
}

type Responder = dyn Fn(&Recorded, usize) -> Answer + Send + Sync;

/// A loopback server that records every request and answers by a closure of the request
/// and its index.
pub(crate) struct Server {
    pub(crate) url: Url,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Server {
    pub(crate) async fn start(
        respond: impl Fn(&Recorded, usize) -> Answer + Send + Sync + 'static,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let respond: Arc<Responder> = Arc::new(respond);
        let recorded = Arc::clone(&requests);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let recorded = Arc::clone(&recorded);
            let respond = Arc::clone(&respond);
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let record = Recorded {
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or("").to_owned(),
                    headers: parts.headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let index = {
                    let mut all = recorded.lock().unwrap_or_else(|e| e.into_inner());
                    all.push(record.clone());
                    all.len() - 1
                };
                let answer = respond(&record, index);
                let mut response = axum::response::Response::builder().status(answer.status);
                for (name, value) in answer.headers {
                    response = response.header(name, value);
                }
                response
                    .body(axum::body::Body::from(answer.body))
                    .unwrap_or_else(|e| panic!("response: {e}"))
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let url = Url::parse(&format!("http://{addr}/")).unwrap_or_else(|e| panic!("{e}"));
        Server { url, requests }
    }

    /// The requests received so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `self.url` joined with `path`.
    pub(crate) fn at(&self, path: &str) -> Url {
        self.url.join(path).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A quick retry policy.
pub(crate) fn retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_total_wait: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    }
}

/// The token endpoint `{server}/tenant/oauth2/v2.0/token` of [`CLIENT_ID`], for Graph.
pub(crate) fn endpoint(server: &Url) -> TokenEndpoint {
    let edge = Edge::new(retry(), 4).unwrap_or_else(|e| panic!("edge: {e}"));
    let graph = Url::parse("https://graph.microsoft.com").unwrap_or_else(|e| panic!("{e}"));
    TokenEndpoint::new(edge, server, "tenant", CLIENT_ID, &graph)
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
}
