//! Where the desired state comes from: git, or a plain file (design §5, §6, §9).
//!
//! Owns:
//! - **git**: a bare mirror of the configured repository kept under the state directory,
//!   fetched on demand ([`GitSource::fetch`]), and the content of `users.yaml` read **from the
//!   commit tree** of a fetched revision ([`GitSource::read`]), never from a work tree, so
//!   uncommitted or unpushed edits are never seen; offline reading of a file at any revspec of
//!   a local repository for `guestops diff` ([`read_at`]);
//! - **the file watch** of `--desired FILE` mode ([`watch_file`]): debounced, content-hashed,
//!   robust to editors that replace a file by renaming a temporary one over it.
//!
//! It never parses YAML: it returns bytes, at most [`READ_LIMIT`] of them, and the caller hands
//! them to [`crate::desired::spec::parse`]. libgit2 is blocking, so the async functions run it on
//! tokio's blocking pool and never stall the runtime's worker threads.
//!
//! - **signature checks** of the commit about to be applied (`source.verify`, design §12):
//!   SSH signatures against an `allowed_signers` file, OpenPGP signatures against a keyring
//!   ([`VerifyPolicy`]); a refused commit is [`SourceError::Unverified`], never read.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod any;
mod git;
#[cfg(feature = "openpgp")]
mod openpgp;
mod transport;
mod verify;
mod watch;

pub use any::{AnySource, DesiredSource, FileSource};
pub use git::{GitSettings, GitSource, read_at};
pub use verify::{
    AllowedSigner, AllowedSigners, CheckError, GIT_NAMESPACE, Refusal, Signer, TrustFileError,
    Verdict, VerifyMode, VerifyPolicy,
};
pub use watch::{FileChange, FileWatch, content_hash, read_file, watch_file};

/// Most bytes of `users.yaml` this module hands out: one more than
/// [`crate::desired::spec::MAX_FILE_SIZE`], so that the parser can tell a file that is too large.
pub const READ_LIMIT: usize = crate::desired::spec::MAX_FILE_SIZE + 1;

/// One git commit, as shown in plans, state and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// Full commit id (40 hex digits for SHA-1 repositories).
    pub id: String,
    /// Abbreviated commit id, unique in the repository it was read from (at least 7 digits).
    pub short: String,
    /// Commit author as `Name <email>`.
    pub author: String,
    /// When the commit was made (committer time), in UTC.
    pub time: DateTime<Utc>,
    /// First line of the commit message.
    pub subject: String,
}

impl std::fmt::Display for Revision {
    /// `abc1234 "subject" by Name <email>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} \"{}\" by {}", self.short, self.subject, self.author)
    }
}

