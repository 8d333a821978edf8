//! Secret loading (design §5, §12): explicit file key, else the systemd credential
//! `$CREDENTIALS_DIRECTORY/<name>`, else an environment variable. Values are
//! [`SecretString`]s: never in argv, never logged, redacted in `Debug`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, SecretSource};

/// The environment variable systemd sets to the directory of `LoadCredential=` files.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// A secret file larger than this is refused (a secret is a line, not a document).
const MAX_SECRET_SIZE: u64 = 64 * 1024;

/// The three secrets guestops reads, with their credential names and variables.
pub(crate) struct KnownSecret {
    /// Human name for messages.
    pub what: &'static str,
    /// The systemd credential name.
    pub credential: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The config key naming a file.
    pub file_key: &'static str,
}

impl KnownSecret {
    /// The source used when the file key is not set.
    pub(crate) fn source(&self) -> SecretSource {
        SecretSource::CredentialOrEnv {
            credential: self.credential.to_owned(),
            env: self.env.to_owned(),
            file_key: self.file_key.to_owned(),
        }
    }
}

/// The Graph client secret.
pub(crate) const GRAPH_SECRET: KnownSecret = KnownSecret {
    what: "Graph client secret",
    credential: "graph-secret",
    env: "GUESTOPS_TENANT_CLIENT_SECRET",
    file_key: "tenant.credential.secretFile",
};
/// The password of a PKCS#12 certificate file (`tenant.credential.kind: clientCertificate`).
pub(crate) const CERTIFICATE_PASSWORD: KnownSecret = KnownSecret {
    what: "certificate password",
    credential: "graph-certificate-password",
    env: "GUESTOPS_TENANT_CERTIFICATE_PASSWORD",
    file_key: "tenant.credential.passwordFile",
};
/// The systemd credential that holds the certificate file when
/// `tenant.credential.certificateFile` is not set.
pub(crate) const CERTIFICATE_CREDENTIAL: &str = "graph-certificate";
/// The portal API key.
pub(crate) const PORTAL_API_KEY: KnownSecret = KnownSecret {
    what: "portal API key",
    credential: "portal-api-key",
    env: "GUESTOPS_PORTAL_API_KEY",
    file_key: "portal.apiKeyFile",
};
/// The GitHub webhook secret.
pub(crate) const WEBHOOK_SECRET: KnownSecret = KnownSecret {
    what: "webhook secret",
    credential: "webhook-secret",
    env: "GUESTOPS_SERVER_WEBHOOK_SECRET",
    file_key: "server.webhookSecretFile",
};

fn what_of(credential: &str) -> String {
    [
        GRAPH_SECRET,
        CERTIFICATE_PASSWORD,
        PORTAL_API_KEY,
        WEBHOOK_SECRET,
    ]
    .into_iter()
    .find(|s| s.credential == credential)
    .map(|s| s.what.to_owned())
    .unwrap_or_else(|| format!("secret `{credential}`"))
}

/// Where a loaded secret was read from: named in hints about a refused secret, so that the
/// operator fixes the place actually used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    /// A file named by a config key (or a path given directly).
    File {
        /// The file.
        path: PathBuf,
        /// The key that names it, e.g. `tenant.credential.secretFile`.
        key: String,
    },
    /// A systemd credential, `$CREDENTIALS_DIRECTORY/<name>`.
    Credential {
        /// The credential name, e.g. `graph-secret`.
        name: String,
        /// The file it was read from.
        path: PathBuf,
    },
    /// An environment variable.
    Env {
        /// The variable, e.g. `GUESTOPS_TENANT_CLIENT_SECRET`.
        var: String,
    },
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOrigin::File { path, key } => write!(f, "the file {} ({key})", path.display()),
            SecretOrigin::Credential { name, path } => write!(
                f,
                "the systemd credential {name} ({}, LoadCredential=)",
                path.display()
            ),
            SecretOrigin::Env { var } => write!(f, "the environment variable {var}"),
        }
    }
}

/// A secret and where it was read from. `Debug` never shows the value.
#[derive(Clone)]
pub struct LoadedSecret {
    value: SecretString,
    origin: SecretOrigin,
}

impl LoadedSecret {
    /// `value`, read from `origin`.
    pub fn new(value: SecretString, origin: SecretOrigin) -> Self {
        LoadedSecret { value, origin }
    }

    /// Where it was read from.
    pub fn origin(&self) -> &SecretOrigin {
        &self.origin
    }

    /// The value.
    pub fn value(&self) -> &SecretString {
        &self.value
    }

    /// The secret for a remote client, its origin described for hints.
    pub fn credential(&self) -> crate::remote::Credential {
        crate::remote::Credential::new(self.value.clone(), self.origin.to_string())
    }
}

impl ExposeSecret<str> for LoadedSecret {
    fn expose_secret(&self) -> &str {
        self.value.expose_secret()
    }
}

impl fmt::Debug for LoadedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedSecret")
            .field("value", &"[REDACTED]")
            .field("origin", &self.origin)
            .finish()
    }
}

