//! `clientCertificate`: the client-credentials grant with a client assertion, a JWT signed with
//! the private key of a certificate registered on the app (`docs/specs/microsoft-graph.md` §7,
//! Microsoft's "certificate credentials").
//!
//! The certificate file (PEM, or PKCS#12 told apart by content) is read once, when the token
//! source is built, and checked then: an RSA private key, the certificate it belongs to (the
//! leaf, whatever the order of a PEM chain), and that certificate valid now. Each token request
//! signs a fresh assertion: header `alg` PS256 with `x5t#S256` (or RS256 with `x5t`), `typ`
//! JWT, `x5c` with the chain when asked; claims `aud` the token URL, `iss` = `sub` the client
//! id, a new `jti`, `iat` = `nbf` now, `exp` ten minutes later.
//!
//! The key never leaves this module: `Debug` shows the [`CertificateInfo`] only, and errors name
//! the file and the thumbprints.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::{PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha1::Digest;

use super::{ClientAuth, Fetched, TokenCache, TokenEndpoint, TokenFuture, TokenSource};
use crate::remote::graph::credential::{AssertionAlgorithm, CertificateSettings};
use crate::remote::graph::error::{CredentialError, GraphError, SignInContext};

/// How long a client assertion is valid (Microsoft: keep it within 5–10 minutes).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// What a certificate is, for messages and for `guestops doctor`: never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The file it was read from.
    pub file: PathBuf,
    /// The leaf's subject, e.g. `CN=guestops`.
    pub subject: String,
    /// SHA-1 thumbprint in upper-case hex, as the Entra portal shows it.
    pub sha1_thumbprint: String,
    /// SHA-256 thumbprint in upper-case hex.
    pub sha256_thumbprint: String,
    /// The JWT `x5t` value: base64url (no padding) of the SHA-1 thumbprint.
    pub x5t: String,
    /// The JWT `x5t#S256` value: base64url (no padding) of the SHA-256 thumbprint.
    pub x5t_s256: String,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
    /// Certificates in the file's chain, the leaf included.
    pub chain_len: usize,
}

/// A certificate with its RSA private key, ready to sign client assertions.
pub struct ClientCertificate {
    info: CertificateInfo,
    /// DER of the chain, leaf first.
    chain: Vec<Vec<u8>>,
    key: EncodingKey,
    algorithm: AssertionAlgorithm,
    send_chain: bool,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("info", &self.info)
            .field("algorithm", &self.algorithm)
            .field("send_chain", &self.send_chain)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The claims of a client assertion.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

impl ClientCertificate {
    /// Reads and checks the file of `settings` (valid at `now`).
    pub fn load(settings: &CertificateSettings, now: SystemTime) -> Result<Self, CredentialError> {
        let bytes = std::fs::read(&settings.file).map_err(|err| {
            problem(
                settings,
                format!(
                    "it cannot be read ({err}); check the path and that guestops' user may read \
                     it"
                ),
            )
        })?;
        Self::from_bytes(&bytes, settings, now)
    }

    /// Parses `bytes` as the file of `settings` would be (valid at `now`).
    pub fn from_bytes(
        bytes: &[u8],
        settings: &CertificateSettings,
        now: SystemTime,
    ) -> Result<Self, CredentialError> {
        let (certs, key) = if looks_like_pem(bytes) {
            read_pem(bytes, settings)?
        } else {
            read_pkcs12(bytes, settings)?
        };
        if certs.is_empty() {
            return Err(problem(
                settings,
                "it holds no certificate: put the certificate (BEGIN CERTIFICATE) and its private \
                 key in the file"
                    .into(),
            ));
        }
        let public = RsaPublicKey::from(&key);
        let leaf = certs.iter().position(|der| {
            spki_of(der)
                .and_then(|spki| RsaPublicKey::from_public_key_der(&spki).ok())
                .is_some_and(|k| k == public)
        });
        let Some(leaf) = leaf else {
            let first = describe(&certs[0]).map(|i| {
                format!(
                    " (the certificate {} has thumbprint {})",
                    i.subject, i.sha1_thumbprint
                )
            });
            return Err(problem(
                settings,
                format!(
                    "the private key does not belong to the certificate{}: put the certificate \
                     and the key that was generated with it in the file",
                    first.unwrap_or_default()
                ),
            ));
        };
        let mut chain = certs;
        let leaf_der = chain.remove(leaf);
        chain.insert(0, leaf_der);
        let info = describe(&chain[0])
            .map(|mut info| {
                info.file = settings.file.clone();
                info.chain_len = chain.len();
                info
            })
            .ok_or_else(|| problem(settings, "its certificate cannot be parsed".into()))?;
        let now_utc: DateTime<Utc> = now.into();
        if now_utc > info.not_after {
            return Err(problem(
                settings,
                format!(
                    "the certificate {} (thumbprint {}) expired on {}: create a new one, upload \
                     its .crt under Certificates & secrets and point {} at it",
                    info.subject,
                    info.sha1_thumbprint,
                    info.not_after.format("%Y-%m-%d %H:%M:%S UTC"),
                    settings.origin
                ),
            ));
        }
        if now_utc < info.not_before {
            return Err(problem(
                settings,
                format!(
                    "the certificate {} (thumbprint {}) is not valid before {}: check this \
                     machine's clock",
                    info.subject,
                    info.sha1_thumbprint,
                    info.not_before.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            ));
        }
        let pkcs1 = key
            .to_pkcs1_der()
            .map_err(|_| problem(settings, "its RSA private key cannot be encoded".into()))?;
        Ok(ClientCertificate {
            info,
            chain,
            key: EncodingKey::from_rsa_der(pkcs1.as_bytes()),
            algorithm: settings.algorithm,
            send_chain: settings.send_chain,
        })
    }

    /// The certificate's thumbprints, subject and validity.
    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }

