//! OpenPGP signatures of commits against `source.verify.keyringFile`, through rPGP (`pgp`, pure
//! Rust). Compiled with the cargo feature `openpgp` (on by default).
//!
//! A key of the keyring signs when its primary key or one of its subkeys is the signature's
//! issuer (issuer fingerprint, else the 8-byte key id), its self-signatures verify, it is not
//! revoked and not expired now. Web-of-trust, certifications by other keys and signature
//! notations are not looked at: being in the keyring is the trust.

use std::io::BufReader;
use std::path::Path;

use chrono::{DateTime, Utc};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

use super::verify::{Refusal, Signer, TrustFileError, Verdict};

/// Checks the armored detached `signature` of `payload` at `now` against the keys of
/// `keyring` (none configured: a refusal naming the signer).
///
/// # Errors
/// A keyring that cannot be read or holds no key.
pub(super) fn check(
    keyring: Option<&Path>,
    signature: &[u8],
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<Verdict, TrustFileError> {
    let sig = match DetachedSignature::from_armor_single(signature) {
        Ok((sig, _)) => sig,
        Err(err) => {
            return Ok(Verdict::Refused(Refusal::Malformed {
                kind: "openpgp",
                reason: err.to_string(),
            }));
        }
    };
    let fingerprints: Vec<String> = sig
        .signature
        .issuer_fingerprint()
        .iter()
        .map(|fp| format!("{fp:X}"))
        .collect();
    let key_ids: Vec<String> = sig
        .signature
        .issuer_key_id()
        .iter()
        .map(|id| hex::encode_upper(id.as_ref()))
        .collect();
    let unknown = Signer {
        kind: "openpgp",
        fingerprint: fingerprints
            .first()
            .cloned()
            .or_else(|| key_ids.first().map(|id| format!("key id {id}")))
            .unwrap_or_else(|| "(no issuer)".to_owned()),
        principal: None,
    };
    let Some(path) = keyring else {
        return Ok(Verdict::Refused(Refusal::NoTrustFile {
            kind: "openpgp",
            key: "keyringFile",
            signer: unknown,
        }));
    };
    let keys = read_keyring(path)?;
    let issued = |fingerprint: String, key_id: String| {
        fingerprints.contains(&fingerprint) || key_ids.contains(&key_id)
    };
    for key in &keys {
        let principal = key
            .details
            .users
            .first()
            .map(|u| String::from_utf8_lossy(u.id.id()).into_owned());
        let primary = &key.primary_key;
        let named = |fingerprint: String| Signer {
            kind: "openpgp",
            fingerprint,
            principal: principal.clone(),
        };
        if issued(
            format!("{:X}", primary.fingerprint()),
            hex::encode_upper(primary.legacy_key_id().as_ref()),
        ) {
            let signer = named(format!("{:X}", primary.fingerprint()));
            if let Some(reason) = unusable(key, None, now) {
                return Ok(Verdict::Refused(Refusal::KeyNotUsable { signer, reason }));
            }
            return Ok(match sig.verify(primary, payload) {
                Ok(()) => Verdict::Verified(signer),
                Err(_) => Verdict::Refused(Refusal::BadSignature { signer }),
            });
        }
        for subkey in &key.public_subkeys {
            if issued(
                format!("{:X}", subkey.key.fingerprint()),
                hex::encode_upper(subkey.key.legacy_key_id().as_ref()),
            ) {
                // The primary key is who signs; the subkey is how.
                let signer = named(format!("{:X}", primary.fingerprint()));
                if let Some(reason) = unusable(key, Some(subkey), now) {
                    return Ok(Verdict::Refused(Refusal::KeyNotUsable { signer, reason }));
                }
                return Ok(match sig.verify(&subkey.key, payload) {
                    Ok(()) => Verdict::Verified(signer),
                    Err(_) => Verdict::Refused(Refusal::BadSignature { signer }),
                });
            }
        }
    }
    Ok(Verdict::Refused(Refusal::UnknownKey {
        signer: unknown,
        file: path.to_owned(),
    }))
}

/// The public keys of `path`, armored or binary; keys that do not parse are skipped, none at
/// all is an error.
fn read_keyring(path: &Path) -> Result<Vec<SignedPublicKey>, TrustFileError> {
    let file = std::fs::File::open(path).map_err(|source| TrustFileError::Read {
        key: "keyringFile",
        path: path.to_owned(),
        source,
    })?;
    let bad = |message: String| TrustFileError::Keyring {
        path: path.to_owned(),
        message,
    };
    let (keys, _) = SignedPublicKey::from_reader_many(BufReader::new(file))
        .map_err(|e| bad(format!("not OpenPGP data ({e})")))?;
    let mut out = Vec::new();
    for key in keys {
        match key {
            Ok(key) => out.push(key),
            Err(err) => {
                tracing::warn!(keyring = %path.display(), error = %err, "skipping a key that does not parse")
            }
        }
    }
    if out.is_empty() {
        return Err(bad("no public key in it".to_owned()));
    }
    Ok(out)
}

/// Why `key` (or its `subkey`) cannot sign now, if it cannot.
fn unusable(
    key: &SignedPublicKey,
    subkey: Option<&pgp::composed::SignedPublicSubKey>,
    now: DateTime<Utc>,
) -> Option<String> {
    if key.verify_bindings().is_err() {
        return Some("its self-signatures do not verify".to_owned());
    }
    if !key.details.revocation_signatures.is_empty() {
        return Some("the key is revoked".to_owned());
    }
    let now = u64::try_from(now.timestamp()).unwrap_or(0);
    // The newest self-signature says when the primary key expires.
    let primary_expiry = key
        .details
        .users
        .iter()
        .flat_map(|u| u.signatures.iter())
        .max_by_key(|s| s.created().map(|t| t.as_secs()))
        .and_then(|s| s.key_expiration_time())
        .filter(|d| d.as_secs() > 0)
        .map(|d| u64::from(key.primary_key.created_at().as_secs()) + u64::from(d.as_secs()));
    if primary_expiry.is_some_and(|at| at <= now) {
        return Some("the key has expired".to_owned());
    }
    if let Some(subkey) = subkey {
        let expiry = subkey
            .signatures
            .iter()
            .max_by_key(|s| s.created().map(|t| t.as_secs()))
            .and_then(|s| s.key_expiration_time())
            .filter(|d| d.as_secs() > 0)
            .map(|d| u64::from(subkey.key.created_at().as_secs()) + u64::from(d.as_secs()));
        if expiry.is_some_and(|at| at <= now) {
            return Some("the signing subkey has expired".to_owned());
        }
    }
    None
}
