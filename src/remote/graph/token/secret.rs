//! `clientSecret`: the client-credentials grant with a client secret
//! (`docs/specs/microsoft-graph.md` §7). A refused secret's advice names where it was read from.

use std::fmt;
use std::time::Duration;

use url::Url;

use super::{ClientAuth, TokenCache, TokenEndpoint, TokenFuture, TokenSource};
use crate::remote::Credential;
use crate::remote::graph::error::{GraphError, SignInContext};
use crate::remote::http::Edge;

/// The OAuth 2.0 client-credentials flow with a client secret.
pub struct ClientSecretCredential {
    endpoint: TokenEndpoint,
    secret: Credential,
    cache: TokenCache,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("endpoint", &self.endpoint)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl ClientSecretCredential {
    /// A credential for `client_id` in `tenant` at `authority_host`, asking for
    /// `{graph_endpoint}/.default`. `edge` is shared with the Graph client (its retry policy
    /// and concurrency bound apply to token requests too). `secret`'s origin is named in the
    /// advice when the token endpoint refuses the secret.
    pub fn new(
        edge: Edge,
        authority_host: &Url,
        tenant: &str,
        client_id: &str,
        secret: Credential,
        graph_endpoint: &Url,
    ) -> Result<Self, GraphError> {
        let endpoint = TokenEndpoint::new(edge, authority_host, tenant, client_id, graph_endpoint)?;
        Ok(Self::from_endpoint(endpoint, secret))
    }

    pub(crate) fn from_endpoint(endpoint: TokenEndpoint, secret: Credential) -> Self {
        ClientSecretCredential {
            endpoint,
            secret,
            cache: TokenCache::new(),
        }
    }

    /// Changes the refresh margin (default [`super::DEFAULT_REFRESH_MARGIN`]).
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.cache.set_margin(margin);
        self
    }

    /// The token endpoint used.
    pub fn token_url(&self) -> &Url {
        self.endpoint.token_url()
    }
}

impl TokenSource for ClientSecretCredential {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(
            self.cache.get(
                self.endpoint
                    .exchange(ClientAuth::Secret(&self.secret), &SignInContext::Secret),
            ),
        )
    }

    fn invalidate(&self) {
        self.cache.invalidate();
    }
}
