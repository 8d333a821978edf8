//! What can go wrong talking to Graph: [`GraphError`] (one failed operation), [`TokenFailure`]
//! (the token endpoint refused) and [`TokenProblem`] (that refusal classified as what to fix).
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
    .problem.advice(.secret_origin.as_deref()),
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
}

fn codes_suffix(codes: &[u64]) -> String {
    codes.iter().map(|c| format!(", AADSTS{c}")).collect()
}

/// What went wrong at the token endpoint, from `error` and `error_codes`, phrased as what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// AADSTS7000215: the secret is not the app's secret.
    WrongSecret,
    /// AADSTS7000222: the secret has expired.
    ExpiredSecret,
    /// AADSTS7000218: no secret was sent.
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
        let has = |c: u64| codes.contains(&c);
        if error == "temporarily_unavailable" || has(90024) || has(90055) {
            return Self::Unavailable;
        }
        if has(7000215) {
            return Self::WrongSecret;
        }
        if has(7000222) {
            return Self::ExpiredSecret;
        }
        if has(7000218) {
            return Self::MissingSecret;
        }
        if has(700016) {
            return Self::UnknownApp;
        }
        if has(90002) {
            return Self::UnknownTenant;
        }
        if has(7000112) {
            return Self::AppDisabled;
        }
        if has(500011) || error == "invalid_resource" {
            return Self::WrongResource;
        }
        if has(70011) || has(700022) || has(700023) || error == "invalid_scope" {
            return Self::InvalidScope;
        }
        let lower = description.to_ascii_lowercase();
        match error {
            "invalid_request" if lower.contains("tenant") && lower.contains("not found") => {
                Self::UnknownTenant
            }
            "invalid_client" => Self::ClientAuthentication,
            "unauthorized_client" => Self::UnauthorizedClient,
            _ => Self::Other,
        }
    }

    /// What the operator should do about it. `secret_origin` names where the client secret
    /// was read from (a file and its key, a systemd credential, an environment variable); the
    /// advice about the secret points there.
    pub fn advice(self, secret_origin: Option<&str>) -> String {
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
}
