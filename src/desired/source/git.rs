//! The git half of the source: a bare mirror fetched from the configured repository, and blobs
//! read from commit trees.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Once};

use chrono::{DateTime, Utc};
use git2::{AutotagOption, ErrorCode, FetchOptions, ObjectType, Oid, Repository};

use super::transport::{self, FetchContext};
use super::{READ_LIMIT, Revision, SourceError, Verdict, VerifyPolicy};
use crate::config::SourceConfig;

/// Where the desired state lives in git (`source.*` of the host configuration).
///
/// `Debug` redacts a password written into the repository URL.
#[derive(Clone, PartialEq, Eq)]
pub struct GitSettings {
    /// A URL (`https://…`, `ssh://…`, `git@host:path`) or a local path.
    pub repo: String,
    /// The branch to follow.
    pub branch: String,
    /// Path of `users.yaml` inside the repository.
    pub path: String,
    /// An HTTPS token (sent as the password of `x-access-token`) or an SSH private key file
    /// (a deploy key without a passphrase). Local paths need none.
    pub credential_file: Option<PathBuf>,
}

impl GitSettings {
    /// The git settings of a host configuration; `None` when no repository is configured
    /// (`--desired FILE` mode).
    pub fn from_config(config: &SourceConfig) -> Option<Self> {
        config.repo.as_ref().map(|repo| Self {
            repo: repo.clone(),
            branch: config.branch.clone(),
            path: config.path.clone(),
            credential_file: config.credential_file.clone(),
        })
    }

    /// The repository as it may be shown: a password in a URL is replaced by `***`.
    pub fn display_repo(&self) -> String {
        redact(&self.repo)
    }
}

impl std::fmt::Debug for GitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSettings")
            .field("repo", &self.display_repo())
            .field("branch", &self.branch)
            .field("path", &self.path)
            .field("credential_file", &self.credential_file)
            .finish()
    }
}

/// A followed branch: a bare mirror of the repository under the state directory, fetched on
/// demand.
///
/// Cloning is cheap and clones share the fetch lock, so fetches never run concurrently on the
/// same mirror.
#[derive(Debug, Clone)]
pub struct GitSource {
    settings: GitSettings,
    mirror_dir: PathBuf,
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    verify: VerifyPolicy,
}

impl GitSource {
    /// A source following `settings.branch` of `settings.repo`, mirrored into the bare
    /// repository `mirror_dir` (created on the first fetch; e.g. `<state.dir>/source.git`).
    ///
    /// Nothing is read or fetched here.
    pub fn new(settings: GitSettings, mirror_dir: PathBuf) -> Self {
        configure_libgit2();
        Self {
            settings,
            mirror_dir,
            fetch_lock: Arc::new(tokio::sync::Mutex::new(())),
            verify: VerifyPolicy::default(),
        }
    }

    /// The same source, checking the signature of every revision it loads as `policy` says
    /// (`source.verify`; the default checks nothing).
    pub fn with_verify(mut self, policy: VerifyPolicy) -> Self {
        self.verify = policy;
        self
    }

    /// The signature policy.
    pub fn verify_policy(&self) -> &VerifyPolicy {
        &self.verify
    }

    /// Checks the signature of the fetched commit `rev` (as returned by [`GitSource::fetch`])
    /// at `now`, as `source.verify` asks; `Ok` with nothing to check when it is off.
    ///
    /// # Errors
    /// [`SourceError::Unverified`] for a refused commit (unsigned, unknown signer, bad
    /// signature, a signer not allowed now), [`SourceError::Verify`] when a trust file cannot
    /// be used.
    pub async fn verify(
        &self,
        rev: &Revision,
        now: DateTime<Utc>,
    ) -> Result<Option<super::Signer>, SourceError> {
        if !self.verify.is_on() {
            return Ok(None);
        }
        let policy = self.verify.clone();
        let mirror_dir = self.mirror_dir.clone();
        let revision = rev.clone();
        tokio::task::spawn_blocking(move || {
            let repo =
                Repository::open_bare(&mirror_dir).map_err(|source| SourceError::Mirror {
                    dir: mirror_dir.clone(),
                    source,
                })?;
            let oid =
                Oid::from_str(&revision.id).map_err(|source| SourceError::RevisionNotFound {
                    repo: mirror_dir.clone(),
                    rev: revision.id.clone(),
                    source,
                })?;
            match policy.check_commit(&repo, oid, now) {
                Ok(Verdict::Verified(signer)) => Ok(Some(signer)),
                Ok(Verdict::Refused(refusal)) => Err(SourceError::Unverified {
                    revision: Box::new(revision),
                    refusal: Box::new(refusal),
                }),
                Err(source) => Err(SourceError::Verify {
                    commit: revision.id,
                    source,
                }),
            }
        })
        .await
        .map_err(SourceError::Task)?
    }

