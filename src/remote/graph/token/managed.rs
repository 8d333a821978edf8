//! `managedIdentity`: a token from the Azure host's managed-identity endpoint
//! (`docs/specs/microsoft-graph.md` §7, the azure_identity sources):
//!
//! - App Service / Container Apps / Functions: `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01
//!   &resource=…[&client_id=…]` with `X-IDENTITY-HEADER: {IDENTITY_HEADER}`;
//! - Azure Arc: `GET {IDENTITY_ENDPOINT}?api-version=2020-06-01&resource=…` with
//!   `Metadata: true`, answered `401` with `WWW-Authenticate: Basic realm=<file>`; the file must
//!   be directly inside the key directory, end in `.key` and hold at most 4096 bytes; the
//!   request is repeated with `Authorization: Basic <file content>`;
//! - IMDS: `GET {host}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…
//!   [&client_id=…]` with `Metadata: true`.
//!
//! These requests never go through a proxy (their own [`Edge::without_proxy`]). `404`, `429`
//! and `5xx` are retried with backoff, `410` (IMDS updating) for up to [`ManagedRetry::gone_for`]
//! ([`ManagedRetry`] is injectable so that tests are fast). The resource is the cloud's Graph
//! (`GraphSettings::resource`), never an overridden `graphEndpoint`.
//!
//! Plain `http://` is allowed here and nowhere else: for `IDENTITY_ENDPOINT` (the platform
//! serves it over http on the host) and for IMDS at `169.254.169.254`; other IMDS hosts
//! (`$AZURE_POD_IDENTITY_AUTHORITY_HOST`) follow [`check_url`] (https, or loopback http).

use std::fmt;
use std::path::{Component, Path};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderName, WWW_AUTHENTICATE};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{
    Fetched, TokenCache, TokenErrorBody, TokenFuture, TokenSource, first_line,
    parse_token_response, resource_name,
};
use crate::remote::graph::credential::{ManagedIdentitySettings, ManagedIdentitySource};
use crate::remote::graph::error::{
    CredentialError, GraphError, SignInContext, TokenFailure, TokenProblem,
};
use crate::remote::http::{Edge, Idempotency, Reply, Request, RetryPolicy, check_url};

/// The largest Arc challenge file accepted (as azure_identity checks).
pub const ARC_MAX_KEY_BYTES: u64 = 4096;

/// How a managed-identity endpoint's transient answers are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRetry {
    /// Retries of `404`, `429` and `5xx` after the first attempt.
    pub max_retries: usize,
    /// First backoff delay (doubled each retry).
    pub base_delay: Duration,
    /// Largest single backoff delay.
    pub max_delay: Duration,
    /// How long `410 Gone` (IMDS is being updated) is waited out.
    pub gone_for: Duration,
    /// The delay between attempts while IMDS answers `410`.
    pub gone_delay: Duration,
}

impl Default for ManagedRetry {
    /// IMDS guidance: 5 retries with exponential backoff (about 2, 4, 8, 16, 30 s); `410` for
    /// up to 70 s.
    fn default() -> Self {
        ManagedRetry {
            max_retries: 5,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
            gone_for: Duration::from_secs(70),
            gone_delay: Duration::from_secs(10),
        }
    }
}

/// `managedIdentity`.
pub struct ManagedIdentityCredential {
    edge: Edge,
    settings: ManagedIdentitySettings,
    /// The resource asked for, e.g. `https://graph.microsoft.com`.
    resource: String,
    retry: ManagedRetry,
    cache: TokenCache,
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("source", &self.settings.source.name())
            .field("endpoint", &self.endpoint().as_str())
            .field("client_id", &self.settings.client_id)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

const OPERATION: &str = "get a Graph access token from the managed identity";

impl ManagedIdentityCredential {
    /// A managed identity asking for `resource` (the cloud's Graph resource). Requests time out
    /// by `retry.timeout` and are retried by [`ManagedRetry::default`] (see
    /// [`ManagedIdentityCredential::with_retry`]).
    pub fn new(
        retry: RetryPolicy,
        settings: ManagedIdentitySettings,
        resource: &Url,
    ) -> Result<Self, GraphError> {
        check_endpoint(&settings.source)?;
        if let (ManagedIdentitySource::Arc { .. }, Some(_)) =
            (&settings.source, &settings.client_id)
        {
            return Err(GraphError::Config {
                detail: "Azure Arc offers only the system-assigned identity: remove \
                         tenant.credential.clientId"
                    .into(),
            });
        }
        // The retries of transient answers are this module's ([`ManagedRetry`]).
        let edge = Edge::without_proxy(
            RetryPolicy {
                max_retries: 0,
                ..retry
            },
            1,
        )
        .map_err(GraphError::Client)?;
        Ok(ManagedIdentityCredential {
            edge,
            settings,
            resource: resource_name(resource).to_owned(),
            retry: ManagedRetry::default(),
            cache: TokenCache::new(),
        })
    }