    /// A fresh client assertion for `client_id` at the token endpoint `audience`, issued at
    /// `now`.
    pub fn assertion(
        &self,
        audience: &str,
        client_id: &str,
        now: SystemTime,
    ) -> Result<SecretString, CredentialError> {
        let mut header = match self.algorithm {
            AssertionAlgorithm::Ps256 => {
                let mut header = Header::new(Algorithm::PS256);
                header.x5t_s256 = Some(self.info.x5t_s256.clone());
                header
            }
            AssertionAlgorithm::Rs256 => {
                let mut header = Header::new(Algorithm::RS256);
                header.x5t = Some(self.info.x5t.clone());
                header
            }
        };
        header.typ = Some("JWT".into());
        if self.send_chain {
            header.x5c = Some(self.chain.iter().map(|der| STANDARD.encode(der)).collect());
        }
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|err| CredentialError::Signing {
                file: self.info.file.display().to_string(),
                detail: err.to_string(),
            })
    }
}

/// The thumbprints, subject and validity of the certificate of `settings`, for `guestops
/// doctor` (the file is read and checked as the token source would).
pub fn certificate_info(
    settings: &CertificateSettings,
) -> Result<CertificateInfo, CredentialError> {
    ClientCertificate::load(settings, SystemTime::now()).map(|c| c.info)
}

fn problem(settings: &CertificateSettings, detail: String) -> CredentialError {
    CredentialError::Certificate {
        file: settings.file.display().to_string(),
        origin: settings.origin.clone(),
        detail,
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn read_pem(
    bytes: &[u8],
    settings: &CertificateSettings,
) -> Result<(Vec<Vec<u8>>, RsaPrivateKey), CredentialError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| problem(settings, format!("it is not valid PEM ({err})")))?;
    let key = match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => key,
        Err(_) if bytes.windows(21).any(|w| w == b"ENCRYPTED PRIVATE KEY") => {
            return Err(problem(
                settings,
                "its private key is encrypted: decrypt it (openssl pkey -in FILE -out KEY) or use \
                 a PKCS#12 file with tenant.credential.certificatePassword"
                    .into(),
            ));
        }
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(problem(
                settings,
                "it holds no private key: put the certificate and its private key (BEGIN PRIVATE \
                 KEY or BEGIN RSA PRIVATE KEY) in one PEM file"
                    .into(),
            ));
        }
        Err(err) => {
            return Err(problem(
                settings,
                format!("its private key is not valid PEM ({err})"),
            ));
        }
    };
    let key = match &key {
        PrivateKeyDer::Pkcs1(der) => RsaPrivateKey::from_pkcs1_der(der.secret_pkcs1_der())
            .map_err(|_| problem(settings, "its RSA private key (PKCS#1) is malformed".into()))?,
        PrivateKeyDer::Pkcs8(der) => rsa_from_pkcs8(der.secret_pkcs8_der(), settings)?,
        PrivateKeyDer::Sec1(_) => return Err(not_rsa(settings)),
        _ => return Err(not_rsa(settings)),
    };
    Ok((certs, key))
}

fn not_rsa(settings: &CertificateSettings) -> CredentialError {
    problem(
        settings,
        "its private key is not an RSA key: Entra client assertions are signed with RSA (PS256 \
         or RS256); create an RSA certificate"
            .into(),
    )
}