    /// The settings this source follows.
    pub fn settings(&self) -> &GitSettings {
        &self.settings
    }

    /// The bare mirror directory.
    pub fn mirror_dir(&self) -> &Path {
        &self.mirror_dir
    }

    /// Fetches the branch from the repository into the mirror and returns the commit it now
    /// points at.
    ///
    /// # Errors
    /// [`SourceError::Unreachable`], [`SourceError::Auth`], [`SourceError::CredentialFile`],
    /// [`SourceError::BranchNotFound`], [`SourceError::InvalidBranch`],
    /// [`SourceError::Mirror`], each saying what to check.
    pub async fn fetch(&self) -> Result<Revision, SourceError> {
        let _guard = self.fetch_lock.lock().await;
        let settings = self.settings.clone();
        let mirror_dir = self.mirror_dir.clone();
        tokio::task::spawn_blocking(move || fetch_blocking(&settings, &mirror_dir))
            .await
            .map_err(SourceError::Task)?
    }

    /// The content of `settings.path` in the tree of the commit `rev` (as returned by
    /// [`GitSource::fetch`]), at most [`READ_LIMIT`] bytes.
    ///
    /// Reads the commit tree of the mirror, never a work tree: edits that are not committed
    /// and pushed to the branch are never seen.
    ///
    /// # Errors
    /// [`SourceError::PathNotFound`], [`SourceError::NotAFile`], [`SourceError::TooLarge`],
    /// [`SourceError::InvalidPath`], or a mirror problem.
    pub async fn read(&self, rev: &Revision) -> Result<Vec<u8>, SourceError> {
        let path = self.settings.path.clone();
        let mirror_dir = self.mirror_dir.clone();
        let id = rev.id.clone();
        let label = rev.short.clone();
        tokio::task::spawn_blocking(move || {
            let repo =
                Repository::open_bare(&mirror_dir).map_err(|source| SourceError::Mirror {
                    dir: mirror_dir.clone(),
                    source,
                })?;
            let commit = Oid::from_str(&id)
                .and_then(|oid| repo.find_commit(oid))
                .map_err(|source| SourceError::RevisionNotFound {
                    repo: mirror_dir.clone(),
                    rev: id.clone(),
                    source,
                })?;
            read_blob(&repo, &mirror_dir, &commit, &path, &label)
        })
        .await
        .map_err(SourceError::Task)?
    }
}

/// Reads `path` at revision `rev` of the local repository `repo` (a work tree, any directory
/// inside one, or a bare repository), for `guestops diff`.
///
/// `rev` is any revspec git understands: `main`, `HEAD~1`, a (short) commit id, a tag. Only
/// the committed content is read, never the work tree. Blocking: call it from synchronous code
/// or through `spawn_blocking`.
///
/// # Errors
/// [`SourceError::RepositoryOpen`], [`SourceError::RevisionNotFound`],
/// [`SourceError::PathNotFound`], [`SourceError::NotAFile`], [`SourceError::TooLarge`],
/// [`SourceError::InvalidPath`].
pub fn read_at(repo: &Path, rev: &str, path: &str) -> Result<(Revision, Vec<u8>), SourceError> {
    let repository = Repository::discover(repo).map_err(|source| SourceError::RepositoryOpen {
        repo: repo.to_path_buf(),
        source,
    })?;
    let commit = repository
        .revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
        .map_err(|source| SourceError::RevisionNotFound {
            repo: repo.to_path_buf(),
            rev: rev.to_owned(),
            source,
        })?;
    let revision = revision_of(&commit);
    let label = if rev == revision.id || rev == revision.short {
        revision.short.clone()
    } else {
        format!("{rev} ({})", revision.short)
    };
    let bytes = read_blob(&repository, repo, &commit, path, &label)?;
    Ok((revision, bytes))
}