    /// Changes how transient answers are retried.
    pub fn with_retry(mut self, retry: ManagedRetry) -> Self {
        self.retry = retry;
        self
    }

    /// The endpoint, without the query.
    pub fn endpoint(&self) -> Url {
        match &self.settings.source {
            ManagedIdentitySource::AppService { endpoint, .. }
            | ManagedIdentitySource::Arc { endpoint, .. } => endpoint.clone(),
            ManagedIdentitySource::Imds { host } => {
                let mut url = host.clone();
                url.set_query(None);
                if let Ok(mut path) = url.path_segments_mut() {
                    path.clear()
                        .extend(["metadata", "identity", "oauth2", "token"]);
                }
                url
            }
        }
    }

    /// The URL of a token request: the endpoint with `api-version`, `resource` and, for a
    /// user-assigned identity, `client_id`.
    pub fn request_url(&self) -> Url {
        let mut url = self.endpoint();
        let version = match &self.settings.source {
            ManagedIdentitySource::AppService { .. } => "2019-08-01",
            ManagedIdentitySource::Arc { .. } => "2020-06-01",
            ManagedIdentitySource::Imds { .. } => "2018-02-01",
        };
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("api-version", version)
                .append_pair("resource", &self.resource);
            if let Some(id) = &self.settings.client_id {
                query.append_pair("client_id", id);
            }
        }
        url
    }

    fn request(&self) -> Result<Request, CredentialError> {
        let request = Request::new(reqwest::Method::GET, self.request_url());
        match &self.settings.source {
            ManagedIdentitySource::AppService { header, .. } => request
                .secret_header(
                    HeaderName::from_static("x-identity-header"),
                    header.secret(),
                )
                .map_err(|_| {
                    self.answered(format!(
                        "cannot be asked: {} cannot be sent in a header",
                        header.origin()
                    ))
                }),
            ManagedIdentitySource::Arc { .. } | ManagedIdentitySource::Imds { .. } => {
                Ok(request.header(HeaderName::from_static("metadata"), "true"))
            }
        }
    }

    fn answered(&self, detail: String) -> CredentialError {
        CredentialError::ManagedIdentity {
            source_name: self.settings.source.name(),
            endpoint: self.endpoint().to_string(),
            detail,
        }
    }

    async fn send(&self, request: &Request) -> Result<Reply, CredentialError> {
        self.edge
            .send(request, Idempotency::Idempotent)
            .await
            .map_err(|source| CredentialError::ManagedIdentityUnreachable {
                source_name: self.settings.source.name(),
                endpoint: self.endpoint().to_string(),
                source,
            })
    }

