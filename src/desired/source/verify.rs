//! Signature checks of commits (`source.verify`, design §12).
//!
//! Owns the decision "may guestops apply this commit": with `mode: head` the commit about to be
//! applied (the tip of the followed branch) must carry a valid signature by a trusted key:
//! - **SSH** (`gpg.format=ssh`: an `-----BEGIN SSH SIGNATURE-----` block, the SSHSIG format of
//!   OpenSSH's `PROTOCOL.sshsig`, namespace `git`) against `source.verify.allowedSignersFile`, a
//!   file in git's and `ssh-keygen -Y verify`'s `allowed_signers` format ([`AllowedSigners`]);
//! - **OpenPGP** (`-----BEGIN PGP SIGNATURE-----`) against `source.verify.keyringFile`, armored
//!   or binary public keys (`openpgp.rs`, cargo feature `openpgp`, on by default).
//!
//! The signed payload is the commit object without its `gpgsig` header, as libgit2's
//! `extract_signature` returns it. Everything runs in Rust (RustCrypto's `ssh-key`, rPGP's
//! `pgp`): no `git`, `gpg` or `ssh-keygen` is run. The trust files are read at every check, so
//! an edit takes effect at the next poll without a restart.
//!
//! It must not decide what a refusal leads to: the caller keeps the last verified revision
//! (daemon) or exits 1 (`plan`, `apply`).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use git2::{Oid, Repository};
use ssh_key::{HashAlg, PublicKey, SshSig};

/// The SSHSIG namespace git signs commits and tags in.
pub const GIT_NAMESPACE: &str = "git";

/// What `source.verify` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyPolicy {
    /// Which commits must be signed.
    pub mode: VerifyMode,
    /// `allowed_signers` file for SSH signatures.
    pub allowed_signers_file: Option<PathBuf>,
    /// Public keys (armored or binary) for OpenPGP signatures.
    pub keyring_file: Option<PathBuf>,
}

/// `source.verify.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// No signature check (the default).
    #[default]
    None,
    /// The commit about to be applied must be signed by a trusted key.
    Head,
}

impl VerifyMode {
    /// The configuration word: `none` or `head`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::None => "none",
            VerifyMode::Head => "head",
        }
    }
}

/// Who signed a commit, as far as the trust files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// `ssh` or `openpgp`.
    pub kind: &'static str,
    /// The key's fingerprint: `SHA256:…` (as `ssh-keygen -l` shows it) or the OpenPGP
    /// fingerprint in upper-case hex.
    pub fingerprint: String,
    /// The principals of the matching `allowed_signers` line, or the OpenPGP key's first user
    /// id; `None` for a key no trust file knows.
    pub principal: Option<String>,
}

impl std::fmt::Display for Signer {
    /// `ssh key SHA256:… (ana@partner.example)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key {}", self.kind, self.fingerprint)?;
        if let Some(principal) = &self.principal {
            write!(f, " ({principal})")?;
        }
        Ok(())
    }
}

