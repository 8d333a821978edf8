//! From `tenant.credential.*` to the settings of a sign-in flow
//! ([`crate::remote::graph::CredentialSettings`]): the secret or file of the kind, and what the
//! platform provides (AKS's token file, GitHub Actions' OIDC request variables, the Azure
//! host's identity endpoint). Read when a command needs a token, never while loading.

use std::path::{Path, PathBuf};

use url::Url;

use super::secret::{
    CERTIFICATE_CREDENTIAL, CERTIFICATE_PASSWORD, CREDENTIALS_DIRECTORY, GRAPH_SECRET,
};
use super::{Config, ConfigError, CredentialConfig};
use crate::remote::Credential;
use crate::remote::graph::CredentialSettings;
use crate::remote::graph::credential::{
    CertificateSettings, GithubActionsSettings, ManagedIdentitySettings, ManagedIdentitySource,
};

/// The variable AKS workload identity sets to the projected token file.
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// GitHub Actions' OIDC token endpoint (set with `permissions: id-token: write`).
pub const ACTIONS_ID_TOKEN_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The bearer token for [`ACTIONS_ID_TOKEN_REQUEST_URL`].
pub const ACTIONS_ID_TOKEN_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

impl Config {
    /// The sign-in settings of `tenant.credential.kind`, reading its secret and the platform's
    /// variables from the process environment.
    pub fn load_credential(&self) -> Result<CredentialSettings, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        self.load_credential_with_env(&env)
    }

    /// [`Config::load_credential`] with an injected environment.
    pub fn load_credential_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CredentialSettings, ConfigError> {
        let kind = self.tenant.credential.kind().as_str();
        let unavailable = |message: String| ConfigError::CredentialUnavailable { kind, message };
        Ok(match &self.tenant.credential {
            CredentialConfig::ClientSecret => CredentialSettings::ClientSecret {
                secret: self
                    .tenant
                    .client_secret
                    .load_required(env, GRAPH_SECRET.file_key)?
                    .credential(),
            },
            CredentialConfig::ClientCertificate {
                certificate_file,
                password,
                send_chain,
                algorithm,
            } => {
                let (file, origin) = match certificate_file {
                    // The messages name the file; the origin says where its name came from.
                    Some(path) => (path.clone(), "tenant.credential.certificateFile".to_owned()),
                    None => match credential_file(env, CERTIFICATE_CREDENTIAL) {
                        Some(path) => (
                            path,
                            format!(
                                "the systemd credential {CERTIFICATE_CREDENTIAL}, LoadCredential="
                            ),
                        ),
                        None => {
                            return Err(unavailable(format!(
                                "no certificate was provided: set tenant.credential.certificateFile to a PEM file (the certificate and its RSA private key) or a PKCS#12 file, or provide the systemd credential `{CERTIFICATE_CREDENTIAL}` (LoadCredential={CERTIFICATE_CREDENTIAL}:/etc/guestops/graph.pem)"
                            )));
                        }
                    },
                };
                let password = password
                    .load_labelled(env, CERTIFICATE_PASSWORD.file_key)?
                    .map(|loaded| loaded.credential());
                CredentialSettings::ClientCertificate(CertificateSettings {
                    file,
                    origin,
                    password,
                    send_chain: *send_chain,
                    algorithm: *algorithm,
                })
            }
            CredentialConfig::WorkloadIdentity { token_file } => {
                let token_file = match token_file {
                    Some(path) => path.clone(),
                    None => {
                        match env(AZURE_FEDERATED_TOKEN_FILE).filter(|v| !v.trim().is_empty()) {
                            Some(path) => PathBuf::from(path.trim()),
                            None => {
                                return Err(unavailable(format!(
                                    "no federated token file is known: set tenant.credential.tokenFile, or run in a pod with the label azure.workload.identity/use: \"true\" and a service account annotated with azure.workload.identity/client-id, which sets ${AZURE_FEDERATED_TOKEN_FILE}"
                                )));
                            }
                        }
                    }
                };
                CredentialSettings::WorkloadIdentity { token_file }
            }
            CredentialConfig::GithubActions { audience } => {
                let hint = "run it in a GitHub Actions job with `permissions: id-token: write` (see docs/pr-workflow.md)";
                let url_text = env(ACTIONS_ID_TOKEN_REQUEST_URL)
                    .filter(|v| !v.trim().is_empty())
                    .ok_or_else(|| {
                        unavailable(format!(
                            "${ACTIONS_ID_TOKEN_REQUEST_URL} is not set: {hint}"
                        ))
                    })?;
                let request_url = Url::parse(url_text.trim()).map_err(|e| {
                    unavailable(format!(
                        "${ACTIONS_ID_TOKEN_REQUEST_URL} is not a URL ({e}): {hint}"
                    ))
                })?;
                let token = env(ACTIONS_ID_TOKEN_REQUEST_TOKEN)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        unavailable(format!(
                            "${ACTIONS_ID_TOKEN_REQUEST_TOKEN} is not set: {hint}"
                        ))
                    })?;
                CredentialSettings::GithubActions(GithubActionsSettings {
                    request_url,
                    request_token: Credential::new(
                        token.into(),
                        format!("the environment variable {ACTIONS_ID_TOKEN_REQUEST_TOKEN}"),
                    ),
                    audience: audience.clone(),
                })
            }
            CredentialConfig::ManagedIdentity { client_id } => {
                let source = ManagedIdentitySource::detect(env).map_err(|e| {
                    unavailable(format!(
                        "the identity endpoint the environment names is unusable: {e}"
                    ))
                })?;
                CredentialSettings::ManagedIdentity(ManagedIdentitySettings {
                    client_id: client_id.clone(),
                    source,
                })
            }
        })
    }
}

/// `$CREDENTIALS_DIRECTORY/name` when it exists.
fn credential_file(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<PathBuf> {
    let dir = env(CREDENTIALS_DIRECTORY).filter(|d| !d.is_empty())?;
    let path = Path::new(&dir).join(name);
    path.exists().then_some(path)
}
