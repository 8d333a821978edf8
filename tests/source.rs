//! The git source and the file watch, against temporary repositories and directories (offline).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use git2::{Oid, Repository, Signature, Time};
use guestops::desired::source::{
    GitSettings, GitSource, Revision, SourceError, content_hash, read_at, watch_file,
};
use tempfile::TempDir;

/// How long a test waits for something that should happen: generous, since the machine is
/// shared; a slow machine makes the test slower, never wrong.
const PATIENCE: Duration = Duration::from_secs(20);

/// A non-bare "upstream" repository with a work tree, whose branches tests commit to.
struct Upstream {
    dir: TempDir,
    repo: Repository,
}

impl Upstream {
    fn new() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let repo = Repository::init(dir.path()).expect("init upstream");
        repo.set_head("refs/heads/main").expect("HEAD to main");
        Self { dir, repo }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Commits `files` (top-level name → content) on top of `branch`, as Ana at `when`.
    fn commit(&self, branch: &str, files: &[(&str, &[u8])], message: &str, when: i64) -> Oid {
        let refname = format!("refs/heads/{branch}");
        let parent = self
            .repo
            .find_reference(&refname)
            .ok()
            .and_then(|r| r.peel_to_commit().ok());
        let base = parent.as_ref().map(|c| c.tree().expect("parent tree"));
        let mut builder = self.repo.treebuilder(base.as_ref()).expect("treebuilder");
        for (name, content) in files {
            let blob = self.repo.blob(content).expect("blob");
            builder.insert(name, blob, 0o100_644).expect("insert");
        }
        let tree = self
            .repo
            .find_tree(builder.write().expect("write tree"))
            .expect("tree");
        let author = Signature::new("Ana Silva", "ana@partner.example", &Time::new(when, 0))
            .expect("signature");
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        self.repo
            .commit(Some(&refname), &author, &author, message, &tree, &parents)
            .expect("commit")
    }

    /// Writes a file into the work tree without committing it.
    fn edit_work_tree(&self, name: &str, content: &[u8]) {
        std::fs::write(self.path().join(name), content).expect("write work tree");
    }

    fn source(&self, mirror: &TempDir, branch: &str) -> GitSource {
        GitSource::new(
            GitSettings {
                repo: self.path().to_string_lossy().into_owned(),
                branch: branch.to_owned(),
                path: "users.yaml".to_owned(),
                credential_file: None,
            },
            mirror.path().join("source.git"),
        )
    }
}

const T1: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const T2: i64 = 1_767_312_000; // 2026-01-02T00:00:00Z

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).expect("valid time")
}

#[tokio::test]
async fn fetch_returns_the_branch_tip_with_author_subject_and_time() {
    let upstream = Upstream::new();
    let oid = upstream.commit(
        "main",
        &[("users.yaml", b"v1\n")],
        "Grant Ana admin\n\nCHG-1234",
        T1,
    );
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "main");

    let rev = source.fetch().await.expect("fetch");

    assert_eq!(rev.id, oid.to_string());
    assert!(
        rev.id.starts_with(&rev.short) && rev.short.len() >= 7,
        "{rev:?}"
    );
    assert_eq!(rev.author, "Ana Silva <ana@partner.example>");
    assert_eq!(rev.subject, "Grant Ana admin");
    assert_eq!(rev.time, at(T1));
    assert_eq!(source.read(&rev).await.expect("read"), b"v1\n");
    let mirror_repo = Repository::open(source.mirror_dir()).expect("mirror exists");
    assert!(mirror_repo.is_bare(), "the mirror has no work tree");
}

#[tokio::test]
async fn the_next_fetch_sees_a_new_commit_and_old_revisions_stay_readable() {
    let upstream = Upstream::new();
    upstream.commit("main", &[("users.yaml", b"v1\n")], "one", T1);
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "main");
    let first = source.fetch().await.expect("first fetch");

    let second_oid = upstream.commit("main", &[("users.yaml", b"v2\n")], "two", T2);
    let second = source.fetch().await.expect("second fetch");

    assert_eq!(second.id, second_oid.to_string());
    assert_ne!(second, first);
    assert_eq!(second.time, at(T2));
    assert_eq!(source.read(&second).await.expect("read v2"), b"v2\n");
    assert_eq!(source.read(&first).await.expect("read v1"), b"v1\n");
}