/// The secrets a command needs, loaded by [`super::Config::load_secrets`].
/// `Debug` shows `[REDACTED]` for every value.
#[derive(Debug)]
pub struct Secrets {
    /// How guestops signs in to Entra, with the secret of that kind (a client secret, a
    /// certificate's password) and where it was read from.
    pub graph_credential: crate::remote::graph::CredentialSettings,
    /// The portal `X-API-Key`, and where it was read from.
    pub portal_api_key: LoadedSecret,
    /// The GitHub webhook HMAC secret; `None` when none is provided (webhook off).
    pub webhook_secret: Option<SecretString>,
}

impl SecretSource {
    /// Reads the secret, looking up `CREDENTIALS_DIRECTORY` and variables in the process
    /// environment.
    pub fn load(&self) -> Result<LoadedSecret, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        self.load_with_env(&env)
    }

    /// Reads the secret with an injected environment. Missing everywhere is an error.
    pub fn load_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<LoadedSecret, ConfigError> {
        self.load_required(env, "secret file")
    }

    /// [`SecretSource::load_with_env`]; `file_key` names an explicit file in errors.
    pub(crate) fn load_required(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        file_key: &str,
    ) -> Result<LoadedSecret, ConfigError> {
        match self.load_labelled(env, file_key)? {
            Some(secret) => Ok(secret),
            None => Err(self.missing()),
        }
    }

    /// Reads the secret when one is provided: `Ok(None)` when a [`SecretSource::Env`] variable
    /// is unset or, for [`SecretSource::CredentialOrEnv`], when neither the credential file nor
    /// the variable exists. An explicit file that cannot be read is always an error.
    pub fn load_optional_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<LoadedSecret>, ConfigError> {
        self.load_labelled(env, "secret file")
    }

    /// [`SecretSource::load_optional_with_env`]; `file_key` names an explicit file in errors.
    pub(crate) fn load_labelled(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        file_key: &str,
    ) -> Result<Option<LoadedSecret>, ConfigError> {
        match self {
            SecretSource::File(path) => read_secret_file(path, file_key).map(|value| {
                Some(LoadedSecret::new(
                    value,
                    SecretOrigin::File {
                        path: path.clone(),
                        key: file_key.to_owned(),
                    },
                ))
            }),
            SecretSource::Env(var) => from_env(var, var, env),
            SecretSource::CredentialOrEnv {
                credential,
                env: var,
                file_key: _,
            } => {
                if let Some(dir) = env(CREDENTIALS_DIRECTORY).filter(|d| !d.is_empty()) {
                    let path = Path::new(&dir).join(credential);
                    if path.exists() {
                        let value = read_secret_file(&path, &format!("credential {credential}"))?;
                        return Ok(Some(LoadedSecret::new(
                            value,
                            SecretOrigin::Credential {
                                name: credential.clone(),
                                path,
                            },
                        )));
                    }
                }
                from_env(var, credential, env)
            }
        }
    }

    fn missing(&self) -> ConfigError {
        match self {
            SecretSource::CredentialOrEnv {
                credential,
                env,
                file_key,
            } => ConfigError::SecretMissing {
                what: what_of(credential),
                file_key: file_key.clone(),
                credential: credential.clone(),
                env: env.clone(),
            },
            SecretSource::Env(var) => ConfigError::SecretEnvUnset { env: var.clone() },
            // An unreadable file is reported by `read_secret_file`, never as missing.
            SecretSource::File(path) => ConfigError::SecretEmpty {
                key: path.display().to_string(),
                place: format!("file {}", path.display()),
            },
        }
    }
}

/// The secret in variable `var`; `None` when unset, an error when set but empty.
fn from_env(
    var: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<LoadedSecret>, ConfigError> {
    match env(var) {
        None => Ok(None),
        Some(value) => {
            let value = trim_one_newline(value);
            if value.is_empty() {
                Err(ConfigError::SecretEmpty {
                    key: key.to_owned(),
                    place: format!("environment variable {var}"),
                })
            } else {
                Ok(Some(LoadedSecret::new(
                    SecretString::from(value),
                    SecretOrigin::Env {
                        var: var.to_owned(),
                    },
                )))
            }
        }
    }
}

/// Reads a secret file: at most [`MAX_SECRET_SIZE`], UTF-8, one trailing newline trimmed,
/// not empty. `key` names what the secret is for in errors.
fn read_secret_file(path: &Path, key: &str) -> Result<SecretString, ConfigError> {
    let unreadable = |source| ConfigError::SecretUnreadable {
        key: key.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_SIZE {
        return Err(ConfigError::SecretMalformed {
            key: key.to_owned(),
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_SECRET_SIZE} bytes"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::SecretMalformed {
        key: key.to_owned(),
        path: path.to_path_buf(),
        reason: "not UTF-8".to_owned(),
    })?;
    let text = trim_one_newline(text);
    if text.is_empty() {
        return Err(ConfigError::SecretEmpty {
            key: key.to_owned(),
            place: format!("file {}", path.display()),
        });
    }
    Ok(SecretString::from(text))
}

/// Removes one trailing `\n` (or `\r\n`), as written by `echo` or an editor.
fn trim_one_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}