/// Global libgit2 settings, made once: the HTTP(S) and SSH transports of [`transport`], and
/// bounded network waits for the transports libgit2 keeps (`git://`), so that a dead server
/// cannot hang a fetch forever.
fn configure_libgit2() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: these calls change process-global libgit2 settings; they run once, before
        // this module starts any git operation, and no other module uses libgit2.
        unsafe {
            if let Err(err) = transport::register() {
                tracing::error!(error = %err, "cannot register the git transports: HTTPS and SSH sources will fail");
            }
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(30_000);
            let _ = git2::opts::set_server_timeout_in_milliseconds(120_000);
        }
    });
}

fn fetch_blocking(settings: &GitSettings, mirror_dir: &Path) -> Result<Revision, SourceError> {
    fetch_with(settings, mirror_dir, &transport::ssh_program())
}

/// [`fetch_blocking`] with the SSH client to run for `ssh://` and scp-like URLs.
fn fetch_with(
    settings: &GitSettings,
    mirror_dir: &Path,
    ssh_program: &OsStr,
) -> Result<Revision, SourceError> {
    let branch = settings.branch.as_str();
    let head_ref = format!("refs/heads/{branch}");
    if branch.is_empty() || !git2::Reference::is_valid_name(&head_ref) {
        return Err(SourceError::InvalidBranch {
            branch: branch.to_owned(),
        });
    }
    check_repo_path(&settings.path)?;
    let tracking_ref = format!("refs/remotes/origin/{branch}");
    let refspec = format!("+{head_ref}:{tracking_ref}");
    let shown = settings.display_repo();

    let repo = open_or_init_mirror(mirror_dir)?;
    let url = remote_url(&settings.repo);
    let mirror_err = |source| SourceError::Mirror {
        dir: mirror_dir.to_path_buf(),
        source,
    };
    let mut remote = match repo.find_remote("origin") {
        Ok(remote) if remote.url().ok() == Some(url.as_str()) => remote,
        Ok(_) => {
            repo.remote_set_url("origin", &url).map_err(mirror_err)?;
            repo.find_remote("origin").map_err(mirror_err)?
        }
        Err(_) => repo.remote("origin", &url).map_err(mirror_err)?,
    };

    let context = FetchContext {
        credential_file: settings.credential_file.clone(),
        ssh_program: ssh_program.to_owned(),
        ..FetchContext::default()
    };
    let (result, context) = transport::with_fetch(context, || {
        let mut options = FetchOptions::new();
        options
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        remote.fetch(&[refspec.as_str()], Some(&mut options), None)
    });
    if let Err(source) = result {
        if let Some(err) = context.credential_error {
            return Err(err);
        }
        let auth = source.code() == ErrorCode::Auth || context.auth_refused;
        return Err(if auth {
            SourceError::Auth {
                repo: shown,
                source,
            }
        } else {
            SourceError::Unreachable {
                repo: shown,
                source,
            }
        });
    }

    // The advertisement of the last connection says whether the branch still exists; a stale
    // tracking ref from an earlier fetch must not pass for the branch.
    let advertised = remote
        .list()
        .map_err(|source| SourceError::Unreachable {
            repo: shown.clone(),
            source,
        })?
        .iter()
        .find(|head| head.name() == head_ref)
        .map(|head| head.oid());
    let Some(advertised) = advertised else {
        return Err(SourceError::BranchNotFound {
            repo: shown,
            branch: branch.to_owned(),
        });
    };
    let commit = repo
        .find_commit(advertised)
        .map_err(|source| SourceError::Git {
            action: "reading the fetched commit",
            repo: mirror_dir.to_path_buf(),
            source,
        })?;
    Ok(revision_of(&commit))
}

/// Opens the bare mirror, creating it when the directory is missing or empty.
fn open_or_init_mirror(dir: &Path) -> Result<Repository, SourceError> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
    };
    let result = if empty {
        Repository::init_bare(dir)
    } else {
        Repository::open_bare(dir)
    };
    result.map_err(|source| SourceError::Mirror {
        dir: dir.to_path_buf(),
        source,
    })
}

/// The URL handed to libgit2: an existing local directory becomes an absolute path (so a
/// relative `source.repo` keeps meaning the same after a `chdir`); anything else is kept.
fn remote_url(repo: &str) -> String {
    if !repo.contains("://") {
        let path = Path::new(repo);
        if path.is_dir()
            && let Ok(absolute) = std::path::absolute(path)
        {
            return absolute.to_string_lossy().into_owned();
        }
    }
    repo.to_owned()
}

