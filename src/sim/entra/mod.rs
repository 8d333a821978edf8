//! The emulated Entra ID beyond client secrets: JWT access tokens carrying application
//! permissions ([`access_token`]), client assertions signed with a registered certificate and
//! federated tokens from an external issuer ([`assertion`]), a test OIDC issuer in the style of
//! GitHub Actions ([`oidc`]), and the managed-identity endpoints of Azure hosts ([`managed`]).
//!
//! Written from `docs/specs/microsoft-graph.md` §7, independently of the client
//! (`crate::remote`) and the configuration (`crate::config`): nothing is shared with them.
//! Where the real service's behaviour is unknown it is strict.

use std::time::Duration;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;

use rsa::sha2::{Digest as _, Sha256};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use sha1::Sha1;

use super::Sim;
use super::graph::SimCredentials;

pub mod assertion;
pub mod jwt;
pub mod managed;
pub mod oidc;

/// The audience recommended for federated identity credentials (§7).
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The client id of the system-assigned managed identity by default.
pub const SIM_MANAGED_CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000a1";

/// The App Service identity header (`IDENTITY_HEADER`) by default.
pub const SIM_IDENTITY_HEADER: &str = "sim-identity-header";

/// A certificate registered on the application (its public half only).
#[derive(Clone, PartialEq, Eq)]
pub struct SimCertificate {
    der: Vec<u8>,
}

impl SimCertificate {
    /// A certificate from its DER; `Err` if it is not an X.509 certificate with an RSA key.
    pub fn from_der(der: Vec<u8>) -> Result<Self, String> {
        match jwt::certificate_public_key(&der) {
            Some(_) => Ok(Self { der }),
            None => Err("not an X.509 certificate with an RSA public key".into()),
        }
    }

    /// The first `CERTIFICATE` block of PEM text (other blocks, e.g. a key, are skipped).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|err| format!("no PEM certificate: {err}"))?;
        Self::from_der(der.to_vec())
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// `x5t`: base64url of the SHA-1 of the DER.
    pub fn x5t(&self) -> String {
        jwt::b64(&Sha1::digest(&self.der))
    }

    /// `x5t#S256`: base64url of the SHA-256 of the DER.
    pub fn x5t_s256(&self) -> String {
        jwt::b64(&Sha256::digest(&self.der))
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Entra portal shows it.
    pub fn thumbprint(&self) -> String {
        hex::encode_upper(Sha1::digest(&self.der))
    }

    /// The public key (checked to exist when constructed).
    pub fn public_key(&self) -> Option<rsa::PublicKey> {
        jwt::certificate_public_key(&self.der)
    }
}

impl std::fmt::Debug for SimCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCertificate")
            .field("thumbprint", &self.thumbprint())
            .field("x5t#S256", &self.x5t_s256())
            .finish()
    }
}

/// A federated identity credential on the application (§7): a token from `issuer` with
/// exactly this `subject` and one of `audiences` signs the application in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFederatedCredential {
    /// The credential's name (for messages).
    pub name: String,
    /// The external issuer URL, compared exactly with the token's `iss`.
    pub issuer: String,
    /// Compared exactly (case-sensitively) with the token's `sub`.
    pub subject: String,
    /// One of them must be in the token's `aud`.
    pub audiences: Vec<String>,
}

impl SimFederatedCredential {
    /// A credential with the recommended audience [`TOKEN_EXCHANGE_AUDIENCE`].
    pub fn new(name: &str, issuer: &str, subject: &str) -> Self {
        Self {
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_owned()],
        }
    }
}

/// The managed identities of the emulated Azure host ([`managed`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SimManagedIdentity {
    /// The client id of the system-assigned identity (used when no `client_id` is asked).
    pub system_client_id: String,
    /// Client ids of the user-assigned identities attached to the host.
    pub user_assigned: Vec<String>,
    /// The App Service secret the client must send as `X-IDENTITY-HEADER`.
    pub identity_header: String,
    /// The Graph application permissions granted to the identities.
    pub roles: Vec<String>,
}

impl Default for SimManagedIdentity {
    fn default() -> Self {
        Self {
            system_client_id: SIM_MANAGED_CLIENT_ID.into(),
            user_assigned: Vec::new(),
            identity_header: SIM_IDENTITY_HEADER.into(),
            roles: super::graph::DEFAULT_PERMISSIONS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
        }
    }
}

impl std::fmt::Debug for SimManagedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimManagedIdentity")
            .field("system_client_id", &self.system_client_id)
            .field("user_assigned", &self.user_assigned)
            .field("identity_header", &"[redacted]")
            .field("roles", &self.roles)
            .finish()
    }
}

/// State of the identity endpoints that is not the tenant's: the test OIDC issuers and the
/// managed-identity host.
#[derive(Debug, Default)]
pub struct IdentityState {
    /// Test OIDC issuers by name (served under `/oidc/{name}`).
    pub issuers: BTreeMap<String, oidc::SimIssuer>,
    /// Azure Arc style: where the host writes the challenge secret files. `None`: the
    /// IMDS path behaves as IMDS for every `api-version`.
    pub arc_key_dir: Option<PathBuf>,
    /// Statuses the next managed-identity token requests answer, in order.
    managed_failures: VecDeque<u16>,
    /// Arc challenge secrets handed out and not yet used.
    arc_secrets: HashSet<String>,
}

