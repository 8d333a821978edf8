//! `POST /hooks/github`: GitHub push events that mean "reconcile now".
//!
//! The signature (`X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body with the
//! webhook secret) is verified in constant time before anything of the request is parsed.

use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

/// The header carrying the body's HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// The header naming the event (`push`, `ping`, …).
pub const EVENT_HEADER: &str = "x-github-event";
/// The header carrying the delivery id (logged, for correlating with GitHub's delivery list).
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// Why a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request has no `X-Hub-Signature-256` header.
    #[error(
        "missing X-Hub-Signature-256 header: set the same secret in the GitHub webhook settings and in guestops (webhook-secret)"
    )]
    Missing,
    /// The header is not `sha256=` followed by 64 hex digits.
    #[error("malformed X-Hub-Signature-256 header: expected sha256=<64 hex digits>")]
    Malformed,
    /// The signature does not match the body.
    #[error(
        "X-Hub-Signature-256 does not match the body: the GitHub webhook secret differs from guestops' webhook-secret"
    )]
    Mismatch,
}

/// Verifies `header` (the value of `X-Hub-Signature-256`, if any) against `body` in constant
/// time.
pub fn verify_signature(
    secret: &SecretString,
    body: &[u8],
    header: Option<&[u8]>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex_digest.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// `sha256=<hex>` for `body` under `secret`: what GitHub sends (for tests and tools).
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The fields of a push event guestops reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PushEvent {
    /// `refs/heads/<branch>` (or `refs/tags/...`).
    #[serde(rename = "ref")]
    pub(crate) git_ref: String,
    /// The commit the ref points at after the push.
    #[serde(default)]
    pub(crate) after: Option<String>,
}

/// Why a verified body could not be read as a push event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PayloadError {
    /// Form-encoded delivery without a `payload` field.
    #[error(
        "form-encoded webhook delivery without a payload field; set the webhook content type to application/json"
    )]
    NoFormPayload,
    /// Not the JSON of a push event.
    #[error("the push event is not valid JSON with a string \"ref\": {0}")]
    Json(#[from] serde_json::Error),
}

/// Parses a push event from a verified body, JSON or (GitHub's other content type)
/// `application/x-www-form-urlencoded` with a `payload` field.
pub(crate) fn parse_push(body: &[u8], form_encoded: bool) -> Result<PushEvent, PayloadError> {
    if form_encoded {
        let payload = url::form_urlencoded::parse(body)
            .find(|(key, _)| key == "payload")
            .map(|(_, value)| value.into_owned())
            .ok_or(PayloadError::NoFormPayload)?;
        Ok(serde_json::from_str(&payload)?)
    } else {
        Ok(serde_json::from_slice(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_example_verifies() {
        // docs.github.com "Validating webhook deliveries" test values.
        let secret = SecretString::from("It's a Secret to Everybody");
        let header = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify_signature(&secret, b"Hello, World!", Some(header)),
            Ok(())
        );
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!").as_bytes(),
            header
        );
    }

    #[test]
    fn refusals_are_told_apart() {
        let secret = SecretString::from("s");
        let good = sign("s", b"body");
        assert_eq!(
            verify_signature(&secret, b"body", None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(&secret, b"body", Some(b"sha1=abc")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(&secret, b"body", Some(&good.as_bytes()[..70])),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(&secret, b"body!", Some(good.as_bytes())),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&SecretString::from("t"), b"body", Some(good.as_bytes())),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn form_encoded_payload_is_read() {
        let body = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D";
        let push = parse_push(body, true).expect("form payload parses");
        assert_eq!(push.git_ref, "refs/heads/main");
        assert!(parse_push(b"other=1", true).is_err());
    }
}