/// `repo` with any password of a URL replaced by `***`.
fn redact(repo: &str) -> String {
    match url::Url::parse(repo) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => repo.to_owned(),
    }
}

/// Refuses paths that are absolute, empty or climb out of the repository.
fn check_repo_path(path: &str) -> Result<&Path, SourceError> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && p.components().any(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(SourceError::InvalidPath {
            path: path.to_owned(),
        })
    }
}

/// Reads `path` from the tree of `commit`, refusing anything but a regular file of at most
/// [`crate::desired::spec::MAX_FILE_SIZE`] bytes (checked before the blob is inflated).
fn read_blob(
    repo: &Repository,
    repo_path: &Path,
    commit: &git2::Commit<'_>,
    path: &str,
    revision: &str,
) -> Result<Vec<u8>, SourceError> {
    let relative = check_repo_path(path)?;
    // `./users.yaml` names the same entry as `users.yaml`.
    let relative: PathBuf = relative
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let git_err = |action: &'static str| {
        move |source| SourceError::Git {
            action,
            repo: repo_path.to_path_buf(),
            source,
        }
    };
    let tree = commit.tree().map_err(git_err("reading a commit tree"))?;
    let entry = match tree.get_path(&relative) {
        Ok(entry) => entry,
        Err(err) if err.code() == ErrorCode::NotFound => {
            return Err(SourceError::PathNotFound {
                path: path.to_owned(),
                revision: revision.to_owned(),
            });
        }
        Err(source) => return Err(git_err("looking up a path")(source)),
    };
    // 0o120000 is a symbolic link: its blob is the link target, not the file.
    if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == 0o120_000 {
        return Err(SourceError::NotAFile {
            path: path.to_owned(),
            revision: revision.to_owned(),
        });
    }
    let odb = repo.odb().map_err(git_err("opening the object database"))?;
    let (size, _) = odb
        .read_header(entry.id())
        .map_err(git_err("reading a blob header"))?;
    if size >= READ_LIMIT {
        return Err(SourceError::TooLarge {
            path: path.to_owned(),
            revision: revision.to_owned(),
            size,
            limit: crate::desired::spec::MAX_FILE_SIZE,
        });
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(git_err("reading a blob"))?;
    Ok(blob.content().to_vec())
}