impl IdentityState {
    /// The next `times` managed-identity token requests answer `status` (e.g. 500, 503, or
    /// 410 for "IMDS is updating").
    pub fn fail_managed_identity(&mut self, status: u16, times: u32) {
        self.managed_failures
            .extend(std::iter::repeat_n(status, times as usize));
    }

    /// Adds (or replaces) a test OIDC issuer.
    pub fn add_issuer(&mut self, name: &str, issuer: oidc::SimIssuer) {
        self.issuers.insert(name.to_owned(), issuer);
    }
}

/// Routes of the identity endpoints that are not the tenant's token endpoint: the test OIDC
/// issuers (`/oidc/...`) and the managed-identity endpoints (`/msi/token`,
/// `/metadata/identity/oauth2/token`).
pub fn routes() -> axum::Router<Sim> {
    axum::Router::new()
        .merge(oidc::routes())
        .merge(managed::routes())
}

/// Whether `path` is one of [`routes`] (counted as identity requests, not Graph requests).
pub fn is_identity_path(path: &str) -> bool {
    ["/oidc/", "/msi/", "/metadata/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// The object id Entra would give the service principal of `client_id` (stable, derived).
fn object_id(client_id: &str) -> String {
    let hash = Sha256::digest(format!("sim-service-principal:{client_id}").as_bytes());
    uuid::Builder::from_random_bytes(hash[..16].try_into().expect("16 bytes"))
        .into_uuid()
        .to_string()
}

/// An access token for Graph in the simulated cloud, as Entra issues app-only tokens (v1
/// shape): RS256 with [`jwt::token_signer`], `aud` the Graph resource, `iss`
/// `https://sts.windows.net/{tenant_id}/`, `tid`, `appid` and `azp` (`client_id`), `oid` (its
/// service principal), `idtyp` `app`, `iat`/`nbf`/`exp`, `uti` (unique) and `roles`.
pub fn access_token(
    creds: &SimCredentials,
    client_id: &str,
    roles: &[String],
    lifetime: Duration,
) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "aud": creds.cloud.graph_resource(),
        "iss": format!("https://sts.windows.net/{}/", creds.tenant_id),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime.as_secs() as i64,
        "appid": client_id,
        "azp": client_id,
        "appidacr": "1",
        "idp": format!("https://sts.windows.net/{}/", creds.tenant_id),
        "idtyp": "app",
        "oid": object_id(client_id),
        "sub": object_id(client_id),
        "tid": creds.tenant_id,
        "roles": roles,
        "uti": uuid::Uuid::new_v4().simple().to_string(),
        "ver": "1.0",
    });
    jwt::token_signer().sign(&claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_carry_the_tenant_the_client_and_the_roles() {
        let creds = SimCredentials::default();
        let roles = vec!["User.Read.All".to_owned()];
        let token = access_token(&creds, "app-1", &roles, Duration::from_secs(600));
        let jwt = jwt::Jwt::parse(&token).expect("a JWT");
        assert!(jwt.verifies("RS256", &jwt::token_signer().public_key()));
        assert_eq!(jwt.claim_str("aud"), Some("https://graph.microsoft.com"));
        assert_eq!(
            jwt.claim_str("iss").map(str::to_owned),
            Some(format!("https://sts.windows.net/{}/", creds.tenant_id))
        );
        assert_eq!(jwt.claim_str("appid"), Some("app-1"));
        assert_eq!(jwt.claim_str("idtyp"), Some("app"));
        assert_eq!(jwt.claims["roles"], json!(["User.Read.All"]));
        let (iat, exp) = (jwt.claim_time("iat"), jwt.claim_time("exp"));
        assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(600));
        assert_ne!(
            token,
            access_token(&creds, "app-1", &roles, Duration::from_secs(600))
        );
        assert_ne!(object_id("app-1"), object_id("app-2"));
    }

    #[test]
    fn a_certificate_shows_its_thumbprints_and_not_its_bytes() {
        let pem = include_str!("../../../tests/fixtures/credentials/app.pem");
        let cert = SimCertificate::from_pem(pem).expect("the fixture has a certificate");
        let other = SimCertificate::from_pem(include_str!(
            "../../../tests/fixtures/credentials/other.crt"
        ))
        .expect("a certificate");
        assert_ne!(cert.x5t_s256(), other.x5t_s256());
        assert_eq!(jwt::unb64(&cert.x5t()).map(|b| b.len()), Some(20));
        let debug = format!("{cert:?}");
        assert!(debug.contains(&cert.thumbprint()), "{debug}");
        assert!(debug.len() < 200, "{debug}");
        assert!(SimCertificate::from_pem("no pem here").is_err());
    }
}