/// Why a commit is not applied. Each message names the signer when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The commit has no `gpgsig` header.
    #[error("it is not signed")]
    Unsigned,
    /// The signature block is neither SSH nor OpenPGP (e.g. an X.509 signature of `gpgsm`).
    #[error("its signature is of a kind guestops cannot check ({kind}): sign with SSH or OpenPGP")]
    UnsupportedKind {
        /// The first line of the signature block.
        kind: String,
    },
    /// The signature block cannot be decoded.
    #[error("its {kind} signature cannot be decoded: {reason}")]
    Malformed {
        /// `ssh` or `openpgp`.
        kind: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// An SSH signature made with a certificate (`cert-authority` trust is not supported).
    #[error(
        "it is signed with an SSH certificate ({signer}); guestops trusts plain keys only \
         (cert-authority lines are not supported): list the key itself in allowedSignersFile"
    )]
    Certificate {
        /// The certificate's signing key.
        signer: Signer,
    },
    /// The kind of signature has no trust file configured.
    #[error(
        "it has an {kind} signature ({signer}) but source.verify.{key} is not set, so no such \
         key is trusted"
    )]
    NoTrustFile {
        /// `ssh` or `openpgp`.
        kind: &'static str,
        /// The configuration key that would list the key.
        key: &'static str,
        /// The signer.
        signer: Signer,
    },
    /// The key is in no trust file.
    #[error("it is signed by an unknown {signer}: no entry of {} lists it", file.display())]
    UnknownKey {
        /// The signer (no principal).
        signer: Signer,
        /// The trust file searched.
        file: PathBuf,
    },
    /// The signature does not match the commit (a tampered commit or a corrupt signature).
    #[error("its signature by {signer} does not match the commit (tampered or corrupt)")]
    BadSignature {
        /// The signer.
        signer: Signer,
    },
    /// The SSH signature was made for another namespace than `git`.
    #[error("its signature by {signer} is for the namespace `{namespace}`, not `git`")]
    WrongNamespace {
        /// The signer.
        signer: Signer,
        /// The namespace signed for.
        namespace: String,
    },
    /// The key's `allowed_signers` entry excludes the `git` namespace.
    #[error(
        "{signer} may not sign git commits: its allowed_signers entry allows the namespaces \
         `{namespaces}` only"
    )]
    NamespaceNotAllowed {
        /// The signer.
        signer: Signer,
        /// The `namespaces=` option of the entry.
        namespaces: String,
    },
    /// The key's entry is not valid now (`valid-after` in the future or `valid-before` past).
    #[error("{signer} is not trusted now: its allowed_signers entry is valid {window}")]
    OutsideValidity {
        /// The signer.
        signer: Signer,
        /// `after 2026-01-01T00:00:00Z`, `before …`.
        window: String,
    },
    /// An OpenPGP key that is expired or revoked, or whose signature predates it.
    #[error("{signer} cannot sign now: {reason}")]
    KeyNotUsable {
        /// The signer.
        signer: Signer,
        /// What is wrong with the key.
        reason: String,
    },
}

impl Refusal {
    /// The signer named in the refusal, when there is one.
    pub fn signer(&self) -> Option<&Signer> {
        match self {
            Refusal::Unsigned | Refusal::UnsupportedKind { .. } | Refusal::Malformed { .. } => None,
            Refusal::Certificate { signer }
            | Refusal::NoTrustFile { signer, .. }
            | Refusal::UnknownKey { signer, .. }
            | Refusal::BadSignature { signer }
            | Refusal::WrongNamespace { signer, .. }
            | Refusal::NamespaceNotAllowed { signer, .. }
            | Refusal::OutsideValidity { signer, .. }
            | Refusal::KeyNotUsable { signer, .. } => Some(signer),
        }
    }
}

/// A trust file that cannot be used: a configuration problem, not a refused commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustFileError {
    /// The file cannot be read.
    #[error("cannot read {}: check source.verify.{key}", path.display())]
    Read {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the `allowed_signers` file cannot be parsed.
    #[error(
        "{}:{line}: {message}: fix source.verify.allowedSignersFile (lines are \
         `principals [options] keytype base64-key`, see ssh-keygen(1) ALLOWED SIGNERS)",
        path.display()
    )]
    AllowedSigners {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The keyring holds no usable OpenPGP public key.
    #[error("{}: {message}: check source.verify.keyringFile (armored or binary OpenPGP public keys)", path.display())]
    Keyring {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `mode: head` with no trust file at all.
    #[error(
        "source.verify.mode is head but neither source.verify.allowedSignersFile nor \
         source.verify.keyringFile is set"
    )]
    NoTrustFile,
}

/// The outcome of checking one commit.
#[derive(Debug)]
pub enum Verdict {
    /// Signed by a trusted key.
    Verified(Signer),
    /// Not to be applied.
    Refused(Refusal),
}

impl VerifyPolicy {
    /// Whether any check is asked for.
    pub fn is_on(&self) -> bool {
        self.mode == VerifyMode::Head
    }