/// The [`Revision`] of a commit.
fn revision_of(commit: &git2::Commit<'_>) -> Revision {
    let id = commit.id().to_string();
    let short = commit
        .as_object()
        .short_id()
        .ok()
        .and_then(|buf| buf.as_str().ok().map(str::to_owned))
        .unwrap_or_else(|| id.chars().take(7).collect());
    let author = commit.author();
    let author = format!(
        "{} <{}>",
        String::from_utf8_lossy(author.name_bytes()),
        String::from_utf8_lossy(author.email_bytes())
    );
    let time = DateTime::<Utc>::from_timestamp(commit.time().seconds(), 0).unwrap_or_default();
    let subject = commit
        .summary_bytes()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default();
    Revision {
        id,
        short,
        author,
        time,
        subject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        let shown = redact("https://bot:s3cret@git.example/org/repo.git");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("git.example/org/repo.git"), "{shown}");
        assert_eq!(redact("/srv/git/admins.git"), "/srv/git/admins.git");
        let settings = GitSettings {
            repo: "https://bot:s3cret@git.example/org/repo.git".into(),
            branch: "main".into(),
            path: "users.yaml".into(),
            credential_file: None,
        };
        assert!(!format!("{settings:?}").contains("s3cret"));
        assert_eq!(
            redact("git@github.com:org/repo.git"),
            "git@github.com:org/repo.git"
        );
    }

    #[test]
    fn paths_outside_the_repository_are_refused() {
        for bad in ["", "/etc/passwd", "../users.yaml", "a/../../b", "."] {
            assert!(
                matches!(check_repo_path(bad), Err(SourceError::InvalidPath { .. })),
                "{bad:?} should be refused"
            );
        }
        for good in ["users.yaml", "./users.yaml", "admins/users.yaml"] {
            assert!(check_repo_path(good).is_ok(), "{good:?} should be accepted");
        }
    }

    /// An upstream repository with `users.yaml` committed on `main`.
    fn upstream() -> (tempfile::TempDir, Oid) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let repo = Repository::init(dir.path()).expect("init");
        let blob = repo.blob(b"users: []\n").expect("blob");
        let mut tree = repo.treebuilder(None).expect("treebuilder");
        tree.insert("users.yaml", blob, 0o100_644).expect("insert");
        let tree = repo.find_tree(tree.write().expect("tree")).expect("tree");
        let who = git2::Signature::new("Ana Silva", "ana@partner.example", &git2::Time::new(0, 0))
            .expect("signature");
        let id = repo
            .commit(Some("refs/heads/main"), &who, &who, "Grant Ana", &tree, &[])
            .expect("commit");
        (dir, id)
    }

    /// A stand-in for `ssh` that records its arguments and serves `repo` with the real
    /// `git upload-pack`, whatever path it is asked for (or just fails, printing `refusal`).
    fn fake_ssh(dir: &Path, repo: &Path, refusal: Option<&str>) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.join("fake-ssh");
        let args = dir.join("args");
        let body = match refusal {
            Some(message) => format!("echo '{message}' >&2\nexit 255"),
            None => format!("exec git upload-pack '{}'", repo.display()),
        };
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n{body}\n",
            args.display()
        );
        std::fs::write(&program, script).expect("write fake ssh");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        program
    }

    fn ssh_settings(repo: &str, key: Option<PathBuf>) -> GitSettings {
        GitSettings {
            repo: repo.into(),
            branch: "main".into(),
            path: "users.yaml".into(),
            credential_file: key,
        }
    }

    #[test]
    fn an_ssh_repository_is_fetched_through_the_ssh_program_with_the_deploy_key() {
        configure_libgit2();
        let (upstream, id) = upstream();
        let work = tempfile::TempDir::new().expect("temp dir");
        let key = work.path().join("deploy-key");
        std::fs::write(&key, "not a real key").expect("write key");
        let program = fake_ssh(work.path(), upstream.path(), None);
        let mirror = work.path().join("source.git");

        for (url, command) in [
            (
                "git@git.example:org/admins.git",
                "git-upload-pack 'org/admins.git'",
            ),
            (
                "ssh://git@git.example:2222/org/admins.git",
                "git-upload-pack '/org/admins.git'",
            ),
        ] {
            let rev = fetch_with(
                &ssh_settings(url, Some(key.clone())),
                &mirror,
                program.as_os_str(),
            )
            .expect(url);
            assert_eq!(rev.id, id.to_string(), "{url}");
            let args = std::fs::read_to_string(work.path().join("args")).expect("args");
            let args: Vec<&str> = args.lines().collect();
            assert!(args.contains(&"BatchMode=yes"), "{args:?}");
            assert!(args.contains(&"IdentitiesOnly=yes"), "{args:?}");
            assert!(args.contains(&key.to_str().expect("utf-8")), "{args:?}");
            assert_eq!(
                args[args.len() - 2..],
                ["git@git.example", command],
                "{args:?}"
            );
        }
        let args = std::fs::read_to_string(work.path().join("args")).expect("args");
        assert!(args.contains("-p\n2222\n"), "{args}");

        let repo = Repository::open_bare(&mirror).expect("mirror");
        let commit = repo.find_commit(id).expect("fetched commit");
        let bytes = read_blob(&repo, &mirror, &commit, "users.yaml", "main").expect("read");
        assert_eq!(bytes, b"users: []\n");
    }

    #[test]
    fn an_ssh_refusal_is_an_auth_error_with_what_ssh_said() {
        configure_libgit2();
        let (upstream, _) = upstream();
        let work = tempfile::TempDir::new().expect("temp dir");
        let program = fake_ssh(
            work.path(),
            upstream.path(),
            Some("git@git.example: Permission denied (publickey)."),
        );
        let err = fetch_with(
            &ssh_settings("git@git.example:org/admins.git", None),
            &work.path().join("source.git"),
            program.as_os_str(),
        )
        .expect_err("refused");
        assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
        assert!(
            format!("{err:?}").contains("Permission denied (publickey)"),
            "{err:?}"
        );

        let missing = work.path().join("no-such-key");
        let err = fetch_with(
            &ssh_settings("git@git.example:org/admins.git", Some(missing)),
            &work.path().join("source.git"),
            program.as_os_str(),
        )
        .expect_err("no key");
        assert!(matches!(err, SourceError::CredentialFile { .. }), "{err:?}");
    }
}
