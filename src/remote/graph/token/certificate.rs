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
    /// Where the file name came from, for messages.
    origin: String,
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
            origin: settings.origin.clone(),
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
        let now = SystemTime::now();
        let info = self.certificate.info();
        // A daemon outlives its certificate: say so rather than let Entra refuse it.
        if DateTime::<Utc>::from(now) > info.not_after {
            return Err(CredentialError::Certificate {
                file: info.file.display().to_string(),
                origin: self.certificate.origin.clone(),
                detail: format!(
                    "the certificate {} (thumbprint {}) expired on {}: create a new one, upload \
                     its .crt under Certificates & secrets, point the configuration at it and \
                     restart guestops",
                    info.subject,
                    info.sha1_thumbprint,
                    info.not_after.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            }
            .into());
        }
        let assertion = self.certificate.assertion(
            self.endpoint.token_url().as_str(),
            self.endpoint.client_id(),
            now,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Credential;
    use crate::remote::graph::error::TokenProblem;
    use crate::remote::graph::token::testing::{
        Answer, CLIENT_ID, Server, TOKEN_ANSWER, endpoint, fixture,
    };
    use rsa::signature::Verifier;

    // Fixture facts, from the openssl CLI:
    //   openssl x509 -in tests/fixtures/credentials/app.crt -noout -fingerprint -sha1
    //   openssl x509 -in tests/fixtures/credentials/app.crt -noout -fingerprint -sha256
    //   openssl x509 -in tests/fixtures/credentials/app.crt -noout -subject -startdate -enddate
    const APP_SHA1: &str = "1D986231B88BF78A4C36180C28CAFEE3A97AE269";
    const APP_SHA256: &str = "E045A68CA5B85FF90901968EDB50ABC6E30F87059B8BCF74976585FCD0ADB88B";
    const APP_NOT_AFTER: &str = "2126-11-07 12:45:10 UTC";
    const APP_NOT_BEFORE: &str = "2026-12-01 12:45:10 UTC";
    const OTHER_SHA1: &str = "21A616AF58BEB701F66869F9A9F8308BCEAEAF03";

    /// Between the fixtures' notBefore and notAfter.
    fn valid_now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000)
    }

    fn settings(file: PathBuf, password: Option<&str>) -> CertificateSettings {
        CertificateSettings {
            file,
            origin: "tenant.credential.certificateFile".into(),
            password: password.map(|p| {
                Credential::new(
                    SecretString::from(p.to_owned()),
                    "tenant.credential.certificatePassword",
                )
            }),
            send_chain: false,
            algorithm: AssertionAlgorithm::Ps256,
        }
    }

    fn load(settings: &CertificateSettings) -> Result<ClientCertificate, CredentialError> {
        ClientCertificate::load(settings, valid_now())
    }

    fn loaded(name: &str, password: Option<&str>) -> ClientCertificate {
        load(&settings(fixture(name), password)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn error(settings: &CertificateSettings, now: SystemTime) -> String {
        match ClientCertificate::load(settings, now) {
            Ok(c) => panic!("loaded {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn der(name: &str) -> Vec<u8> {
        let pem = std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{e}"));
        CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(|c| c.ok())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_else(|| panic!("no certificate in {name}"))
    }

    fn app_public_key() -> RsaPublicKey {
        let spki = spki_of(&der("app.crt")).unwrap_or_else(|| panic!("spki"));
        RsaPublicKey::from_public_key_der(&spki).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decode_part(part: &str) -> serde_json::Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_file_format_gives_the_fixture_facts() {
        for (name, password) in [
            ("app.pem", None),
            ("app-pkcs1.pem", None),
            ("app.p12", Some("fixture-password")),
            ("app-3des.p12", Some("fixture-password")),
        ] {
            let certificate = loaded(name, password);
            let info = certificate.info();
            assert_eq!(info.sha1_thumbprint, APP_SHA1, "{name}");
            assert_eq!(info.sha256_thumbprint, APP_SHA256, "{name}");
            assert_eq!(info.subject, "CN=guestops-fixture-app", "{name}");
            assert_eq!(
                info.not_after.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                APP_NOT_AFTER
            );
            assert_eq!(
                info.not_before.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                APP_NOT_BEFORE
            );
            let sha1 = hex::decode(APP_SHA1).unwrap_or_default();
            assert_eq!(info.x5t, URL_SAFE_NO_PAD.encode(sha1), "{name}");
            let sha256 = hex::decode(APP_SHA256).unwrap_or_default();
            assert_eq!(info.x5t_s256, URL_SAFE_NO_PAD.encode(sha256), "{name}");
        }
        let info = certificate_info(&settings(fixture("other.pem"), None))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(info.sha1_thumbprint, OTHER_SHA1);
    }

    #[test]
    fn a_ps256_assertion_has_the_documented_header_and_claims_and_verifies() {
        let certificate = loaded("app.pem", None);
        let audience = "https://login.microsoftonline.com/tenant/oauth2/v2.0/token";
        let now = valid_now();
        let jwt = certificate
            .assertion(audience, CLIENT_ID, now)
            .unwrap_or_else(|e| panic!("{e}"));
        let jwt = jwt.expose_secret();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode_part(parts[0]);
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], certificate.info().x5t_s256.as_str());
        assert!(header.get("x5t").is_none(), "{header}");
        assert!(header.get("x5c").is_none(), "{header}");
        let claims = decode_part(parts[1]);
        assert_eq!(claims["aud"], audience);
        assert_eq!(claims["iss"], CLIENT_ID);
        assert_eq!(claims["sub"], CLIENT_ID);
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        assert_eq!(claims["iat"], secs);
        assert_eq!(claims["nbf"], secs);
        let exp = claims["exp"].as_u64().unwrap_or_default();
        assert!(exp > secs && exp - secs <= 600, "{claims}");
        let jti = claims["jti"].as_str().unwrap_or_default();
        assert!(uuid::Uuid::parse_str(jti).is_ok(), "{claims}");
        let again = certificate
            .assertion(audience, CLIENT_ID, now)
            .unwrap_or_else(|e| panic!("{e}"));
        let again_claims = decode_part(again.expose_secret().split('.').nth(1).unwrap_or(""));
        assert_ne!(again_claims["jti"], claims["jti"], "a new jti each time");

        let signature = URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap_or_else(|e| panic!("{e}"));
        let signed = format!("{}.{}", parts[0], parts[1]);
        let key = rsa::pss::VerifyingKey::<rsa::sha2::Sha256>::new(app_public_key());
        let signature =
            rsa::pss::Signature::try_from(signature.as_slice()).unwrap_or_else(|e| panic!("{e}"));
        key.verify(signed.as_bytes(), &signature)
            .unwrap_or_else(|e| panic!("PS256 signature: {e}"));
        // The signature does not verify under another key.
        let other = spki_of(&der("other.crt"))
            .and_then(|spki| RsaPublicKey::from_public_key_der(&spki).ok())
            .unwrap_or_else(|| panic!("other key"));
        let other = rsa::pss::VerifyingKey::<rsa::sha2::Sha256>::new(other);
        assert!(other.verify(signed.as_bytes(), &signature).is_err());
    }

    #[test]
    fn an_rs256_assertion_carries_x5t_and_the_chain_and_verifies() {
        let mut settings = settings(fixture("app-pkcs1.pem"), None);
        settings.algorithm = AssertionAlgorithm::Rs256;
        settings.send_chain = true;
        let certificate = load(&settings).unwrap_or_else(|e| panic!("{e}"));
        let jwt = certificate
            .assertion("https://login/t/oauth2/v2.0/token", CLIENT_ID, valid_now())
            .unwrap_or_else(|e| panic!("{e}"));
        let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
        let header = decode_part(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["x5t"], certificate.info().x5t.as_str());
        assert!(header.get("x5t#S256").is_none(), "{header}");
        assert_eq!(
            header["x5c"],
            serde_json::json!([STANDARD.encode(der("app.crt"))])
        );
        let signature = URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap_or_else(|e| panic!("{e}"));
        let key = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(app_public_key());
        let signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap_or_else(|e| panic!("RS256 signature: {e}"));
    }

    #[test]
    fn the_leaf_is_the_certificate_of_the_key_whatever_the_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("chain.pem");
        let mut text = std::fs::read_to_string(fixture("other.crt")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(fixture("app.pem")).unwrap_or_default());
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        let mut settings = settings(file, None);
        settings.send_chain = true;
        let certificate = load(&settings).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(certificate.info().sha1_thumbprint, APP_SHA1);
        assert_eq!(certificate.info().chain_len, 2);
        let jwt = certificate
            .assertion("https://login/t/oauth2/v2.0/token", CLIENT_ID, valid_now())
            .unwrap_or_else(|e| panic!("{e}"));
        let header = decode_part(jwt.expose_secret().split('.').next().unwrap_or(""));
        assert_eq!(
            header["x5c"],
            serde_json::json!([
                STANDARD.encode(der("app.crt")),
                STANDARD.encode(der("other.crt"))
            ])
        );
    }

    #[test]
    fn unusable_files_are_refused_with_what_to_fix() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, parts: &[&str]| {
            let file = dir.path().join(name);
            let text: String = parts
                .iter()
                .map(|p| std::fs::read_to_string(fixture(p)).unwrap_or_default())
                .collect();
            std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
            file
        };
        let now = valid_now();
        let missing = error(&settings(dir.path().join("absent.pem"), None), now);
        assert!(missing.contains("cannot be read"), "{missing}");
        assert!(
            missing.contains("tenant.credential.certificateFile"),
            "{missing}"
        );

        let garbage = dir.path().join("garbage.bin");
        std::fs::write(&garbage, [0x42u8; 64]).unwrap_or_else(|e| panic!("{e}"));
        let garbage = error(&settings(garbage, None), now);
        assert!(
            garbage.contains("neither PEM") && garbage.contains("nor PKCS#12"),
            "{garbage}"
        );

        let no_key = error(&settings(fixture("app.crt"), None), now);
        assert!(no_key.contains("no private key"), "{no_key}");

        let mismatched = error(
            &settings(write("mixed.pem", &["app.crt", "other.key"]), None),
            now,
        );
        assert!(mismatched.contains("does not belong"), "{mismatched}");
        assert!(mismatched.contains(APP_SHA1), "{mismatched}");

        let wrong = error(&settings(fixture("app.p12"), Some("not-the-password")), now);
        assert!(
            wrong.contains("password") && wrong.contains("wrong"),
            "{wrong}"
        );
        assert!(
            wrong.contains("tenant.credential.certificatePassword"),
            "{wrong}"
        );
        let wrong = error(&settings(fixture("app-3des.p12"), Some("nope")), now);
        assert!(wrong.contains("wrong"), "{wrong}");
        let absent = error(&settings(fixture("app.p12"), None), now);
        assert!(
            absent.contains("set tenant.credential.certificatePassword"),
            "{absent}"
        );

        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(5_000_000_000);
        let expired = error(&settings(fixture("app.pem"), None), later);
        assert!(
            expired.contains("expired on 2126-11-07 12:45:10 UTC"),
            "{expired}"
        );
        let earlier = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let early = error(&settings(fixture("app.pem"), None), earlier);
        assert!(early.contains("not valid before 2026-12-01"), "{early}");
    }

    #[tokio::test]
    async fn the_token_request_carries_a_fresh_assertion_for_the_token_url() {
        let server = Server::start(|_, _| Answer::json(200, TOKEN_ANSWER)).await;
        let credential = ClientCertificateCredential::new(
            endpoint(&server.url),
            ClientCertificate::load(&settings(fixture("app.pem"), None), SystemTime::now())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let token = credential.token().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.expose_secret(), "graph-access-token");
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.path, "/tenant/oauth2/v2.0/token");
        assert_eq!(
            request.field("grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(request.field("client_id").as_deref(), Some(CLIENT_ID));
        assert_eq!(
            request.field("scope").as_deref(),
            Some("https://graph.microsoft.com/.default")
        );
        assert_eq!(
            request.field("client_assertion_type").as_deref(),
            Some(super::super::JWT_BEARER)
        );
        assert!(request.field("client_secret").is_none());
        let assertion = request.field("client_assertion").unwrap_or_default();
        let claims = decode_part(assertion.split('.').nth(1).unwrap_or(""));
        assert_eq!(
            claims["aud"],
            server.at("tenant/oauth2/v2.0/token").as_str()
        );
    }

    #[tokio::test]
    async fn an_unregistered_certificate_is_named_by_its_thumbprints() {
        let server = Server::start(|_, _| {
            Answer::json(
                401,
                r#"{"error":"invalid_client","error_description":"AADSTS700027: Client assertion failed signature validation.\r\nTrace ID: t","error_codes":[700027]}"#,
            )
        })
        .await;
        let credential = ClientCertificateCredential::new(
            endpoint(&server.url),
            ClientCertificate::load(&settings(fixture("app.pem"), None), SystemTime::now())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let err = match credential.token().await {
            Ok(_) => panic!("a token"),
            Err(e) => e,
        };
        assert_eq!(
            err.token_problem(),
            Some(TokenProblem::CertificateNotRegistered)
        );
        let message = err.to_string();
        for needle in [
            APP_SHA1,
            APP_SHA256,
            CLIENT_ID,
            "Certificates & secrets",
            "AADSTS700027",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        assert!(!message.contains("Trace ID: t\r"), "{message}");
    }
}