/// Why the desired state could not be read. Each message names the thing and what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Neither `source.repo` nor `--desired FILE`.
    #[error(
        "no users.yaml to read: set source.repo to the git repository of users.yaml, or pass --desired FILE"
    )]
    NotConfigured,
    /// `source.branch` is not a valid branch name.
    #[error("`{branch}` is not a valid git branch name: check source.branch")]
    InvalidBranch {
        /// The configured branch.
        branch: String,
    },
    /// `source.path` is not a relative path inside the repository.
    #[error(
        "`{path}` is not a path inside the repository: source.path must be relative \
         (e.g. `users.yaml` or `admins/users.yaml`), without `..`"
    )]
    InvalidPath {
        /// The configured path.
        path: String,
    },
    /// The local mirror could not be created or opened.
    #[error(
        "cannot use the git mirror at {}: check that the state directory is writable, or \
         delete the directory so that it is created anew",
        dir.display()
    )]
    Mirror {
        /// The mirror directory.
        dir: PathBuf,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// The remote repository could not be reached or read.
    #[error(
        "cannot fetch from {repo}: check source.repo (URL or local path), the network and \
         any proxy settings"
    )]
    Unreachable {
        /// The repository, with any password in its URL redacted.
        repo: String,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// The remote repository refused the credentials (or asked for some and none were set).
    #[error(
        "{repo} refused authentication: check source.credentialFile (an HTTPS token with read \
         access to the repository, or an SSH deploy key registered on it; for SSH the host \
         must also be in the known_hosts of the user running guestops)"
    )]
    Auth {
        /// The repository, with any password in its URL redacted.
        repo: String,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// The credential file could not be read.
    #[error("cannot read the git credential file {}: check source.credentialFile", path.display())]
    CredentialFile {
        /// The configured file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The remote repository has no such branch.
    #[error("{repo} has no branch `{branch}`: check source.branch, or push the branch")]
    BranchNotFound {
        /// The repository, with any password in its URL redacted.
        repo: String,
        /// The configured branch.
        branch: String,
    },
    /// A local repository given for offline reading could not be opened.
    #[error("{} is not a git repository: check --repo (a work tree or a bare repository)", repo.display())]
    RepositoryOpen {
        /// The path given.
        repo: PathBuf,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// A revision does not exist or does not name a commit.
    #[error(
        "revision `{rev}` does not name a commit in {}: check it with `git log` (a branch, a \
         tag, a commit id or an expression such as `HEAD~1`); fetch it first if it is remote",
        repo.display()
    )]
    RevisionNotFound {
        /// The repository.
        repo: PathBuf,
        /// The revision as given.
        rev: String,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// The file does not exist at that revision.
    #[error(
        "`{path}` does not exist at revision {revision}: check source.path (or the file name \
         given), and that the file was committed and pushed"
    )]
    PathNotFound {
        /// Path inside the repository.
        path: String,
        /// The revision (short id, and the revspec when one was given).
        revision: String,
    },
    /// The path exists at that revision but is not a regular file.
    #[error(
        "`{path}` at revision {revision} is not a file (a directory, a link or a submodule): check source.path"
    )]
    NotAFile {
        /// Path inside the repository.
        path: String,
        /// The revision.
        revision: String,
    },
    /// The file at that revision is larger than `users.yaml` may be.
    #[error(
        "`{path}` at revision {revision} is {}, more than the {} limit of users.yaml: shrink \
         the file in the repository",
        crate::desired::spec::human_size(*size as u64),
        crate::desired::spec::human_size(*limit as u64)
    )]
    TooLarge {
        /// Path inside the repository.
        path: String,
        /// The revision.
        revision: String,
        /// Size of the blob.
        size: usize,
        /// The limit ([`crate::desired::spec::MAX_FILE_SIZE`]).
        limit: usize,
    },
    /// Reading the local mirror or repository failed in an unexpected way.
    #[error("git failed while {action} in {}: the repository may be corrupt; delete the mirror to re-create it", repo.display())]
    Git {
        /// What was being done.
        action: &'static str,
        /// The repository or mirror.
        repo: PathBuf,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// The watched file cannot be watched (no parent directory, or the OS refused).
    #[error("cannot watch {}: check that its directory exists and is readable", path.display())]
    Watch {
        /// The file to watch.
        path: PathBuf,
        /// What the watcher said.
        #[source]
        source: notify::Error,
    },
    /// [`watch_file`] was called outside a tokio runtime.
    #[error("watching {} needs a tokio runtime: call watch_file from async code", path.display())]
    NoRuntime {
        /// The file to watch.
        path: PathBuf,
    },
    /// A blocking git task did not complete (it panicked or the runtime is shutting down).
    #[error("a git task did not complete (it panicked, or the runtime is shutting down)")]
    Task(#[source] tokio::task::JoinError),
    /// `source.verify` refused the commit at the tip of the branch: it is not applied.
    #[error(
        "commit {} is refused by source.verify: {refusal}; sign it with a key listed in \
         source.verify.allowedSignersFile (SSH) or source.verify.keyringFile (OpenPGP) and push \
         again",
        revision.id
    )]
    Unverified {
        /// The refused commit.
        revision: Box<Revision>,
        /// Why.
        refusal: Box<Refusal>,
    },
    /// The signature of a commit could not be checked (a trust file is missing or malformed).
    #[error("cannot check the signature of commit {commit}")]
    Verify {
        /// The commit.
        commit: String,
        /// What went wrong.
        #[source]
        source: CheckError,
    },
    /// A plain `users.yaml` file (`--desired FILE`) could not be read.
    #[error("cannot read {}: check the --desired path and its permissions", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
