//! What can go wrong talking to Graph: [`GraphError`] (one failed operation), [`TokenFailure`]
//! (the token endpoint, or a managed-identity endpoint, refused), [`TokenProblem`] (that
//! refusal classified as what to fix, phrased for the sign-in kind of its [`SignInContext`])
//! and [`CredentialError`] (a credential guestops cannot use: a certificate file, a federated
//! token, an identity endpoint that does not answer).
//!
//! Shared by the client ([`super::client`]) and the token flow ([`super::token`]), which both
//! import it; it imports neither. Each message says its own part only: a cause is returned by
//! `source()`, never repeated in the text (print with [`crate::error::chain`]).

use std::time::Duration;

use crate::remote::http::TransportError;

/// A failed Graph operation. Keeps Graph's `code`, `message` and `request-id`.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error status.
    #[error("Graph answered {status} {code} to {operation}: {message}{}", api_advice(*.status, .code))]
    Api {
        /// What was being done, e.g. `list guests`.
        operation: String,
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
        /// `innerError.request-id` or the `request-id` header.
        request_id: Option<String>,
    },

    /// Graph kept answering `429 Too Many Requests` for longer than the retry budget allows.
    #[error(
        "Graph kept throttling {operation} (429) beyond the retry budget{}; nothing was changed by \
         the refused request: retry later, or lower tenant.concurrency",
        .retry_after.map(|d| format!(" (last Retry-After {}s)", d.as_secs_f64())).unwrap_or_default()
    )]
    Throttled {
        /// What was being done.
        operation: String,
        /// The last `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// The `request-id` of the last response.
        request_id: Option<String>,
    },

    /// No access token could be obtained.
    #[error("{0}")]
    Token(Box<TokenFailure>),

    /// The credential itself cannot be used (a certificate file, a federated token, a
    /// managed-identity endpoint), before or instead of the token endpoint's answer.
    #[error("{0}")]
    Credential(Box<CredentialError>),

    /// The request got no (complete) HTTP answer (connection, TLS, timeout).
    #[error(
        "could not reach Graph to {operation}{}; check tenant.graphEndpoint / tenant.authorityHost \
         and the network",
        if *.maybe_sent { " (the request may have been processed)" } else { "" }
    )]
    Transport {
        /// What was being done.
        operation: String,
        /// The underlying failure (it names the address and the attempts).
        #[source]
        source: TransportError,
        /// Whether the request may have reached Graph (a write may have happened).
        maybe_sent: bool,
        /// Attempts made.
        attempts: usize,
    },

    /// Graph answered success with a body that does not have the documented shape.
    #[error("Graph answered {operation} with an unexpected response: {detail}")]
    Malformed {
        /// What was being done.
        operation: String,
        /// What was wrong.
        detail: String,
        /// The `request-id` header, if any.
        request_id: Option<String>,
    },

    /// A listing did not end within the page guard.
    #[error(
        "{operation} did not end after {pages} pages of @odata.nextLink; the listing was \
         abandoned (nothing is assumed about the rest)"
    )]
    TooManyPages {
        /// What was being done.
        operation: String,
        /// Pages read.
        pages: usize,
    },

    /// The client cannot be built from its settings.
    #[error("invalid Graph client configuration: {detail}")]
    Config {
        /// What is wrong and how to fix it.
        detail: String,
    },

    /// The HTTP client could not be built (TLS backend).
    #[error("cannot build the Graph HTTP client")]
    Client(#[source] reqwest::Error),
}

impl GraphError {
    /// Wraps a transport failure of `operation`.
    pub(crate) fn transport(operation: &str, source: TransportError) -> Self {
        GraphError::Transport {
            operation: operation.to_owned(),
            maybe_sent: source.maybe_sent,
            attempts: source.attempts,
            source,
        }
    }