#[tokio::test]
async fn an_uncommitted_edit_in_the_upstream_work_tree_is_never_read() {
    let upstream = Upstream::new();
    upstream.commit("main", &[("users.yaml", b"committed\n")], "one", T1);
    upstream.edit_work_tree("users.yaml", b"edited, not committed\n");
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "main");

    let rev = source.fetch().await.expect("fetch");

    assert_eq!(source.read(&rev).await.expect("read"), b"committed\n");
}

#[tokio::test]
async fn a_commit_on_another_branch_is_not_seen() {
    let upstream = Upstream::new();
    let main = upstream.commit("main", &[("users.yaml", b"main\n")], "on main", T1);
    // `feature` starts at main and changes the file.
    upstream
        .repo
        .reference("refs/heads/feature", main, false, "branch")
        .expect("feature branch");
    upstream.commit("feature", &[("users.yaml", b"feature\n")], "on feature", T2);
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "main");

    let rev = source.fetch().await.expect("fetch");

    assert_eq!(rev.id, main.to_string());
    assert_eq!(source.read(&rev).await.expect("read"), b"main\n");
}

#[tokio::test]
async fn a_missing_file_names_the_path_and_the_revision() {
    let upstream = Upstream::new();
    upstream.commit("main", &[("README.md", b"hello\n")], "no users yet", T1);
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "main");
    let rev = source.fetch().await.expect("fetch");

    let err = source.read(&rev).await.expect_err("users.yaml is missing");

    assert!(matches!(err, SourceError::PathNotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("users.yaml"), "{message}");
    assert!(message.contains(&rev.short), "{message}");
}

#[tokio::test]
async fn a_missing_branch_is_reported_by_name() {
    let upstream = Upstream::new();
    upstream.commit("main", &[("users.yaml", b"v1\n")], "one", T1);
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "production");

    let err = source.fetch().await.expect_err("no such branch");

    assert!(matches!(err, SourceError::BranchNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("`production`"), "{err}");
}

