//! How guestops signs in to Entra: the settings of each credential kind
//! (`tenant.credential.kind`, `docs/config.md`), as the configuration hands them to the Graph
//! client. The flows themselves live in [`super::token`]; this module only names what each
//! needs, so that `config` builds it without knowing the flows and `token` builds a
//! [`super::token::TokenSource`] from it without reading the configuration.
//!
//! Nothing here holds a secret in the clear: secrets are [`Credential`]s (redacted in `Debug`),
//! files are paths read when the token source is built (the certificate) or before each token
//! request (a rotating federated token).

use std::fmt;
use std::path::PathBuf;

use url::Url;

use crate::remote::Credential;

/// The credential kind and what it needs.
#[derive(Debug, Clone)]
pub enum CredentialSettings {
    /// `clientSecret`: the OAuth client-credentials grant with a client secret.
    ClientSecret {
        /// The secret and where it was read from.
        secret: Credential,
    },
    /// `clientCertificate`: a client assertion (a JWT signed with the certificate's private key).
    ClientCertificate(CertificateSettings),
    /// `workloadIdentity`: a federated token read from a file before each token request
    /// (AKS workload identity projects it and rotates it).
    WorkloadIdentity {
        /// The token file (`tenant.credential.tokenFile`, default `$AZURE_FEDERATED_TOKEN_FILE`).
        token_file: PathBuf,
    },
    /// `githubActions`: a federated token from GitHub Actions' OIDC provider.
    GithubActions(GithubActionsSettings),
    /// `managedIdentity`: a token from the Azure host's identity endpoint.
    ManagedIdentity(ManagedIdentitySettings),
}

impl CredentialSettings {
    /// The config name of the kind, e.g. `clientCertificate`.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialSettings::ClientSecret { .. } => "clientSecret",
            CredentialSettings::ClientCertificate(_) => "clientCertificate",
            CredentialSettings::WorkloadIdentity { .. } => "workloadIdentity",
            CredentialSettings::GithubActions(_) => "githubActions",
            CredentialSettings::ManagedIdentity(_) => "managedIdentity",
        }
    }
}

/// The signature algorithm of a certificate's client assertion
/// (`tenant.credential.assertionAlgorithm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256, header `x5t#S256` (current Microsoft docs; the default).
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, header `x5t` (SHA-1 thumbprint; older setups).
    Rs256,
}

impl AssertionAlgorithm {
    /// The JWT `alg` name (and config value): `PS256` or `RS256`.
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAlgorithm::Ps256 => "PS256",
            AssertionAlgorithm::Rs256 => "RS256",
        }
    }

    /// Parses a config value (`PS256`, `RS256`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "PS256" => Some(AssertionAlgorithm::Ps256),
            "RS256" => Some(AssertionAlgorithm::Rs256),
            _ => None,
        }
    }
}

impl fmt::Display for AssertionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `clientCertificate`.
#[derive(Debug, Clone)]
pub struct CertificateSettings {
    /// The certificate file: PEM (the certificate, optionally its chain, and its RSA private
    /// key) or PKCS#12 (`.pfx`/`.p12`, told apart by content, not by name).
    pub file: PathBuf,
    /// Where the file name came from, for messages, e.g. `tenant.credential.certificateFile`
    /// or `the systemd credential graph-certificate`.
    pub origin: String,
    /// The PKCS#12 password, when one was configured.
    pub password: Option<Credential>,
    /// Send the chain in the `x5c` header (subject-name/issuer authentication).
    pub send_chain: bool,
    /// PS256 (default) or RS256.
    pub algorithm: AssertionAlgorithm,
}

/// `githubActions`.
#[derive(Debug, Clone)]
pub struct GithubActionsSettings {
    /// `$ACTIONS_ID_TOKEN_REQUEST_URL` (the runner's OIDC token endpoint, with a query).
    pub request_url: Url,
    /// `$ACTIONS_ID_TOKEN_REQUEST_TOKEN`, sent as the bearer token of that request.
    pub request_token: Credential,
    /// The audience asked for (`tenant.credential.audience`, default
    /// [`DEFAULT_FEDERATION_AUDIENCE`]); it must be one of the federated credential's audiences.
    pub audience: String,
}

/// The audience Microsoft recommends for federated identity credentials.
pub const DEFAULT_FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

/// `managedIdentity`.
#[derive(Debug, Clone)]
pub struct ManagedIdentitySettings {
    /// The client id of a user-assigned identity (`tenant.credential.clientId`); `None`: the
    /// system-assigned identity.
    pub client_id: Option<String>,
    /// Which endpoint the host offers ([`ManagedIdentitySource::detect`]).
    pub source: ManagedIdentitySource,
}

/// The IMDS address on every Azure VM (the same in every cloud).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// Where Azure Arc puts the challenge files its identity endpoint names (Linux).
pub const ARC_KEY_DIRECTORY: &str = "/var/opt/azcmagent/tokens";