    /// The Graph `request-id`, for the audit log.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            GraphError::Api { request_id, .. }
            | GraphError::Throttled { request_id, .. }
            | GraphError::Malformed { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Whether a write may have happened despite the error (timeout, 5xx): the caller must
    /// look the user up before repeating the write.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            GraphError::Api { status, .. } => *status >= 500 || *status == 408,
            GraphError::Transport { maybe_sent, .. } => *maybe_sent,
            GraphError::Malformed { .. } => true,
            _ => false,
        }
    }

    /// Whether a delta link can no longer be followed and the sync must start over
    /// (`docs/specs/microsoft-graph.md` §3): `410 Gone` (its `Location` is the start of a new
    /// sync), or a 4xx with `syncStateNotFound` or `resyncRequired` (the codes the errors doc
    /// lists for an expired sync state).
    pub fn is_resync_required(&self) -> bool {
        match self {
            GraphError::Api { status, code, .. } => {
                *status == 410
                    || ((400..500).contains(status)
                        && ["syncStateNotFound", "resyncRequired"]
                            .iter()
                            .any(|c| c.eq_ignore_ascii_case(code)))
            }
            _ => false,
        }
    }

    /// The HTTP status Graph answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Api { status, .. } => Some(*status),
            GraphError::Token(failure) => Some(failure.status),
            GraphError::Throttled { .. } => Some(429),
            _ => None,
        }
    }

    /// The token problem, when no token could be obtained.
    pub fn token_problem(&self) -> Option<TokenProblem> {
        match self {
            GraphError::Token(failure) => Some(failure.problem),
            _ => None,
        }
    }

    /// Graph's `error.code`, when Graph answered with an error body.
    pub fn code(&self) -> Option<&str> {
        match self {
            GraphError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// How long Graph asked to wait (`Retry-After` of a throttle that outlasted the retry
    /// budget), for the daemon's backoff.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What to do about an error status, by status and Graph code.
fn api_advice(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (403, _) => {
            " — the app lacks an application permission: grant User.Invite.All (invitations) and \
             User.Read.All (reads), plus User.EnableDisableAccount.All to disable or \
             User.DeleteRestore.All to delete guests, with admin consent"
        }
        (401, _) => {
            " — Graph refused the access token: check tenant.tenantId and tenant.cloud (the \
             token must be issued for the Graph of that cloud)"
        }
        (400, "Request_UnsupportedQuery") => {
            " — this query needs advanced query support; this is a guestops bug, please report it"
        }
        (404, _) => " — the object does not exist (or is not replicated yet)",
        (s, _) if s >= 500 => " — Graph failed; it is retried on the next reconcile",
        _ => "",
    }
}

/// Why the token endpoint refused, with what to fix ([`GraphError::Token`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "could not get a Graph access token from {token_url}: {} ({error}{}{}: {description})",
    .problem.advice_for(.context, .secret_origin.as_deref()),
    codes_suffix(.error_codes),
    .trace_id.as_deref().map(|t| format!(", trace id {t}")).unwrap_or_default()
)]
pub struct TokenFailure {
    /// The classified problem (what to fix).
    pub problem: TokenProblem,
    /// HTTP status of the token endpoint.
    pub status: u16,
    /// The OAuth `error` value, e.g. `invalid_client`.
    pub error: String,
    /// The AADSTS `error_codes`.
    pub error_codes: Vec<u64>,
    /// First line of `error_description`.
    pub description: String,
    /// `trace_id`, for a support request.
    pub trace_id: Option<String>,
    /// `correlation_id`, for a support request.
    pub correlation_id: Option<String>,
    /// The token endpoint that refused.
    pub token_url: String,
    /// Where the client secret was read from (e.g. `the environment variable
    /// GUESTOPS_TENANT_CLIENT_SECRET`), named in the advice; `None` when unknown.
    pub secret_origin: Option<String>,
    /// What guestops signed in with, for the advice of the kinds that are not a secret.
    pub context: SignInContext,
}

fn codes_suffix(codes: &[u64]) -> String {
    codes.iter().map(|c| format!(", AADSTS{c}")).collect()
}