    /// Checks the commit `oid` of `repo` at `now` (blocking: it reads the trust files).
    ///
    /// # Errors
    /// A trust file that cannot be read or parsed, or a commit libgit2 cannot read; a commit
    /// that is unsigned or badly signed is `Ok(Verdict::Refused)`.
    pub fn check_commit(
        &self,
        repo: &Repository,
        oid: Oid,
        now: DateTime<Utc>,
    ) -> Result<Verdict, CheckError> {
        let (signature, payload) = match repo.extract_signature(&oid, None) {
            Ok((signature, payload)) => (signature.to_vec(), payload.to_vec()),
            Err(err) if err.code() == git2::ErrorCode::NotFound => {
                return Ok(Verdict::Refused(Refusal::Unsigned));
            }
            Err(err) => return Err(CheckError::Git(err)),
        };
        self.check(&signature, &payload, now)
            .map_err(CheckError::TrustFile)
    }

    /// Checks a detached `signature` (the `gpgsig` header's value) of `payload` at `now`.
    ///
    /// # Errors
    /// A trust file that cannot be read or parsed.
    pub fn check(
        &self,
        signature: &[u8],
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verdict, TrustFileError> {
        if self.allowed_signers_file.is_none() && self.keyring_file.is_none() {
            return Err(TrustFileError::NoTrustFile);
        }
        let text = String::from_utf8_lossy(signature);
        let first = text.trim_start().lines().next().unwrap_or("").trim();
        match first {
            "-----BEGIN SSH SIGNATURE-----" => self.check_ssh(&text, payload, now),
            "-----BEGIN PGP SIGNATURE-----" => self.check_openpgp(signature, payload, now),
            other => Ok(Verdict::Refused(Refusal::UnsupportedKind {
                kind: other.chars().take(60).collect(),
            })),
        }
    }

    fn check_ssh(
        &self,
        text: &str,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verdict, TrustFileError> {
        let sig = match SshSig::from_pem(text.trim()) {
            Ok(sig) => sig,
            Err(err) => {
                return Ok(Verdict::Refused(Refusal::Malformed {
                    kind: "ssh",
                    reason: err.to_string(),
                }));
            }
        };
        let key_data = sig.public_key().clone();
        let unknown = Signer {
            kind: "ssh",
            fingerprint: key_data.fingerprint(HashAlg::Sha256).to_string(),
            principal: None,
        };
        if let ssh_key::public::KeyData::Certificate(cert) = &key_data {
            let signer = Signer {
                fingerprint: cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
                ..unknown
            };
            return Ok(Verdict::Refused(Refusal::Certificate { signer }));
        }
        let Some(path) = &self.allowed_signers_file else {
            return Ok(Verdict::Refused(Refusal::NoTrustFile {
                kind: "ssh",
                key: "allowedSignersFile",
                signer: unknown,
            }));
        };
        let signers = AllowedSigners::read(path)?;
        let entries: Vec<&AllowedSigner> = signers
            .entries
            .iter()
            .filter(|e| !e.cert_authority && e.key == key_data)
            .collect();
        let Some(first) = entries.first() else {
            return Ok(Verdict::Refused(Refusal::UnknownKey {
                signer: unknown,
                file: path.clone(),
            }));
        };
        let named = |entry: &AllowedSigner| Signer {
            principal: Some(entry.principals.clone()),
            ..unknown.clone()
        };
        if sig.namespace() != GIT_NAMESPACE {
            return Ok(Verdict::Refused(Refusal::WrongNamespace {
                signer: named(first),
                namespace: sig.namespace().to_owned(),
            }));
        }
        let public = PublicKey::from(key_data);
        if public.verify(GIT_NAMESPACE, payload, &sig).is_err() {
            return Ok(Verdict::Refused(Refusal::BadSignature {
                signer: named(first),
            }));
        }
        // Any entry of the key that allows this use will do (as ssh-keygen); else the first
        // entry's reason.
        let mut refusal = None;
        for entry in &entries {
            match entry.allows(GIT_NAMESPACE, now) {
                Ok(()) => return Ok(Verdict::Verified(named(entry))),
                Err(why) => {
                    refusal.get_or_insert_with(|| match why {
                        Disallowed::Namespace(namespaces) => Refusal::NamespaceNotAllowed {
                            signer: named(entry),
                            namespaces,
                        },
                        Disallowed::Window(window) => Refusal::OutsideValidity {
                            signer: named(entry),
                            window,
                        },
                    });
                }
            }
        }
        Ok(Verdict::Refused(refusal.unwrap_or(Refusal::BadSignature {
            signer: named(first),
        })))
    }

    #[cfg(feature = "openpgp")]
    fn check_openpgp(
        &self,
        signature: &[u8],
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Verdict, TrustFileError> {
        super::openpgp::check(self.keyring_file.as_deref(), signature, payload, now)
    }

    #[cfg(not(feature = "openpgp"))]
    fn check_openpgp(
        &self,
        _signature: &[u8],
        _payload: &[u8],
        _now: DateTime<Utc>,
    ) -> Result<Verdict, TrustFileError> {
        Ok(Verdict::Refused(Refusal::UnsupportedKind {
            kind: "OpenPGP: this guestops is built without the `openpgp` feature".to_owned(),
        }))
    }
}

/// A check that could not be made (not a refusal).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A trust file problem.
    #[error(transparent)]
    TrustFile(TrustFileError),
    /// libgit2 could not read the commit.
    #[error("cannot read the commit's signature")]
    Git(#[source] git2::Error),
}

/// An `allowed_signers` file (ssh-keygen(1), "ALLOWED SIGNERS").
///
/// Each line is `principals [options] keytype base64-key [comment]`; empty lines and lines
/// starting with `#` are ignored. Supported options: `namespaces="pattern,…"` (patterns with
/// `*`, `?` and `!` negation, as OpenSSH matches them), `valid-after="YYYYMMDD[HHMM[SS]][Z]"`,
/// `valid-before="…"` (a trailing `Z` is UTC, else local time, as ssh-keygen) and
/// `cert-authority` (parsed; such a line never matches, since certificate signatures are
/// refused). Any other option is an error naming the line.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    /// The entries, in file order.
    pub entries: Vec<AllowedSigner>,
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// The principals field as written (comma-separated patterns, e.g. e-mail addresses).
    pub principals: String,
    /// The public key.
    pub key: ssh_key::public::KeyData,
    /// `cert-authority`.
    pub cert_authority: bool,
    /// `namespaces="…"`; `None`: every namespace.
    pub namespaces: Option<String>,
    /// `valid-after`.
    pub valid_after: Option<DateTime<Utc>>,
    /// `valid-before`.
    pub valid_before: Option<DateTime<Utc>>,
}

enum Disallowed {
    Namespace(String),
    Window(String),
}

impl AllowedSigner {
    fn allows(&self, namespace: &str, now: DateTime<Utc>) -> Result<(), Disallowed> {
        if let Some(namespaces) = &self.namespaces
            && !match_pattern_list(namespace, namespaces)
        {
            return Err(Disallowed::Namespace(namespaces.clone()));
        }
        let show = |t: &DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        if let Some(after) = &self.valid_after
            && now < *after
        {
            return Err(Disallowed::Window(format!(
                "after {} only, and it is {} now",
                show(after),
                show(&now)
            )));
        }
        if let Some(before) = &self.valid_before
            && now > *before
        {
            return Err(Disallowed::Window(format!(
                "before {} only, and it is {} now",
                show(before),
                show(&now)
            )));
        }
        Ok(())
    }
}

impl AllowedSigners {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`TrustFileError::Read`], or [`TrustFileError::AllowedSigners`] naming the first bad
    /// line.
    pub fn read(path: &Path) -> Result<Self, TrustFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrustFileError::Read {
            key: "allowedSignersFile",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, message)| TrustFileError::AllowedSigners {
            path: path.to_owned(),
            line,
            message,
        })
    }

    /// Parses the text of an `allowed_signers` file.
    ///
    /// # Errors
    /// The first bad line (1-based) and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries.push(parse_line(line).map_err(|m| (index + 1, m))?);
        }
        Ok(Self { entries })
    }
}