/// The managed-identity endpoint of the host, as Azure's SDKs find it from the environment.
#[derive(Debug, Clone)]
pub enum ManagedIdentitySource {
    /// App Service, Container Apps, Functions: `$IDENTITY_ENDPOINT` with the header
    /// `X-IDENTITY-HEADER: $IDENTITY_HEADER`, `api-version=2019-08-01`.
    AppService {
        /// `$IDENTITY_ENDPOINT`.
        endpoint: Url,
        /// `$IDENTITY_HEADER`.
        header: Credential,
    },
    /// Azure Arc: `$IDENTITY_ENDPOINT` (with `$IMDS_ENDPOINT` set), answered first with a
    /// challenge naming a file under `key_directory` whose content is the secret.
    Arc {
        /// `$IDENTITY_ENDPOINT`.
        endpoint: Url,
        /// The folder a challenge file must be in ([`ARC_KEY_DIRECTORY`]; another one only
        /// in tests).
        key_directory: PathBuf,
    },
    /// IMDS on a VM: `{host}/metadata/identity/oauth2/token` with `Metadata: true`,
    /// `api-version=2018-02-01`, never through a proxy. `host` is [`IMDS_ENDPOINT`] unless
    /// `$AZURE_POD_IDENTITY_AUTHORITY_HOST` overrides it.
    Imds {
        /// The IMDS root.
        host: Url,
    },
}

impl ManagedIdentitySource {
    /// The source the environment `env` describes, in the order of Azure's SDKs: App Service
    /// (`IDENTITY_ENDPOINT` and `IDENTITY_HEADER`), Arc (`IDENTITY_ENDPOINT` and
    /// `IMDS_ENDPOINT`), else IMDS (`AZURE_POD_IDENTITY_AUTHORITY_HOST` or [`IMDS_ENDPOINT`]).
    /// An error names the variable that does not hold a URL.
    pub fn detect(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let url = |var: &str| -> Result<Option<Url>, String> {
            match env(var).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(text) => Url::parse(text.trim())
                    .map(Some)
                    .map_err(|e| format!("${var} `{text}` is not a URL: {e}")),
            }
        };
        if let Some(endpoint) = url("IDENTITY_ENDPOINT")? {
            if let Some(header) = env("IDENTITY_HEADER").filter(|v| !v.is_empty()) {
                return Ok(ManagedIdentitySource::AppService {
                    endpoint,
                    header: Credential::new(
                        header.into(),
                        "the environment variable IDENTITY_HEADER",
                    ),
                });
            }
            if env("IMDS_ENDPOINT").is_some_and(|v| !v.is_empty()) {
                return Ok(ManagedIdentitySource::Arc {
                    endpoint,
                    key_directory: PathBuf::from(ARC_KEY_DIRECTORY),
                });
            }
        }
        let host = match url("AZURE_POD_IDENTITY_AUTHORITY_HOST")? {
            Some(host) => host,
            // A constant that parses.
            None => Url::parse(IMDS_ENDPOINT).expect("constant IMDS URL"),
        };
        Ok(ManagedIdentitySource::Imds { host })
    }

    /// A name for messages: `App Service`, `Azure Arc`, `IMDS`.
    pub fn name(&self) -> &'static str {
        match self {
            ManagedIdentitySource::AppService { .. } => "the App Service identity endpoint",
            ManagedIdentitySource::Arc { .. } => "the Azure Arc identity endpoint",
            ManagedIdentitySource::Imds { .. } => "IMDS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_environment_selects_the_managed_identity_endpoint() {
        let app = ManagedIdentitySource::detect(&env_of(&[
            ("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]));
        assert!(matches!(app, Ok(ManagedIdentitySource::AppService { .. })));
        let arc = ManagedIdentitySource::detect(&env_of(&[
            (
                "IDENTITY_ENDPOINT",
                "http://localhost:40342/metadata/identity/oauth2/token",
            ),
            ("IMDS_ENDPOINT", "http://localhost:40342"),
        ]));
        assert!(matches!(arc, Ok(ManagedIdentitySource::Arc { .. })));
        match ManagedIdentitySource::detect(&env_of(&[])) {
            Ok(ManagedIdentitySource::Imds { host }) => {
                assert_eq!(host.as_str(), "http://169.254.169.254/");
            }
            other => panic!("{other:?}"),
        }
        match ManagedIdentitySource::detect(&env_of(&[(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "http://127.0.0.1:9",
        )])) {
            Ok(ManagedIdentitySource::Imds { host }) => {
                assert_eq!(host.as_str(), "http://127.0.0.1:9/");
            }
            other => panic!("{other:?}"),
        }
        let bad = ManagedIdentitySource::detect(&env_of(&[("IDENTITY_ENDPOINT", "not a url")]));
        assert!(bad.is_err_and(|e| e.contains("$IDENTITY_ENDPOINT")));
    }
}