    async fn fetch(&self) -> Result<Fetched, GraphError> {
        let mut request = self.request()?;
        let mut retries = 0;
        let mut gone_waited = Duration::ZERO;
        let mut challenged = false;
        loop {
            let reply = self.send(&request).await?;
            let status = reply.status;
            if status.is_success() {
                return parse_token_response(&reply.body, OPERATION, SystemTime::now());
            }
            if status == StatusCode::UNAUTHORIZED
                && !challenged
                && let ManagedIdentitySource::Arc { key_directory, .. } = &self.settings.source
            {
                challenged = true;
                let secret = self.arc_secret(&reply, key_directory).await?;
                let basic = SecretString::from(format!("Basic {}", secret.expose_secret()));
                request = request.secret_header(AUTHORIZATION, &basic).map_err(|_| {
                    self.answered(
                        "named a challenge file whose content is not a header value".into(),
                    )
                })?;
                continue;
            }
            let code = status.as_u16();
            let delay = if code == 410 {
                (gone_waited + self.retry.gone_delay <= self.retry.gone_for).then(|| {
                    gone_waited += self.retry.gone_delay;
                    self.retry.gone_delay
                })
            } else if matches!(code, 404 | 429) || status.is_server_error() {
                (retries < self.retry.max_retries).then(|| {
                    retries += 1;
                    self.retry
                        .base_delay
                        .saturating_mul(1 << (retries - 1).min(10))
                        .min(self.retry.max_delay)
                })
            } else {
                None
            };
            if let Some(delay) = delay {
                tracing::debug!(
                    status = code,
                    delay_ms = delay.as_millis() as u64,
                    source = self.settings.source.name(),
                    "managed identity endpoint not ready; retrying"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            return Err(self.refusal(&reply));
        }
    }

    /// The error for a final non-success answer.
    fn refusal(&self, reply: &Reply) -> GraphError {
        let code = reply.status.as_u16();
        #[derive(serde::Deserialize, Default)]
        struct AppServiceError {
            #[serde(default)]
            message: Option<String>,
        }
        let body: TokenErrorBody = serde_json::from_slice(&reply.body).unwrap_or_default();
        let message = serde_json::from_slice::<AppServiceError>(&reply.body)
            .unwrap_or_default()
            .message;
        let description = first_line(if body.error_description.is_empty() {
            message.as_deref().unwrap_or("")
        } else {
            &body.error_description
        });
        if body.error.is_empty() && description.is_empty() {
            return self
                .answered(match code {
                    410 => format!(
                        "kept answering 410 (IMDS is being updated) for {} s: retry later",
                        self.retry.gone_for.as_secs()
                    ),
                    404 => "answered 404: no identity endpoint is ready on this host (or it is \
                            not an Azure host): check that a managed identity is assigned"
                        .into(),
                    _ => format!("answered {code} without an error body"),
                })
                .into();
        }
        let problem =
            TokenProblem::classify_managed(code, &body.error, &body.error_codes, &description);
        GraphError::Token(Box::new(TokenFailure {
            problem,
            status: code,
            error: if body.error.is_empty() {
                "(no error field)".into()
            } else {
                body.error
            },
            error_codes: body.error_codes,
            description,
            trace_id: body.trace_id,
            correlation_id: body.correlation_id,
            token_url: self.endpoint().to_string(),
            secret_origin: None,
            context: SignInContext::ManagedIdentity {
                source: self.settings.source.name(),
                client_id: self.settings.client_id.clone(),
                resource: self.resource.clone(),
            },
        }))
    }

    /// The secret of an Arc challenge: the content of the file its `WWW-Authenticate` names.
    async fn arc_secret(
        &self,
        reply: &Reply,
        key_directory: &Path,
    ) -> Result<SecretString, CredentialError> {
        let challenge = reply
            .headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let realm = challenge
            .split_once('=')
            .filter(|(scheme, _)| scheme.trim().eq_ignore_ascii_case("basic realm"))
            .map(|(_, path)| path.trim().trim_matches('"'))
            .filter(|path| !path.is_empty())
            .ok_or_else(|| {
                self.answered("answered 401 without a `Basic realm=<file>` challenge".into())
            })?;
        let file = Path::new(realm);
        let refused = |why: &str| {
            self.answered(format!(
                "named the challenge file {realm}, which is refused: {why} (a genuine Arc agent \
                 names a .key file directly in {})",
                key_directory.display()
            ))
        };
        if file
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            || file.parent() != Some(key_directory)
        {
            return Err(refused("it is not directly inside the key directory"));
        }
        if file.extension().and_then(|e| e.to_str()) != Some("key") {
            return Err(refused("it does not end in .key"));
        }
        let metadata = tokio::fs::metadata(file).await.map_err(|err| {
            refused(&format!(
                "it cannot be read ({err}); run as a member of the himds group"
            ))
        })?;
        if !metadata.is_file() {
            return Err(refused("it is not a file"));
        }
        if metadata.len() > ARC_MAX_KEY_BYTES {
            return Err(refused(&format!(
                "it is larger than {ARC_MAX_KEY_BYTES} bytes"
            )));
        }
        let content = tokio::fs::read_to_string(file)
            .await
            .map_err(|err| refused(&format!("it cannot be read ({err})")))?;
        Ok(SecretString::from(content.trim().to_owned()))
    }
}

/// Whether the endpoint may be used: `IDENTITY_ENDPOINT` over http or https; IMDS over https,
/// loopback http, or http at `169.254.169.254`.
fn check_endpoint(source: &ManagedIdentitySource) -> Result<(), GraphError> {
    let (url, variable) = match source {
        ManagedIdentitySource::AppService { endpoint, .. }
        | ManagedIdentitySource::Arc { endpoint, .. } => (endpoint, "$IDENTITY_ENDPOINT"),
        ManagedIdentitySource::Imds { host } => (host, "$AZURE_POD_IDENTITY_AUTHORITY_HOST"),
    };
    let allowed = match (source, url.scheme()) {
        (_, "https") => Ok(()),
        // The platform serves it over plain http on the host itself.
        (ManagedIdentitySource::AppService { .. } | ManagedIdentitySource::Arc { .. }, "http") => {
            Ok(())
        }
        (ManagedIdentitySource::Imds { .. }, "http")
            if url.host() == Some(url::Host::Ipv4(std::net::Ipv4Addr::new(169, 254, 169, 254))) =>
        {
            Ok(())
        }
        _ => check_url(url),
    };
    allowed.map_err(|reason| GraphError::Config {
        detail: format!("the managed identity endpoint {variable} `{url}`: {reason}"),
    })
}

impl TokenSource for ManagedIdentityCredential {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self.cache.get(self.fetch()))
    }

    fn invalidate(&self) {
        self.cache.invalidate();
    }
}
