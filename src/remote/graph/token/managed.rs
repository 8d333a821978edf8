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
    Fetched, Refusal, TokenCache, TokenErrorBody, TokenFuture, TokenSource, first_line,
    parse_token_response, resource_name,
};
use crate::remote::graph::credential::{ManagedIdentitySettings, ManagedIdentitySource};
use crate::remote::graph::error::{CredentialError, GraphError, SignInContext, TokenProblem};
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
        let Refusal {
            body,
            description,
            problem,
        } = parse_refusal(&reply.body, code);
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
        body.into_failure(
            problem,
            code,
            description,
            self.endpoint().as_str(),
            None,
            SignInContext::ManagedIdentity {
                source: self.settings.source.name(),
                client_id: self.settings.client_id.clone(),
                resource: self.resource.clone(),
            },
        )
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
/// Reads the error answer (`status`) of a managed-identity endpoint: the token endpoint's
/// body, or App Service's `{"message"}` for the description when `error_description` is empty,
/// classified by [`TokenProblem::classify_managed`].
pub(crate) fn parse_refusal(bytes: &[u8], status: u16) -> Refusal {
    #[derive(serde::Deserialize, Default)]
    struct AppServiceError {
        #[serde(default)]
        message: Option<String>,
    }
    let body = TokenErrorBody::parse(bytes);
    let message = serde_json::from_slice::<AppServiceError>(bytes)
        .unwrap_or_default()
        .message;
    let description = first_line(if body.error_description.is_empty() {
        message.as_deref().unwrap_or("")
    } else {
        &body.error_description
    });
    let problem =
        TokenProblem::classify_managed(status, &body.error, &body.error_codes, &description);
    Refusal {
        body,
        description,
        problem,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Credential;
    use crate::remote::graph::token::testing::{Answer, Server, retry};

    fn fast() -> ManagedRetry {
        ManagedRetry {
            max_retries: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            gone_for: Duration::from_millis(10),
            gone_delay: Duration::from_millis(2),
        }
    }

    fn resource() -> Url {
        Url::parse("https://graph.microsoft.us").unwrap_or_else(|e| panic!("{e}"))
    }

    fn credential(
        source: ManagedIdentitySource,
        client_id: Option<&str>,
    ) -> ManagedIdentityCredential {
        ManagedIdentityCredential::new(
            retry(),
            ManagedIdentitySettings {
                client_id: client_id.map(str::to_owned),
                source,
            },
            &resource(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .with_retry(fast())
    }

    async fn failure(credential: &ManagedIdentityCredential) -> GraphError {
        match credential.token().await {
            Ok(_) => panic!("a token"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn imds_is_asked_with_the_metadata_header_and_its_string_fields_are_read() {
        let server = Server::start(|_, n| match n {
            0 => Answer::json(404, ""),
            1 => Answer::json(410, ""),
            2 => Answer::json(503, ""),
            _ => Answer::json(
                200,
                r#"{"access_token":"imds-token","refresh_token":"","expires_in":"3599","expires_on":"1700003599","not_before":"1700000000","resource":"https://graph.microsoft.us","token_type":"Bearer"}"#,
            ),
        })
        .await;
        let credential = credential(
            ManagedIdentitySource::Imds {
                host: server.url.clone(),
            },
            Some("user-assigned-client-id"),
        );
        let token = credential.token().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.expose_secret(), "imds-token");
        let requests = server.requests();
        assert_eq!(requests.len(), 4, "404, 410 and 503 are retried");
        let request = &requests[3];
        assert_eq!(request.path, "/metadata/identity/oauth2/token");
        assert_eq!(request.param("api-version").as_deref(), Some("2018-02-01"));
        assert_eq!(
            request.param("resource").as_deref(),
            Some("https://graph.microsoft.us")
        );
        assert_eq!(
            request.param("client_id").as_deref(),
            Some("user-assigned-client-id")
        );
        assert_eq!(request.header("metadata"), "true");
        assert_eq!(request.header("authorization"), "");
    }

    #[tokio::test]
    async fn app_service_gets_its_header_and_expires_on() {
        let expires_on = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() + 3600)
            .unwrap_or_default();
        let body = format!(
            r#"{{"access_token":"app-service-token","expires_on":"{expires_on}","resource":"https://graph.microsoft.us","token_type":"Bearer","client_id":"c"}}"#
        );
        let server = Server::start(move |_, _| Answer::json(200, &body)).await;
        let credential = credential(
            ManagedIdentitySource::AppService {
                endpoint: server.at("msi/token"),
                header: Credential::new(
                    SecretString::from("identity-header-value".to_owned()),
                    "the environment variable IDENTITY_HEADER",
                ),
            },
            None,
        );
        let token = credential.token().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.expose_secret(), "app-service-token");
        let request = &server.requests()[0];
        assert_eq!(request.path, "/msi/token");
        assert_eq!(request.param("api-version").as_deref(), Some("2019-08-01"));
        assert_eq!(
            request.param("resource").as_deref(),
            Some("https://graph.microsoft.us")
        );
        assert_eq!(request.param("client_id"), None);
        assert_eq!(request.header("x-identity-header"), "identity-header-value");
        assert!(!format!("{credential:?}").contains("identity-header-value"));
    }

    #[tokio::test]
    async fn arc_answers_its_challenge_with_the_key_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = dir.path().join("challenge.key");
        std::fs::write(&key, "arc-secret-content").unwrap_or_else(|e| panic!("{e}"));
        let realm = key.display().to_string();
        let server = Server::start(move |r, _| {
            if r.header("authorization").is_empty() {
                Answer {
                    status: 401,
                    headers: vec![("www-authenticate", format!("Basic realm={realm}"))],
                    body: String::new(),
                }
            } else {
                Answer::json(
                    200,
                    r#"{"access_token":"arc-token","expires_in":"3599","token_type":"Bearer"}"#,
                )
            }
        })
        .await;
        let credential = credential(
            ManagedIdentitySource::Arc {
                endpoint: server.at("metadata/identity/oauth2/token"),
                key_directory: dir.path().to_owned(),
            },
            None,
        );
        let token = credential.token().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.expose_secret(), "arc-token");
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(
            requests[0].param("api-version").as_deref(),
            Some("2020-06-01")
        );
        assert_eq!(requests[0].header("metadata"), "true");
        assert_eq!(
            requests[1].header("authorization"),
            "Basic arc-secret-content"
        );
    }

    #[tokio::test]
    async fn an_arc_challenge_outside_the_key_directory_is_refused() {
        let keys = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let elsewhere = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let outside = elsewhere.path().join("stolen.key");
        std::fs::write(&outside, "not for you").unwrap_or_else(|e| panic!("{e}"));
        let not_key = keys.path().join("challenge.txt");
        std::fs::write(&not_key, "x").unwrap_or_else(|e| panic!("{e}"));
        let big = keys.path().join("big.key");
        std::fs::write(&big, vec![b'a'; 5000]).unwrap_or_else(|e| panic!("{e}"));
        let traversal = format!("{}/../{}", keys.path().display(), "x.key");
        for (realm, why) in [
            (outside.display().to_string(), "not directly inside"),
            (traversal, "not directly inside"),
            (not_key.display().to_string(), "does not end in .key"),
            (big.display().to_string(), "larger than 4096 bytes"),
        ] {
            let challenge = realm.clone();
            let server = Server::start(move |_, _| Answer {
                status: 401,
                headers: vec![("www-authenticate", format!("Basic realm={challenge}"))],
                body: String::new(),
            })
            .await;
            let credential = credential(
                ManagedIdentitySource::Arc {
                    endpoint: server.at("metadata/identity/oauth2/token"),
                    key_directory: keys.path().to_owned(),
                },
                None,
            );
            let message = failure(&credential).await.to_string();
            assert!(message.contains(why), "{realm}: {message}");
            assert!(!message.contains("not for you"), "{message}");
            assert_eq!(server.requests().len(), 1, "{realm}: no second request");
        }
    }

    #[tokio::test]
    async fn an_unknown_identity_and_a_bad_request_say_what_to_fix() {
        let server = Server::start(|r, _| match r.param("client_id").as_deref() {
            Some("unknown") => Answer::json(
                400,
                r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
            ),
            _ => Answer::json(
                400,
                r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#,
            ),
        })
        .await;
        let imds = || ManagedIdentitySource::Imds {
            host: server.url.clone(),
        };
        let err = failure(&credential(imds(), Some("unknown"))).await;
        assert_eq!(
            err.token_problem(),
            Some(TokenProblem::ManagedIdentityNotFound)
        );
        let message = err.to_string();
        assert!(message.contains("client id unknown"), "{message}");
        assert!(message.contains("tenant.credential.clientId"), "{message}");
        let err = failure(&credential(imds(), None)).await;
        assert_eq!(
            err.token_problem(),
            Some(TokenProblem::ManagedIdentityRequest)
        );
        assert!(err.to_string().contains("400"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_asks_whether_this_is_an_azure_host() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        let host = Url::parse(&format!("http://{address}/")).unwrap_or_else(|e| panic!("{e}"));
        let err = failure(&credential(ManagedIdentitySource::Imds { host }, None)).await;
        let message = err.to_string();
        assert!(
            message.contains("no managed identity endpoint answered"),
            "{message}"
        );
        assert!(message.contains(&address.to_string()), "{message}");
        assert!(message.contains("Azure"), "{message}");
    }

    #[test]
    fn plain_http_only_for_imds_and_the_identity_endpoint() {
        let build = |source| {
            ManagedIdentityCredential::new(
                retry(),
                ManagedIdentitySettings {
                    client_id: None,
                    source,
                },
                &resource(),
            )
            .map(|_| ())
        };
        let url = |u: &str| Url::parse(u).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            build(ManagedIdentitySource::Imds {
                host: url("http://169.254.169.254")
            })
            .is_ok()
        );
        assert!(
            build(ManagedIdentitySource::Imds {
                host: url("http://127.0.0.1:9")
            })
            .is_ok()
        );
        assert!(matches!(
            build(ManagedIdentitySource::Imds {
                host: url("http://10.0.0.4")
            }),
            Err(GraphError::Config { .. })
        ));
        let header = Credential::new(SecretString::from("h".to_owned()), "env");
        assert!(
            build(ManagedIdentitySource::AppService {
                endpoint: url("http://172.17.0.1:8081/msi/token"),
                header
            })
            .is_ok()
        );
        assert!(matches!(
            build(ManagedIdentitySource::Imds {
                host: url("ftp://169.254.169.254")
            }),
            Err(GraphError::Config { .. })
        ));
    }
}