/// What guestops signed in with, as far as the advice about a refusal needs it. Holds no
/// secret: thumbprints, file names, and the claims of a federated token (which are not secret;
/// its signature is never kept here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SignInContext {
    /// Unknown (or a client secret: its origin is [`TokenFailure::secret_origin`]).
    #[default]
    Secret,
    /// `clientCertificate`.
    Certificate {
        /// The app's client id.
        client_id: String,
        /// The certificate file.
        file: String,
        /// SHA-1 thumbprint in hex, as the portal shows it.
        sha1: String,
        /// SHA-256 thumbprint in hex.
        sha256: String,
        /// The assertion's algorithm, `PS256` or `RS256`.
        algorithm: &'static str,
    },
    /// `workloadIdentity` or `githubActions`.
    Federated {
        /// The app's client id.
        client_id: String,
        /// Where the federated token came from.
        source: FederatedSource,
        /// The claims of the token guestops sent (read without verifying, for this message).
        claims: Option<FederatedClaims>,
    },
    /// `managedIdentity`.
    ManagedIdentity {
        /// Which endpoint, e.g. `IMDS`.
        source: &'static str,
        /// The user-assigned identity's client id; `None`: system-assigned.
        client_id: Option<String>,
        /// The Graph resource asked for.
        resource: String,
    },
}

/// Where a federated token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FederatedSource {
    /// A token file (`workloadIdentity`).
    File(String),
    /// GitHub Actions' OIDC provider, asked for this audience.
    GithubActions {
        /// The audience asked for.
        audience: String,
    },
}

/// The claims of a federated token that a federated identity credential must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FederatedClaims {
    /// `iss`.
    pub issuer: Option<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `aud` (one or several).
    pub audiences: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires: Option<i64>,
}

/// A credential that cannot be used, found by guestops itself (not refused by Entra).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The certificate file cannot be used.
    #[error("cannot sign in with the certificate {file} ({origin}): {detail}")]
    Certificate {
        /// The file.
        file: String,
        /// Where its name came from.
        origin: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The client assertion could not be signed.
    #[error("cannot sign the client assertion with the certificate {file}: {detail}")]
    Signing {
        /// The file.
        file: String,
        /// What failed (never the key).
        detail: String,
    },
    /// The federated token file cannot be read or is empty.
    #[error(
        "cannot read the federated token file {file} (tenant.credential.tokenFile, default \
         $AZURE_FEDERATED_TOKEN_FILE): {detail}"
    )]
    TokenFile {
        /// The file.
        file: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// GitHub Actions did not hand out an OIDC token.
    #[error("cannot get a GitHub Actions OIDC token from {endpoint}: {detail}")]
    Github {
        /// The request URL without its query.
        endpoint: String,
        /// What is wrong and what to do.
        detail: String,
        /// The transport failure, if that was it.
        #[source]
        source: Option<TransportError>,
    },
    /// No managed-identity endpoint answered.
    #[error(
        "no managed identity endpoint answered at {endpoint} ({source_name}): is this an Azure \
         VM, App Service or Arc machine with a managed identity assigned? Elsewhere use another \
         tenant.credential.kind"
    )]
    ManagedIdentityUnreachable {
        /// Which endpoint, e.g. `IMDS`.
        source_name: &'static str,
        /// Its address.
        endpoint: String,
        /// The transport failure.
        #[source]
        source: TransportError,
    },
    /// The managed-identity endpoint answered something guestops cannot use.
    #[error("{source_name} at {endpoint} {detail}")]
    ManagedIdentity {
        /// Which endpoint, e.g. `IMDS`.
        source_name: &'static str,
        /// Its address.
        endpoint: String,
        /// What it answered, and what to do.
        detail: String,
    },
}

impl From<CredentialError> for GraphError {
    fn from(err: CredentialError) -> Self {
        GraphError::Credential(Box::new(err))
    }
}