fn parse_line(line: &str) -> Result<AllowedSigner, String> {
    let (principals, rest) = take_field(line)?;
    if principals.is_empty() {
        return Err("no principals".to_owned());
    }
    let rest = rest.trim_start();
    // The options field is there when what follows is not a key (as ssh-keygen decides).
    let (options, key_text) = match parse_key(rest) {
        Ok(_) => ("", rest),
        Err(_) => {
            let (options, rest) = take_field(rest)?;
            (options, rest.trim_start())
        }
    };
    let key = parse_key(key_text)
        .map_err(|e| format!("`{}` is not a public key: {e}", first_word(key_text)))?;
    let mut entry = AllowedSigner {
        principals: principals.to_owned(),
        key,
        cert_authority: false,
        namespaces: None,
        valid_after: None,
        valid_before: None,
    };
    for option in split_options(options)? {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(unquote(value)?)),
            None => (option.as_str(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("cert-authority", None) => entry.cert_authority = true,
            ("namespaces", Some(value)) => entry.namespaces = Some(value),
            ("valid-after", Some(value)) => entry.valid_after = Some(parse_time(&value)?),
            ("valid-before", Some(value)) => entry.valid_before = Some(parse_time(&value)?),
            (other, _) => {
                return Err(format!(
                    "unknown or malformed option `{other}` (supported: namespaces=\"…\", \
                     valid-after=\"…\", valid-before=\"…\", cert-authority)"
                ));
            }
        }
    }
    Ok(entry)
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}

