//! JWTs as the emulated Entra and the test OIDC issuer read and write them: three base64url
//! segments, signed RS256 (RSASSA-PKCS1-v1_5 with SHA-256) or PS256 (RSASSA-PSS with SHA-256,
//! salt as long as the hash).
//!
//! Written with `rsa` directly, not a JWT library: the client signs its assertions with
//! `jsonwebtoken`, and a library shared by both sides would hide a mistake they share.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::sha2::{Digest as _, Sha256};
use rsa::signature::{Keypair as _, SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::traits::PublicKeyParts as _;
use rsa::{BoxedUint, PrivateKey, PublicKey};
use serde_json::{Map, Value, json};

/// The PKCS#8 key the emulated Entra signs access tokens with.
const TOKEN_SIGNING_KEY: &str = include_str!("../keys/entra-token-signing.key");
/// The PKCS#8 key of the test OIDC issuer ([`super::oidc`]).
const ISSUER_KEY: &str = include_str!("../keys/oidc-issuer.key");

/// base64url without padding, as JWTs and JWKs use it.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` if it is not that.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// A JWT split and decoded, its signature not yet checked.
#[derive(Debug, Clone)]
pub struct Jwt {
    /// The JOSE header.
    pub header: Map<String, Value>,
    /// The claims.
    pub claims: Map<String, Value>,
    /// `header.payload` as sent: what the signature covers.
    pub signing_input: String,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

impl Jwt {
    /// Splits and decodes `token`; `None` unless it is three base64url segments of which the
    /// first two are JSON objects.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let object = |segment: &str| match serde_json::from_slice(&unb64(segment)?) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        };
        Some(Self {
            header: object(header)?,
            claims: object(claims)?,
            signing_input: format!("{header}.{claims}"),
            signature: unb64(signature)?,
        })
    }

    /// A string header parameter.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    /// A string claim.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A numeric date claim (seconds since the epoch).
    pub fn claim_time(&self, name: &str) -> Option<i64> {
        let value = self.claims.get(name)?;
        value
            .as_i64()
            .or_else(|| value.as_f64().map(|f| f.floor() as i64))
    }

    /// `aud` as a list (a JWT may send one string or an array).
    pub fn audiences(&self) -> Vec<String> {
        match self.claims.get("aud") {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the signature is valid for `alg` (`RS256` or `PS256`) under `key`. Other
    /// algorithms never verify.
    pub fn verifies(&self, alg: &str, key: &PublicKey) -> bool {
        let input = self.signing_input.as_bytes();
        match alg {
            "RS256" => {
                let Ok(signature) = rsa::pkcs1v15::Signature::try_from(self.signature.as_slice())
                else {
                    return false;
                };
                rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
                    .verify(input, &signature)
                    .is_ok()
            }
            "PS256" => {
                let Ok(signature) = rsa::pss::Signature::try_from(self.signature.as_slice()) else {
                    return false;
                };
                rsa::pss::VerifyingKey::<Sha256>::new(key.clone())
                    .verify(input, &signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// An RS256 signing key with its key id, for access tokens and the test issuer's tokens.
pub struct Signer {
    key: rsa::pkcs1v15::SigningKey<Sha256>,
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// A signer for a PKCS#8 PEM private key; the key id is the base64url of the first 16
    /// bytes of the SHA-256 of the modulus (stable for a key, distinct between keys).
    ///
    /// # Panics
    /// If `pem` is not a PKCS#8 RSA key (only the committed keys are passed).
    fn from_pem(pem: &str) -> Self {
        let key = PrivateKey::from_pkcs8_pem(pem).expect("the committed key is PKCS#8 RSA");
        let key = rsa::pkcs1v15::SigningKey::<Sha256>::new(key);
        let modulus = key.verifying_key().as_ref().n().to_be_bytes();
        let kid = b64(&Sha256::digest(&modulus)[..16]);
        Self { key, kid }
    }

    /// The key id (`kid`) put in the header of what it signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.verifying_key().as_ref().clone()
    }

    /// The public key as a JWK (`kty`, `use`, `alg`, `kid`, `n`, `e`).
    pub fn jwk(&self) -> Value {
        let public = self.public_key();
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": b64(&public.n().to_be_bytes_trimmed_vartime()),
            "e": b64(&public.e().to_be_bytes_trimmed_vartime()),
        })
    }

    /// `claims` signed RS256, with `typ`, `alg` and `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(&signature.to_bytes()))
    }
}

/// The emulated Entra's access-token signer (`src/sim/keys/entra-token-signing.key`).
pub fn token_signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::from_pem(TOKEN_SIGNING_KEY))
}

/// The test OIDC issuer's signer (`src/sim/keys/oidc-issuer.key`).
pub fn issuer_signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::from_pem(ISSUER_KEY))
}

/// The RSA public key of a DER certificate; `None` if it is not a certificate with an RSA key.
pub fn certificate_public_key(der: &[u8]) -> Option<PublicKey> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    PublicKey::from_public_key_der(certificate.public_key().raw).ok()
}

/// The RSA public key of a JWK (`kty` `RSA`, `n`, `e`); `None` otherwise.
pub fn jwk_public_key(jwk: &Value) -> Option<PublicKey> {
    if jwk.get("kty").and_then(Value::as_str) != Some("RSA") {
        return None;
    }
    let n = unb64(jwk.get("n")?.as_str()?)?;
    let e = unb64(jwk.get("e")?.as_str()?)?;
    PublicKey::new(
        BoxedUint::from_be_slice_vartime(&n),
        BoxedUint::from_be_slice_vartime(&e),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_signer_signs_verifies_with_its_jwk_and_not_with_another_key() {
        let token = token_signer().sign(&json!({"sub": "x"}));
        let jwt = Jwt::parse(&token).expect("three segments");
        assert_eq!(jwt.header_str("kid"), Some(token_signer().kid()));
        assert_eq!(jwt.claim_str("sub"), Some("x"));
        let from_jwk = jwk_public_key(&token_signer().jwk()).expect("an RSA JWK");
        assert!(jwt.verifies("RS256", &from_jwk));
        assert!(!jwt.verifies("PS256", &from_jwk));
        assert!(!jwt.verifies("HS256", &from_jwk));
        assert!(!jwt.verifies("RS256", &issuer_signer().public_key()));
        assert_ne!(token_signer().kid(), issuer_signer().kid());
    }

    #[test]
    fn a_changed_payload_does_not_verify() {
        let token = issuer_signer().sign(&json!({"sub": "a"}));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(br#"{"sub":"b"}"#);
        parts[1] = &forged;
        let jwt = Jwt::parse(&parts.join(".")).expect("parses");
        assert!(!jwt.verifies("RS256", &issuer_signer().public_key()));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for token in [
            "",
            "a.b",
            "a.b.c.d",
            "e30.e30.!!",
            "W10.e30.",
            "e30.bm90IGpzb24.AA",
        ] {
            assert!(Jwt::parse(token).is_none(), "{token}");
        }
        assert!(Jwt::parse("e30.e30.").is_some());
    }

    #[test]
    fn the_fixture_certificate_yields_its_key() {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let pem = include_str!("../../../tests/fixtures/credentials/app.crt");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
        let key = certificate_public_key(&der).expect("an RSA certificate");
        let private =
            PrivateKey::from_pkcs8_pem(include_str!("../../../tests/fixtures/credentials/app.key"))
                .expect("PKCS#8");
        assert_eq!(&key, private.as_ref());
        assert!(certificate_public_key(b"not a certificate").is_none());
    }
}