/// What went wrong at the token endpoint, from `error` and `error_codes`, phrased as what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// AADSTS7000215: the secret is not the app's secret.
    WrongSecret,
    /// AADSTS7000222: the secret has expired.
    ExpiredSecret,
    /// AADSTS7000218: no secret (or assertion) was sent.
    MissingSecret,
    /// AADSTS700016: no such application in the tenant.
    UnknownApp,
    /// AADSTS90002 (or `invalid_request` "tenant not found"): no such tenant in this cloud.
    UnknownTenant,
    /// AADSTS7000112: the application is disabled.
    AppDisabled,
    /// AADSTS500011 / `invalid_resource`: the Graph endpoint does not belong to this cloud/tenant.
    WrongResource,
    /// AADSTS70011 / 700022 / 700023 / `invalid_scope`: the scope was refused.
    InvalidScope,
    /// `temporarily_unavailable` / AADSTS90024 (or 90055 throttling), still failing after retries.
    Unavailable,
    /// AADSTS700027: the assertion's signature is invalid, or its key (certificate) is not
    /// registered on the app.
    CertificateNotRegistered,
    /// AADSTS50012 / 50013 / 900384 (or 50027): the assertion is malformed or its signature
    /// failed validation.
    InvalidAssertion,
    /// AADSTS700024: the assertion is not within its valid time range (a clock off, or an
    /// expired federated token).
    AssertionTime,
    /// AADSTS700211: no federated identity credential has the token's issuer.
    FederatedIssuer,
    /// AADSTS700212: no federated identity credential has the token's audience.
    FederatedAudience,
    /// AADSTS700213: no federated identity credential has the token's subject.
    FederatedSubject,
    /// AADSTS70021: no federated identity credential matches the token.
    FederatedNoMatch,
    /// A managed-identity endpoint does not know the identity (user-assigned client id not
    /// assigned to this host, or no system-assigned identity).
    ManagedIdentityNotFound,
    /// A managed-identity endpoint answered `400` otherwise.
    ManagedIdentityRequest,
    /// `invalid_client` without a more precise code.
    ClientAuthentication,
    /// `unauthorized_client` without a more precise code.
    UnauthorizedClient,
    /// Anything else.
    Other,
}

impl TokenProblem {
    /// Classifies a token-endpoint error: `error` decides the family, `error_codes` refine it.
    pub fn classify(error: &str, codes: &[u64], description: &str) -> Self {
        let has = |c: u64| {
            codes.contains(&c) || description.trim_start().starts_with(&format!("AADSTS{c}:"))
        };
        if error == "temporarily_unavailable" || has(90024) || has(90055) {
            return Self::Unavailable;
        }
        const TABLE: &[(u64, TokenProblem)] = &[
            (7000215, TokenProblem::WrongSecret),
            (7000222, TokenProblem::ExpiredSecret),
            (7000218, TokenProblem::MissingSecret),
            (700016, TokenProblem::UnknownApp),
            (90002, TokenProblem::UnknownTenant),
            (7000112, TokenProblem::AppDisabled),
            (700027, TokenProblem::CertificateNotRegistered),
            (700024, TokenProblem::AssertionTime),
            (700211, TokenProblem::FederatedIssuer),
            (700212, TokenProblem::FederatedAudience),
            (700213, TokenProblem::FederatedSubject),
            (70021, TokenProblem::FederatedNoMatch),
            (50012, TokenProblem::InvalidAssertion),
            (50013, TokenProblem::InvalidAssertion),
            (50027, TokenProblem::InvalidAssertion),
            (900384, TokenProblem::InvalidAssertion),
            (500011, TokenProblem::WrongResource),
            (70011, TokenProblem::InvalidScope),
            (700022, TokenProblem::InvalidScope),
            (700023, TokenProblem::InvalidScope),
        ];
        if let Some((_, problem)) = TABLE.iter().find(|(code, _)| has(*code)) {
            return *problem;
        }
        let lower = description.to_ascii_lowercase();
        match error {
            "invalid_resource" => Self::WrongResource,
            "invalid_scope" => Self::InvalidScope,
            "invalid_request" if lower.contains("tenant") && lower.contains("not found") => {
                Self::UnknownTenant
            }
            "invalid_client" => Self::ClientAuthentication,
            "unauthorized_client" => Self::UnauthorizedClient,
            _ => Self::Other,
        }
    }