/// `keytype base64 [comment]` → the key.
fn parse_key(text: &str) -> Result<ssh_key::public::KeyData, String> {
    let mut words = text.split_whitespace();
    let (Some(kind), Some(base64)) = (words.next(), words.next()) else {
        return Err("expected `keytype base64-key`".to_owned());
    };
    PublicKey::from_openssh(&format!("{kind} {base64}"))
        .map(|key| key.key_data().clone())
        .map_err(|e| e.to_string())
}

/// The first whitespace-separated field, where `"…"` quotes whitespace; and the rest.
fn take_field(text: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Ok((&text[..i], &text[i..])),
            _ => {}
        }
    }
    if quoted {
        Err("unterminated quote".to_owned())
    } else {
        Ok((text, ""))
    }
}

/// `a,b="x,y",c` → `a`, `b="x,y"`, `c`.
fn split_options(options: &str) -> Result<Vec<String>, String> {
    if options.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in options.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote in the options".to_owned());
    }
    out.push(current);
    Ok(out)
}

fn unquote(value: &str) -> Result<String, String> {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => Ok(inner.to_owned()),
        None if !value.contains('"') => Ok(value.to_owned()),
        None => Err(format!("badly quoted value `{value}`")),
    }
}

/// `YYYYMMDD[HHMM[SS]][Z]`: UTC with the `Z`, else local time (ssh-keygen's rule).
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let bad = || {
        format!(
            "`{text}` is not a time (YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally followed by Z for UTC)"
        )
    };
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(digits) => (digits, true),
        None => (text, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let naive = match digits.len() {
        8 => NaiveDate::parse_from_str(digits, "%Y%m%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0)),
        12 => NaiveDateTime::parse_from_str(&format!("{digits}00"), "%Y%m%d%H%M%S").ok(),
        14 => NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S").ok(),
        _ => None,
    }
    .ok_or_else(bad)?;
    if utc {
        Ok(naive.and_utc())
    } else {
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(bad)
    }
}

/// OpenSSH's `match_pattern_list`: a comma-separated list of patterns (`*`, `?`), any of which
/// may be negated with `!`; a negated match wins.
fn match_pattern_list(text: &str, list: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',').map(str::trim) {
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard(text.as_bytes(), negated.as_bytes()) => return false,
            Some(_) => {}
            None if wildcard(text.as_bytes(), pattern.as_bytes()) => matched = true,
            None => {}
        }
    }
    matched
}