fn rsa_from_pkcs8(
    der: &[u8],
    settings: &CertificateSettings,
) -> Result<RsaPrivateKey, CredentialError> {
    // A PKCS#8 key of another algorithm (EC, Ed25519) fails on its algorithm identifier.
    RsaPrivateKey::from_pkcs8_der(der).map_err(|_| not_rsa(settings))
}

fn read_pkcs12(
    bytes: &[u8],
    settings: &CertificateSettings,
) -> Result<(Vec<Vec<u8>>, RsaPrivateKey), CredentialError> {
    let password = settings
        .password
        .as_ref()
        .map(|p| p.secret().expose_secret().to_owned())
        .unwrap_or_default();
    let store = p12_keystore::KeyStore::from_pkcs12(
        bytes,
        &password,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .map_err(|err| match err {
        p12_keystore::error::Error::MacError(_) | p12_keystore::error::Error::UnpadError => {
            match &settings.password {
                None => problem(
                    settings,
                    "it is a password-protected PKCS#12 file: set \
                     tenant.credential.certificatePassword"
                        .into(),
                ),
                Some(p) => problem(
                    settings,
                    format!(
                        "the PKCS#12 password from {} is wrong (the file's integrity check \
                         failed)",
                        p.origin()
                    ),
                ),
            }
        }
        p12_keystore::error::Error::DerError(_) | p12_keystore::error::Error::InvalidVersion => {
            problem(
                settings,
                "it is neither PEM (a certificate and its private key) nor PKCS#12 (.pfx/.p12)"
                    .into(),
            )
        }
        other => problem(
            settings,
            format!("the PKCS#12 file cannot be read ({other})"),
        ),
    })?;
    let Some((_, chain)) = store.private_key_chain() else {
        return Err(problem(
            settings,
            "the PKCS#12 file holds no private key with its certificate: export the certificate \
             with its private key"
                .into(),
        ));
    };
    let key = rsa_from_pkcs8(chain.key().as_der(), settings)?;
    let certs = chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
    Ok((certs, key))
}

/// The DER of the certificate's SubjectPublicKeyInfo.
fn spki_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// Subject, thumbprints and validity of a DER certificate (`file` and `chain_len` left empty).
fn describe(der: &[u8]) -> Option<CertificateInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sha1 = sha1::Sha1::digest(der);
    let sha256 = sha2::Sha256::digest(der);
    let time = |t: i64| DateTime::<Utc>::from_timestamp(t, 0);
    Some(CertificateInfo {
        file: PathBuf::new(),
        subject: cert.subject().to_string(),
        sha1_thumbprint: hex::encode_upper(sha1.as_slice()),
        sha256_thumbprint: hex::encode_upper(sha256.as_slice()),
        x5t: URL_SAFE_NO_PAD.encode(sha1.as_slice()),
        x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_slice()),
        not_before: time(cert.validity().not_before.timestamp())?,
        not_after: time(cert.validity().not_after.timestamp())?,
        chain_len: 1,
    })
}

/// `clientCertificate`: client assertions signed with a [`ClientCertificate`].
pub struct ClientCertificateCredential {
    endpoint: TokenEndpoint,
    certificate: ClientCertificate,
    context: SignInContext,
    cache: TokenCache,
}

impl fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificateCredential")
            .field("endpoint", &self.endpoint)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl ClientCertificateCredential {
    pub(crate) fn new(endpoint: TokenEndpoint, certificate: ClientCertificate) -> Self {
        let info = certificate.info();
        let context = SignInContext::Certificate {
            client_id: endpoint.client_id().to_owned(),
            file: info.file.display().to_string(),
            sha1: info.sha1_thumbprint.clone(),
            sha256: info.sha256_thumbprint.clone(),
            algorithm: certificate.algorithm.as_str(),
        };
        ClientCertificateCredential {
            endpoint,
            certificate,
            context,
            cache: TokenCache::new(),
        }
    }

    /// The certificate signing the assertions.
    pub fn certificate(&self) -> &ClientCertificate {
        &self.certificate
    }

    async fn fetch(&self) -> Result<Fetched, GraphError> {
        let assertion = self.certificate.assertion(
            self.endpoint.token_url().as_str(),
            self.endpoint.client_id(),
            SystemTime::now(),
        )?;
        self.endpoint
            .exchange(ClientAuth::Assertion(&assertion), &self.context)
            .await
    }
}

impl TokenSource for ClientCertificateCredential {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self.cache.get(self.fetch()))
    }

    fn invalidate(&self) {
        self.cache.invalidate();
    }
}