#[tokio::test]
async fn a_deleted_branch_is_not_served_from_the_mirror() {
    let upstream = Upstream::new();
    upstream.commit("main", &[("users.yaml", b"v1\n")], "one", T1);
    let oid = upstream.commit("release", &[("users.yaml", b"r\n")], "release", T1);
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "release");
    assert_eq!(
        source.fetch().await.expect("first fetch").id,
        oid.to_string()
    );

    upstream
        .repo
        .find_reference("refs/heads/release")
        .expect("release ref")
        .delete()
        .expect("delete branch");

    let err = source.fetch().await.expect_err("branch is gone");
    assert!(matches!(err, SourceError::BranchNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_repository_says_to_check_source_repo() {
    let missing = TempDir::new().expect("temp dir");
    let mirror = TempDir::new().expect("temp dir");
    let source = GitSource::new(
        GitSettings {
            repo: missing
                .path()
                .join("no-such-repo")
                .to_string_lossy()
                .into_owned(),
            branch: "main".into(),
            path: "users.yaml".into(),
            credential_file: None,
        },
        mirror.path().join("source.git"),
    );

    let err = source.fetch().await.expect_err("nothing there");

    assert!(matches!(err, SourceError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("source.repo"), "{err}");
}

#[tokio::test]
async fn an_invalid_branch_name_is_refused_before_any_fetch() {
    let upstream = Upstream::new();
    upstream.commit("main", &[("users.yaml", b"v1\n")], "one", T1);
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "bad..name");

    let err = source.fetch().await.expect_err("invalid branch");

    assert!(matches!(err, SourceError::InvalidBranch { .. }), "{err:?}");
    assert!(
        !mirror.path().join("source.git").exists(),
        "nothing was created"
    );
}

#[tokio::test]
async fn a_file_over_the_size_limit_is_refused() {
    let upstream = Upstream::new();
    let big = vec![b'#'; guestops::desired::spec::MAX_FILE_SIZE + 1];
    upstream.commit("main", &[("users.yaml", &big)], "too big", T1);
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "main");
    let rev = source.fetch().await.expect("fetch");

    let err = source.read(&rev).await.expect_err("too large");

    assert!(matches!(err, SourceError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("users.yaml"), "{err}");
}

#[test]
fn read_at_resolves_parent_expressions_commit_ids_and_tags() {
    let upstream = Upstream::new();
    let first = upstream.commit("main", &[("users.yaml", b"v1\n")], "one", T1);
    let second = upstream.commit("main", &[("users.yaml", b"v2\n")], "two", T2);
    upstream.edit_work_tree("users.yaml", b"dirty\n");
    let tag_target = upstream
        .repo
        .find_object(first, None)
        .expect("first commit");
    let who = Signature::new("Rel Eng", "rel@partner.example", &Time::new(T2, 0)).expect("sig");
    upstream
        .repo
        .tag("v1.0", &tag_target, &who, "annotated", false)
        .expect("tag");

    let (rev, bytes) = read_at(upstream.path(), "HEAD~1", "users.yaml").expect("HEAD~1");
    assert_eq!(
        (rev.id.as_str(), bytes.as_slice()),
        (first.to_string().as_str(), &b"v1\n"[..])
    );

    let (rev, bytes) = read_at(upstream.path(), &second.to_string(), "users.yaml").expect("sha");
    assert_eq!(rev.subject, "two");
    assert_eq!(bytes, b"v2\n", "the committed content, not the work tree");

    let short = &first.to_string()[..10];
    let (rev, _) = read_at(upstream.path(), short, "users.yaml").expect("short sha");
    assert_eq!(rev.id, first.to_string());

    let (rev, bytes) = read_at(upstream.path(), "v1.0", "users.yaml").expect("annotated tag");
    assert_eq!((rev.id, bytes), (first.to_string(), b"v1\n".to_vec()));

    let (rev, _) = read_at(upstream.path(), "main", "./users.yaml").expect("branch");
    assert_eq!(rev.id, second.to_string());
}

#[test]
fn read_at_works_in_a_bare_repository() {
    let upstream = Upstream::new();
    let oid = upstream.commit("main", &[("users.yaml", b"v1\n")], "one", T1);
    let bare_dir = TempDir::new().expect("temp dir");
    let bare = Repository::init_bare(bare_dir.path()).expect("bare");
    let mut remote = bare
        .remote_anonymous(&upstream.path().to_string_lossy())
        .expect("remote");
    remote
        .fetch(&["+refs/heads/main:refs/heads/main"], None, None)
        .expect("fetch into bare");

    let (rev, bytes) = read_at(bare_dir.path(), "main", "users.yaml").expect("read bare");

    assert_eq!(rev.id, oid.to_string());
    assert_eq!(bytes, b"v1\n");
}

#[test]
fn read_at_errors_name_the_revision_or_the_path() {
    let upstream = Upstream::new();
    upstream.commit("main", &[("users.yaml", b"v1\n")], "one", T1);

    let err = read_at(upstream.path(), "no-such-rev", "users.yaml").expect_err("bad rev");
    assert!(
        matches!(err, SourceError::RevisionNotFound { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("`no-such-rev`"), "{err}");

    let err = read_at(upstream.path(), "HEAD", "admins/users.yaml").expect_err("bad path");
    assert!(matches!(err, SourceError::PathNotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("admins/users.yaml") && message.contains("HEAD"),
        "{message}"
    );

    let not_a_repo = TempDir::new().expect("temp dir");
    let err = read_at(not_a_repo.path(), "HEAD", "users.yaml").expect_err("not a repo");
    assert!(matches!(err, SourceError::RepositoryOpen { .. }), "{err:?}");
}

/// Waits for the next change, or fails the test after [`PATIENCE`].
async fn next_change(
    rx: &mut tokio::sync::mpsc::Receiver<guestops::desired::source::FileChange>,
) -> guestops::desired::source::FileChange {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a change within the patience window")
        .expect("the watch is still running")
}

/// Replaces `path` the way many editors save: write a temporary file, rename it over.
fn editor_save(path: &Path, content: &[u8]) {
    let tmp: PathBuf = path.with_extension("yaml.swp");
    std::fs::write(&tmp, content).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename over");
}

#[tokio::test]
async fn an_editor_style_replace_is_reported_once() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("users.yaml");
    std::fs::write(&path, b"before\n").expect("write");
    let (watch, mut rx) = watch_file(path.clone(), Duration::from_millis(100)).expect("watch");
    assert_eq!(
        watch.baseline().map(|b| b.bytes.clone()),
        Some(b"before\n".to_vec())
    );

    editor_save(&path, b"after\n");

    let change = next_change(&mut rx).await;
    assert_eq!(change.bytes, b"after\n");
    assert_eq!(change.hash, content_hash(b"after\n"));
    // Nothing else arrives for the same edit (a bounded wait; a slow machine only makes this
    // check weaker, never wrong).
    let extra = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(extra.is_err(), "one edit, one change: {extra:?}");
}

#[tokio::test]
async fn rewriting_identical_content_reports_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("users.yaml");
    std::fs::write(&path, b"same\n").expect("write");
    let (_watch, mut rx) = watch_file(path.clone(), Duration::from_millis(100)).expect("watch");

    editor_save(&path, b"same\n");
    std::fs::write(&path, b"same\n").expect("rewrite in place");
    std::fs::write(dir.path().join("other.yaml"), b"unrelated\n").expect("other file");
    // A real change after the identical rewrites: it must be the first thing received.
    tokio::time::sleep(Duration::from_millis(500)).await;
    editor_save(&path, b"different\n");

    let change = next_change(&mut rx).await;
    assert_eq!(
        change.bytes, b"different\n",
        "identical rewrites reported nothing"
    );
}

#[tokio::test]
async fn dropping_the_watch_closes_the_receiver() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("users.yaml");
    std::fs::write(&path, b"x\n").expect("write");
    let (watch, mut rx) = watch_file(path, Duration::from_millis(50)).expect("watch");

    drop(watch);

    let end = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("closed within the patience window");
    assert!(end.is_none(), "no change after the watch stopped");
}

#[test]
fn revisions_serialize_for_state_and_audit() {
    let rev = Revision {
        id: "0123456789abcdef0123456789abcdef01234567".into(),
        short: "0123456".into(),
        author: "Ana Silva <ana@partner.example>".into(),
        time: at(T1),
        subject: "Grant Ana admin".into(),
    };
    let json = serde_json::to_value(&rev).expect("serialize");
    assert_eq!(json["author"], "Ana Silva <ana@partner.example>");
    assert_eq!(json["time"], "2026-01-01T00:00:00Z");
}

/// A loopback HTTP server that refuses every request with `401` and records the
/// `Authorization` headers it was sent.
async fn refusing_git_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::http::{HeaderMap, StatusCode, header};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            if let Some(value) = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
            {
                record.lock().expect("lock").push(value.to_owned());
            }
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
                "",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/org/admins.git"), seen)
}

fn http_source(url: String, credential_file: Option<PathBuf>, mirror: &TempDir) -> GitSource {
    GitSource::new(
        GitSettings {
            repo: url,
            branch: "main".into(),
            path: "users.yaml".into(),
            credential_file,
        },
        mirror.path().join("source.git"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_token_is_sent_as_x_access_token_and_a_refusal_is_an_auth_error() {
    let (url, seen) = refusing_git_server().await;
    let secrets = TempDir::new().expect("temp dir");
    let token_file = secrets.path().join("git-token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write token");
    let mirror = TempDir::new().expect("temp dir");
    let source = http_source(url, Some(token_file), &mirror);

    let err = source
        .fetch()
        .await
        .expect_err("the server refuses everyone");

    assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("source.credentialFile"), "{err}");
    let seen = seen.lock().expect("lock").clone();
    // base64("x-access-token:s3cret-token"), with the trailing newline of the file trimmed.
    assert!(
        seen.contains(&"Basic eC1hY2Nlc3MtdG9rZW46czNjcmV0LXRva2Vu".to_owned()),
        "{seen:?}"
    );
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cret-token"), "the token leaked: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_asking_for_credentials_without_any_is_an_auth_error() {
    let (url, seen) = refusing_git_server().await;
    let mirror = TempDir::new().expect("temp dir");
    let source = http_source(url, None, &mirror);

    let err = source.fetch().await.expect_err("credentials needed");

    assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
    assert!(seen.lock().expect("lock").is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_credential_file_is_named() {
    let (url, _seen) = refusing_git_server().await;
    let mirror = TempDir::new().expect("temp dir");
    let missing = mirror.path().join("no-such-token");
    let source = http_source(url, Some(missing.clone()), &mirror);

    let err = source.fetch().await.expect_err("token file missing");

    assert!(matches!(err, SourceError::CredentialFile { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-token"), "{err}");
}

#[tokio::test]
async fn a_closed_port_is_unreachable_not_an_auth_error() {
    // Bind then drop a listener: the port is very likely closed afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    for scheme in ["http", "https"] {
        let mirror = TempDir::new().expect("temp dir");
        let source = http_source(
            format!("{scheme}://127.0.0.1:{port}/repo.git"),
            None,
            &mirror,
        );

        let err = source.fetch().await.expect_err("nobody listens");

        assert!(matches!(err, SourceError::Unreachable { .. }), "{err:?}");
        // The transport tried to connect: HTTPS is supported without OpenSSL.
        assert!(!format!("{err:?}").contains("unsupported"), "{err:?}");
    }
}

/// A loopback smart-HTTP git server for `repo` (the real `git upload-pack`), at
/// `/org/admins.git` and, redirecting there, `/old/admins.git`; it answers 401 to any request
/// without `x-access-token:s3cret-token` and records the `Authorization` headers it was sent.
async fn smart_http_git_server(
    repo: PathBuf,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Redirect, Response};
    use axum::routing::{get, post};

    async fn upload_pack(repo: &Path, advertise: bool, input: Bytes) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        let mut command = tokio::process::Command::new("git");
        command.arg("upload-pack").arg("--stateless-rpc");
        if advertise {
            command.arg("--advertise-refs");
        }
        let mut child = command
            .arg(repo)
            .env_remove("GIT_PROTOCOL")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run git upload-pack");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&input)
            .await
            .expect("request to upload-pack");
        drop(stdin);
        let output = child.wait_with_output().await.expect("upload-pack output");
        assert!(output.status.success(), "git upload-pack failed");
        output.stdout
    }

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let authorized = {
        let seen = seen.clone();
        move |headers: &HeaderMap| {
            let value = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(value) = &value {
                seen.lock().expect("lock").push(value.clone());
            }
            // base64("x-access-token:s3cret-token")
            value.as_deref() == Some("Basic eC1hY2Nlc3MtdG9rZW46czNjcmV0LXRva2Vu")
        }
    };
    let refuse = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
        )
            .into_response()
    };
    let info_refs = {
        let (repo, authorized) = (repo.clone(), authorized.clone());
        move |headers: HeaderMap| async move {
            if !authorized(&headers) {
                return refuse();
            }
            let service = b"# service=git-upload-pack\n";
            let mut body = format!("{:04x}", service.len() + 4).into_bytes();
            body.extend_from_slice(service);
            body.extend_from_slice(b"0000");
            body.extend(upload_pack(&repo, true, Bytes::new()).await);
            let content_type = "application/x-git-upload-pack-advertisement";
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
    };
    let pack = move |headers: HeaderMap, input: Bytes| async move {
        if !authorized(&headers) {
            return refuse();
        }
        let body = upload_pack(&repo, false, input).await;
        let content_type = "application/x-git-upload-pack-result";
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let app = axum::Router::new()
        .route("/org/admins.git/info/refs", get(info_refs))
        .route("/org/admins.git/git-upload-pack", post(pack))
        .route(
            "/old/admins.git/info/refs",
            get(|| async {
                Redirect::permanent("/org/admins.git/info/refs?service=git-upload-pack")
                    .into_response()
            }),
        )
        .fallback(|| async { Response::new(axum::body::Body::empty()) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/old/admins.git"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_repository_is_fetched_with_the_token_after_a_401_and_a_redirect() {
    let upstream = Upstream::new();
    let first = upstream.commit("main", &[("users.yaml", b"v1\n")], "Grant Ana", T1);
    let (url, seen) = smart_http_git_server(upstream.path().to_path_buf()).await;
    let secrets = TempDir::new().expect("temp dir");
    let token_file = secrets.path().join("git-token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write token");
    let mirror = TempDir::new().expect("temp dir");
    let source = http_source(url, Some(token_file), &mirror);

    let rev = source.fetch().await.expect("fetch over smart HTTP");
    assert_eq!(rev.id, first.to_string());
    assert_eq!(source.read(&rev).await.expect("read"), b"v1\n");

    // An incremental fetch: the mirror has the first commit and negotiates from it.
    let second = upstream.commit("main", &[("users.yaml", b"v2\n")], "Grant Bo", T2);
    let rev = source.fetch().await.expect("second fetch");
    assert_eq!(rev.id, second.to_string());
    assert_eq!(source.read(&rev).await.expect("read"), b"v2\n");

    // Nothing was sent before the server asked; afterwards only the token.
    let seen = seen.lock().expect("lock").clone();
    assert!(!seen.is_empty(), "the token was sent");
    assert!(
        seen.iter()
            .all(|v| v == "Basic eC1hY2Nlc3MtdG9rZW46czNjcmV0LXRva2Vu"),
        "{seen:?}"
    );
}

// --- Signed commits (`source.verify`, issue 9 item 5) ---------------------------------------

mod support;

use guestops::desired::source::{DesiredSource as _, Refusal, VerifyMode, VerifyPolicy};

/// Both trust files of `tests/fixtures/signing/`.
fn trusting_fixture_keys() -> VerifyPolicy {
    VerifyPolicy {
        mode: VerifyMode::Head,
        allowed_signers_file: Some(support::signing_fixture("allowed_signers")),
        keyring_file: Some(support::signing_fixture("keyring.asc")),
    }
}

/// Plants `raw` as the tip of `main` of a fresh upstream and loads it through a verifying
/// source: the bytes of `users.yaml`, or why the commit is refused.
async fn load_signed(raw: &[u8], policy: VerifyPolicy) -> (String, Result<Vec<u8>, SourceError>) {
    let upstream = Upstream::new();
    let id = support::plant_commit_bytes(upstream.path(), "main", raw);
    let mirror = TempDir::new().expect("temp dir");
    let source = upstream.source(&mirror, "main").with_verify(policy);
    let loaded = source.load().await.map(|(revision, bytes)| {
        assert_eq!(revision.id, id);
        bytes
    });
    (id, loaded)
}

fn fixture_commit(name: &str) -> Vec<u8> {
    std::fs::read(support::signing_fixture(&format!("{name}.commit"))).expect("fixture commit")
}

/// The refusal of a commit, checking that the error names the commit.
fn refusal(id: &str, result: Result<Vec<u8>, SourceError>) -> Refusal {
    match result {
        Err(err @ SourceError::Unverified { .. }) => {
            let message = err.to_string();
            assert!(message.contains(id), "names the commit: {message}");
            let SourceError::Unverified { revision, refusal } = err else {
                unreachable!()
            };
            assert_eq!(revision.id, id);
            *refusal
        }
        other => panic!("expected a refused commit, got {other:?}"),
    }
}

#[tokio::test]
async fn ssh_signed_commits_of_allowed_signers_are_loaded() {
    let users = std::fs::read(support::signing_fixture("users.yaml")).expect("users.yaml");
    // ed25519 with namespaces="git", RSA with two principals, ECDSA with a past valid-after.
    for name in ["ssh-ana", "ssh-rui", "ssh-eva"] {
        let (_, loaded) = load_signed(&fixture_commit(name), trusting_fixture_keys()).await;
        assert_eq!(loaded.unwrap_or_else(|e| panic!("{name}: {e}")), users);
    }
}

#[tokio::test]
async fn an_unsigned_commit_is_refused_and_never_read() {
    let (id, loaded) = load_signed(&fixture_commit("unsigned"), trusting_fixture_keys()).await;
    assert_eq!(refusal(&id, loaded), Refusal::Unsigned);
    // Mode `none` (the default) loads the same commit: today's behaviour.
    let (_, loaded) = load_signed(&fixture_commit("unsigned"), VerifyPolicy::default()).await;
    assert!(loaded.is_ok(), "{loaded:?}");
}

#[tokio::test]
async fn an_unknown_ssh_key_is_refused_naming_its_fingerprint() {
    let (id, loaded) = load_signed(&fixture_commit("ssh-mallory"), trusting_fixture_keys()).await;
    let fingerprint = std::fs::read_to_string(support::signing_fixture("mallory.fingerprint"))
        .expect("fingerprint");
    let refused = refusal(&id, loaded);
    assert!(
        matches!(&refused, Refusal::UnknownKey { signer, .. }
            if signer.fingerprint == fingerprint.trim() && signer.principal.is_none()),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains(fingerprint.trim()),
        "{refused}"
    );
}

#[tokio::test]
async fn a_tampered_commit_is_refused() {
    let raw = String::from_utf8(fixture_commit("ssh-ana")).expect("utf-8");
    // The same signature over another author: what a forger who copies a signature gets.
    let tampered = raw.replace("author Ana Silva", "author Mallory Evil");
    assert_ne!(tampered, raw);
    let (id, loaded) = load_signed(tampered.as_bytes(), trusting_fixture_keys()).await;
    let refused = refusal(&id, loaded);
    assert!(
        matches!(&refused, Refusal::BadSignature { signer }
            if signer.principal.as_deref() == Some("ana@partner.example")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn signers_outside_their_namespaces_or_validity_are_refused() {
    let (id, loaded) = load_signed(&fixture_commit("ssh-caio"), trusting_fixture_keys()).await;
    let refused = refusal(&id, loaded);
    assert!(
        matches!(&refused, Refusal::NamespaceNotAllowed { namespaces, .. } if namespaces == "file,ssh-*"),
        "{refused:?}"
    );
    let (id, loaded) = load_signed(&fixture_commit("ssh-bea"), trusting_fixture_keys()).await;
    let refused = refusal(&id, loaded);
    assert!(
        matches!(&refused, Refusal::OutsideValidity { signer, window }
            if signer.principal.as_deref() == Some("bea@partner.example") && window.contains("before 2020-01-01")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_ssh_signature_without_allowed_signers_file_is_refused() {
    let policy = VerifyPolicy {
        allowed_signers_file: None,
        ..trusting_fixture_keys()
    };
    let (id, loaded) = load_signed(&fixture_commit("ssh-ana"), policy).await;
    assert!(
        matches!(
            refusal(&id, loaded),
            Refusal::NoTrustFile { kind: "ssh", .. }
        ),
        "an SSH signature is not checked against the OpenPGP keyring"
    );
}

#[tokio::test]
async fn a_malformed_allowed_signers_file_is_an_error_naming_the_line() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("allowed_signers");
    std::fs::write(&file, "ana@partner.example restrict ssh-ed25519 AAAA\n").expect("write");
    let policy = VerifyPolicy {
        allowed_signers_file: Some(file.clone()),
        ..trusting_fixture_keys()
    };
    let (_, loaded) = load_signed(&fixture_commit("ssh-ana"), policy).await;
    let err = loaded.expect_err("a bad trust file is an error");
    assert!(matches!(err, SourceError::Verify { .. }), "{err:?}");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(chain.contains(&format!("{}:1", file.display())), "{chain}");
}

#[cfg(feature = "openpgp")]
#[tokio::test]
async fn openpgp_signed_commits_of_keyring_keys_are_loaded() {
    let users = std::fs::read(support::signing_fixture("users.yaml")).expect("users.yaml");
    // An ed25519 key and an RSA key, both exported armored into keyring.asc.
    for name in ["pgp-ana", "pgp-rui"] {
        let (_, loaded) = load_signed(&fixture_commit(name), trusting_fixture_keys()).await;
        assert_eq!(loaded.unwrap_or_else(|e| panic!("{name}: {e}")), users);
    }
}

#[cfg(feature = "openpgp")]
#[tokio::test]
async fn an_openpgp_key_outside_the_keyring_is_refused_naming_its_fingerprint() {
    let (id, loaded) = load_signed(&fixture_commit("pgp-mallory"), trusting_fixture_keys()).await;
    let fingerprint = std::fs::read_to_string(support::signing_fixture("mallory.pgp-fingerprint"))
        .expect("fingerprint");
    let refused = refusal(&id, loaded);
    assert!(
        matches!(&refused, Refusal::UnknownKey { signer, .. }
            if signer.kind == "openpgp" && signer.fingerprint == fingerprint.trim()),
        "{refused:?}"
    );
}

#[cfg(feature = "openpgp")]
#[tokio::test]
async fn a_tampered_openpgp_signed_commit_is_refused_and_a_binary_keyring_works() {
    let raw = String::from_utf8(fixture_commit("pgp-ana")).expect("utf-8");
    let tampered = raw.replace("users: pgp-ana", "users: pgp-ana, and more");
    let (id, loaded) = load_signed(tampered.as_bytes(), trusting_fixture_keys()).await;
    let refused = refusal(&id, loaded);
    assert!(
        matches!(&refused, Refusal::BadSignature { signer }
            if signer.principal.as_deref() == Some("Ana Silva <ana@partner.example>")),
        "{refused:?}"
    );
    // The same keys unarmored (`gpg --export` without --armor).
    let dir = TempDir::new().expect("temp dir");
    let binary = dir.path().join("keyring.gpg");
    let armored =
        std::fs::read_to_string(support::signing_fixture("keyring.asc")).expect("keyring");
    let body: String = armored
        .lines()
        .skip_while(|l| !l.is_empty())
        .skip(1)
        .take_while(|l| !l.starts_with('=') && !l.starts_with("-----"))
        .collect();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64 body");
    std::fs::write(&binary, bytes).expect("write");
    let policy = VerifyPolicy {
        keyring_file: Some(binary),
        ..trusting_fixture_keys()
    };
    let (_, loaded) = load_signed(&fixture_commit("pgp-rui"), policy).await;
    assert!(loaded.is_ok(), "{loaded:?}");
}

#[cfg(feature = "openpgp")]
#[tokio::test]
async fn an_expired_openpgp_key_is_refused_though_it_is_in_the_keyring() {
    let (id, loaded) = load_signed(&fixture_commit("pgp-expired"), trusting_fixture_keys()).await;
    let refused = refusal(&id, loaded);
    assert!(
        matches!(&refused, Refusal::KeyNotUsable { signer, reason }
            if signer.principal.as_deref() == Some("Old Key <old@partner.example>")
                && reason.contains("expired")),
        "{refused:?}"
    );
}