fn wildcard(text: &[u8], pattern: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard(text, &pattern[1..]) || (!text.is_empty() && wildcard(&text[1..], pattern))
        }
        (Some(b'?'), Some(_)) => wildcard(&text[1..], &pattern[1..]),
        (Some(p), Some(t)) if p == t => wildcard(&text[1..], &pattern[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFfGi0ilx+xPRlkON2uqHtWFai6WAy9SXu8ROh1STD+x";

    #[test]
    fn namespace_patterns_match_as_openssh() {
        assert!(match_pattern_list("git", "git"));
        assert!(match_pattern_list("git", "file,g*"));
        assert!(match_pattern_list("git", "g?t"));
        assert!(!match_pattern_list("git", "file,ssh-*"));
        assert!(!match_pattern_list("git", "*,!git"));
        assert!(!match_pattern_list("git", "gitx"));
    }

    #[test]
    fn lines_with_and_without_options_parse() {
        let text = format!(
            "# comment\n\nana@x.example {KEY} ana's laptop\n\"a b\",c@x namespaces=\"git,file\",valid-after=\"20200101Z\",valid-before=\"202601021530\" {KEY}\n*@x.example cert-authority {KEY}\n"
        );
        let signers = AllowedSigners::parse(&text).expect("parses");
        assert_eq!(signers.entries.len(), 3);
        let plain = &signers.entries[0];
        assert_eq!(plain.principals, "ana@x.example");
        assert!(plain.namespaces.is_none() && !plain.cert_authority);
        let options = &signers.entries[1];
        assert_eq!(options.principals, "\"a b\",c@x");
        assert_eq!(options.namespaces.as_deref(), Some("git,file"));
        assert_eq!(
            options.valid_after,
            Some(Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap())
        );
        assert!(options.valid_before.is_some());
        assert!(signers.entries[2].cert_authority);
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = format!("ana@x {KEY}\nbob@x restrict {KEY}\n");
        let (line, message) = AllowedSigners::parse(&text).expect_err("unknown option");
        assert_eq!(line, 2);
        assert!(message.contains("restrict"), "{message}");
        let (line, _) =
            AllowedSigners::parse("ana@x ssh-ed25519 AAAAnotakey\n").expect_err("bad key");
        assert_eq!(line, 1);
        let (_, message) = AllowedSigners::parse(&format!("ana@x valid-before=\"2020\" {KEY}\n"))
            .expect_err("bad time");
        assert!(message.contains("2020"), "{message}");
    }

    #[test]
    fn validity_windows_are_inclusive_and_checked_against_now() {
        let text = format!("a@x valid-after=\"20260101Z\",valid-before=\"20260201Z\" {KEY}\n");
        let entry = &AllowedSigners::parse(&text).expect("parses").entries[0];
        let at = |m, d| Utc.with_ymd_and_hms(2026, m, d, 0, 0, 0).unwrap();
        assert!(entry.allows("git", at(1, 1)).is_ok());
        assert!(entry.allows("git", at(1, 15)).is_ok());
        assert!(entry.allows("git", at(2, 1)).is_ok());
        assert!(matches!(
            entry.allows("git", at(2, 2)),
            Err(Disallowed::Window(_))
        ));
        assert!(matches!(
            entry.allows(
                "git",
                Utc.with_ymd_and_hms(2025, 12, 31, 23, 59, 59).unwrap()
            ),
            Err(Disallowed::Window(_))
        ));
    }

    #[test]
    fn no_trust_file_is_a_configuration_error() {
        let policy = VerifyPolicy {
            mode: VerifyMode::Head,
            ..VerifyPolicy::default()
        };
        assert!(matches!(
            policy.check(b"-----BEGIN SSH SIGNATURE-----\n", b"", Utc::now()),
            Err(TrustFileError::NoTrustFile)
        ));
    }
}