    /// Classifies the error answer of a managed-identity endpoint (IMDS, App Service, Arc):
    /// the identity-not-found answers first, then the token endpoint's classification, and a
    /// remaining `400` is a refused request.
    pub fn classify_managed(status: u16, error: &str, codes: &[u64], description: &str) -> Self {
        let lower = description.to_ascii_lowercase();
        // IMDS: "Identity not found"; App Service: "No User Assigned or Delegated Managed
        // Identity found for specified ClientId/ResourceId/PrincipalId."
        if lower.contains("identity")
            && (lower.contains("not found")
                || lower.contains("not assigned")
                || (lower.starts_with("no ") && lower.contains("found")))
        {
            return Self::ManagedIdentityNotFound;
        }
        match Self::classify(error, codes, description) {
            Self::Other | Self::ClientAuthentication | Self::UnauthorizedClient
                if status == 400 =>
            {
                Self::ManagedIdentityRequest
            }
            problem => problem,
        }
    }

    /// What the operator should do about it. `secret_origin` names where the client secret
    /// was read from (a file and its key, a systemd credential, an environment variable); the
    /// advice about the secret points there.
    pub fn advice(self, secret_origin: Option<&str>) -> String {
        self.advice_for(&SignInContext::Secret, secret_origin)
    }

    /// What the operator should do about it, for the credential kind of `context` (a client
    /// secret: `secret_origin` names where it was read from).
    pub fn advice_for(self, context: &SignInContext, secret_origin: Option<&str>) -> String {
        match (self, context) {
            (
                Self::CertificateNotRegistered | Self::InvalidAssertion,
                SignInContext::Certificate {
                    client_id,
                    file,
                    sha1,
                    sha256,
                    algorithm,
                },
            ) => format!(
                "the certificate with thumbprint {sha1} (SHA-256 {sha256}) from {file} is not \
                 registered on app {client_id}, or the assertion's signature ({algorithm}) was \
                 refused: upload that certificate (the .crt, never the key) under App \
                 registrations → {client_id} → Certificates & secrets → Certificates; if it is \
                 registered, try tenant.credential.assertionAlgorithm: RS256"
            ),
            (Self::AssertionTime, SignInContext::Certificate { .. }) => {
                "the client assertion is outside its valid time: check this machine's clock \
                 (NTP); guestops makes each assertion valid from now for 10 minutes"
                    .to_owned()
            }
            (Self::AssertionTime, SignInContext::Federated { source, claims, .. }) => {
                let expired = claims
                    .as_ref()
                    .and_then(|c| c.expires)
                    .and_then(|e| chrono::DateTime::from_timestamp(e, 0))
                    .map(|e| format!(" (it expired at {})", e.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default();
                match source {
                    FederatedSource::File(file) => format!(
                        "the federated token in {file} has expired{expired}: the file is not \
                         being refreshed; check the projected service-account token volume \
                         (the Azure Workload Identity webhook) and the clock"
                    ),
                    FederatedSource::GithubActions { .. } => format!(
                        "the GitHub Actions OIDC token has expired{expired}: check the runner's \
                         clock"
                    ),
                }
            }
            (
                Self::FederatedIssuer
                | Self::FederatedAudience
                | Self::FederatedSubject
                | Self::FederatedNoMatch,
                SignInContext::Federated {
                    client_id,
                    source,
                    claims,
                },
            ) => federated_advice(self, client_id, source, claims.as_ref()),
            (
                Self::MissingSecret,
                SignInContext::Federated {
                    source: FederatedSource::File(file),
                    ..
                },
            ) => format!("no federated token was sent: check that {file} is not empty"),
            (Self::MissingSecret, SignInContext::Certificate { .. }) => {
                "no client assertion was received: this is a guestops bug, please report it"
                    .to_owned()
            }
            (Self::WrongSecret | Self::ExpiredSecret, SignInContext::Certificate { .. }) => {
                "the token endpoint expected a client secret: the app refuses certificates? \
                 check tenant.clientId and tenant.credential.kind"
                    .to_owned()
            }
            (
                Self::ClientAuthentication,
                SignInContext::Certificate {
                    client_id, sha1, ..
                },
            ) => {
                format!(
                    "client authentication failed: check tenant.clientId ({client_id}) and that \
                     the certificate with thumbprint {sha1} is registered on that app"
                )
            }
            (Self::ClientAuthentication, SignInContext::Federated { client_id, .. }) => format!(
                "client authentication failed: check tenant.clientId ({client_id}) and the \
                 app's federated credentials (Certificates & secrets → Federated credentials)"
            ),
            (
                Self::ManagedIdentityNotFound,
                SignInContext::ManagedIdentity {
                    source, client_id, ..
                },
            ) => match client_id {
                Some(id) => format!(
                    "{source} does not know the user-assigned identity with client id {id}: \
                     assign it to this resource (Identity → User assigned), or check \
                     tenant.credential.clientId"
                ),
                None => format!(
                    "{source} has no system-assigned identity for this resource: turn it on \
                     (Identity → System assigned → On), or set tenant.credential.clientId to a \
                     user-assigned identity's client id"
                ),
            },
            (Self::ManagedIdentityRequest, SignInContext::ManagedIdentity { source, .. }) => {
                format!(
                    "{source} refused the request (400): check tenant.credential.clientId (a \
                     client id, not an object or resource id) and tenant.cloud"
                )
            }
            (
                Self::WrongResource | Self::InvalidScope,
                SignInContext::ManagedIdentity { resource, .. },
            ) => format!(
                "the resource {resource} was refused: check tenant.cloud (the managed identity \
                 asks for the Graph of that cloud)"
            ),
            (Self::UnknownApp, SignInContext::ManagedIdentity { .. }) => {
                "the managed identity's service principal was not found: check \
                 tenant.credential.clientId and that the identity still exists"
                    .to_owned()
            }
            _ => self.secret_advice(secret_origin),
        }
    }

    fn secret_advice(self, secret_origin: Option<&str>) -> String {
        let origin = secret_origin.unwrap_or("the client secret's source");
        match self {
            Self::WrongSecret => format!(
                "the client secret is wrong: put the secret VALUE (shown once when the secret was \
                 created), not the secret ID, in {origin}"
            ),
            Self::ExpiredSecret => format!(
                "the client secret has expired: create a new secret for the app registration \
                 (Certificates & secrets) and put it in {origin}"
            ),
            Self::MissingSecret => {
                format!("no client secret was sent: check that {origin} is not empty")
            }
            Self::UnknownApp => "the application was not found in the tenant: check \
                 tenant.clientId (the Application (client) ID) and tenant.tenantId, and that the \
                 app is consented in that tenant"
                .to_owned(),
            Self::UnknownTenant => "the tenant was not found: check tenant.tenantId (GUID or \
                 primary domain) and tenant.cloud / tenant.authorityHost"
                .to_owned(),
            Self::AppDisabled => "the application is disabled in the tenant: enable its service \
                 principal (Enterprise applications → Properties → Enabled for users to sign-in)"
                .to_owned(),
            Self::WrongResource => "Graph of this cloud is not known to the tenant: check \
                 tenant.cloud (global, usgov, usgov-dod, china) and tenant.authorityHost; tokens \
                 of one cloud do not work in another"
                .to_owned(),
            Self::InvalidScope => "the scope was refused: it is the Graph resource of \
                 tenant.cloud + /.default, e.g. https://graph.microsoft.com/.default; check \
                 tenant.cloud"
                .to_owned(),
            Self::Unavailable => {
                "the identity platform is temporarily unavailable or throttling: retry later"
                    .to_owned()
            }
            Self::CertificateNotRegistered | Self::InvalidAssertion => {
                "the client assertion was refused: check that its certificate is registered on \
                 the app (Certificates & secrets)"
                    .to_owned()
            }
            Self::AssertionTime => {
                "the assertion is outside its valid time: check the clock".to_owned()
            }
            Self::FederatedIssuer
            | Self::FederatedAudience
            | Self::FederatedSubject
            | Self::FederatedNoMatch => "no federated identity credential of the app matches \
                 the token: check its issuer, subject and audience"
                .to_owned(),
            Self::ManagedIdentityNotFound => "the managed identity was not found: check \
                 tenant.credential.clientId and the identities assigned to this resource"
                .to_owned(),
            Self::ManagedIdentityRequest => {
                "the managed identity endpoint refused the request: check \
                 tenant.credential.clientId"
                    .to_owned()
            }
            Self::ClientAuthentication => format!(
                "client authentication failed: check tenant.clientId and the client secret in \
                 {origin}"
            ),
            Self::UnauthorizedClient => "the application may not use this flow in this tenant: \
                 check tenant.clientId, tenant.tenantId and the app registration"
                .to_owned(),
            Self::Other => "the token request was refused: see the error description".to_owned(),
        }
    }

    /// Whether retrying the same request may help.
    pub fn is_transient(self) -> bool {
        self == Self::Unavailable
    }
}

/// The advice for a federated token no federated identity credential matches: what guestops
/// sent, and which field of which credential to create or fix.
fn federated_advice(
    problem: TokenProblem,
    client_id: &str,
    source: &FederatedSource,
    claims: Option<&FederatedClaims>,
) -> String {
    let unknown = || "(unreadable)".to_owned();
    let issuer = claims
        .and_then(|c| c.issuer.clone())
        .unwrap_or_else(unknown);
    let subject = claims
        .and_then(|c| c.subject.clone())
        .unwrap_or_else(unknown);
    let audience = claims
        .map(|c| c.audiences.join(", "))
        .filter(|a| !a.is_empty())
        .unwrap_or_else(unknown);
    let field = match problem {
        TokenProblem::FederatedIssuer => "Issuer",
        TokenProblem::FederatedAudience => "Audience",
        TokenProblem::FederatedSubject => "Subject identifier",
        _ => "Issuer, Subject identifier and Audience",
    };
    let hint = match source {
        FederatedSource::GithubActions { audience: asked } => format!(
            "; for GitHub Actions the issuer is https://token.actions.githubusercontent.com, \
             the subject depends on the trigger (repo:<org>/<repo>:ref:refs/heads/<branch>, \
             repo:<org>/<repo>:environment:<name>, repo:<org>/<repo>:pull_request) and the \
             audience is tenant.credential.audience ({asked})"
        ),
        FederatedSource::File(file) => format!(
            "; for AKS the issuer is the cluster's OIDC issuer URL and the subject \
             system:serviceaccount:<namespace>:<service account> (token read from {file})"
        ),
    };
    format!(
        "no federated identity credential of app {client_id} matches the token guestops sent \
         (iss {issuer}, sub {subject}, aud {audience}): create or fix the credential's {field} \
         under App registrations → {client_id} → Certificates & secrets → Federated \
         credentials to exactly these values{hint}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_advice_names_where_the_secret_came_from() {
        let env = "the environment variable GUESTOPS_TENANT_CLIENT_SECRET";
        for problem in [
            TokenProblem::WrongSecret,
            TokenProblem::ExpiredSecret,
            TokenProblem::MissingSecret,
            TokenProblem::ClientAuthentication,
        ] {
            let advice = problem.advice(Some(env));
            assert!(advice.contains(env), "{problem:?}: {advice}");
            assert!(!advice.contains("secretFile"), "{problem:?}: {advice}");
        }
        assert!(TokenProblem::WrongSecret.advice(None).contains("VALUE"));
    }

    fn failure(problem: TokenProblem, description: &str, context: SignInContext) -> TokenFailure {
        TokenFailure {
            problem,
            status: 400,
            error: "invalid_client".into(),
            error_codes: vec![],
            description: description.into(),
            trace_id: None,
            correlation_id: None,
            token_url: "https://login.microsoftonline.com/t/oauth2/v2.0/token".into(),
            secret_origin: None,
            context,
        }
    }

    #[test]
    fn an_expired_assertion_is_a_clock_or_a_stale_token_file() {
        let federated = SignInContext::Federated {
            client_id: "app".into(),
            source: FederatedSource::File(
                "/var/run/secrets/azure/tokens/azure-identity-token".into(),
            ),
            claims: Some(FederatedClaims {
                expires: Some(1_700_000_000),
                ..FederatedClaims::default()
            }),
        };
        let advice = TokenProblem::AssertionTime.advice_for(&federated, None);
        assert!(advice.contains("not being refreshed"), "{advice}");
        assert!(advice.contains("azure-identity-token"), "{advice}");
        assert!(advice.contains("2023-11-14 22:13:20 UTC"), "{advice}");
        let certificate = SignInContext::Certificate {
            client_id: "app".into(),
            file: "/etc/guestops/app.pem".into(),
            sha1: "AB".into(),
            sha256: "CD".into(),
            algorithm: "PS256",
        };
        let advice = TokenProblem::AssertionTime.advice_for(&certificate, None);
        assert!(advice.contains("clock"), "{advice}");
    }

    #[test]
    fn an_unknown_code_shows_the_first_line_of_its_description() {
        let problem = TokenProblem::classify("invalid_grant", &[9999999], "AADSTS9999999: New.");
        assert_eq!(problem, TokenProblem::Other);
        let shown = failure(problem, "AADSTS9999999: New.", SignInContext::Secret).to_string();
        assert!(shown.contains("see the error description"), "{shown}");
        assert!(shown.contains("AADSTS9999999: New."), "{shown}");
    }

    #[test]
    fn the_github_subject_hint_names_the_documented_forms() {
        let context = SignInContext::Federated {
            client_id: "app".into(),
            source: FederatedSource::GithubActions {
                audience: "api://AzureADTokenExchange".into(),
            },
            claims: None,
        };
        let advice = TokenProblem::FederatedIssuer.advice_for(&context, None);
        assert!(
            advice.contains("create or fix the credential's Issuer"),
            "{advice}"
        );
        assert!(
            advice.contains("https://token.actions.githubusercontent.com"),
            "{advice}"
        );
        assert!(
            advice.contains("repo:<org>/<repo>:pull_request"),
            "{advice}"
        );
        assert!(advice.contains("iss (unreadable)"), "{advice}");
        let advice = TokenProblem::FederatedAudience.advice_for(&context, None);
        assert!(advice.contains("Audience"), "{advice}");
    }

    #[test]
    fn managed_identity_answers_are_classified() {
        use TokenProblem::*;
        let cases: &[(u16, &str, &str, TokenProblem)] = &[
            (
                400,
                "invalid_request",
                "Identity not found",
                ManagedIdentityNotFound,
            ),
            (
                400,
                "",
                "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId/PrincipalId.",
                ManagedIdentityNotFound,
            ),
            (
                400,
                "invalid_request",
                "Required metadata header not specified",
                ManagedIdentityRequest,
            ),
            (
                400,
                "invalid_resource",
                "AADSTS500011: The resource principal named https://graph.microsoft.us was not found in the tenant",
                WrongResource,
            ),
        ];
        for (status, error, description, expected) in cases {
            assert_eq!(
                TokenProblem::classify_managed(*status, error, &[], description),
                *expected,
                "{description}"
            );
        }
    }
}
