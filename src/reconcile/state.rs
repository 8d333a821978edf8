//! guestops' own state (design §8): `state.json` (ownership and per-user progress),
//! `audit.jsonl` (one line per remote write) and the instance lock, all under `state.dir`.
//!
//! - [`StateStore::open`] creates the directory (mode `0700`), takes an exclusive lock on
//!   `dir/lock` (a second instance is refused with [`StateError::Locked`]) and loads
//!   `state.json`. A corrupt file, or one written by a newer guestops, is an error and is never
//!   overwritten.
//! - [`StateStore::save`] writes `state.json.tmp`, fsyncs it, renames it over `state.json` and
//!   fsyncs the directory, so a crash leaves either the old or the new state, never a mix; then
//!   it empties the journal (compaction).
//! - Between two saves, each change is one line appended to `journal.jsonl`
//!   ([`crate::reconcile::journal`]: write-ahead intents and outcomes, O(1) per change);
//!   [`StateStore::open`] and [`StateStore::read_only`] replay it over `state.json`, and `open`
//!   compacts it when it holds anything (a crashed run).
//! - A save that fails (a full disk, `ENOSPC`) leaves the previous files intact: the temp file
//!   is removed, a half-appended journal or audit line is cut off again.
//! - [`StateStore::append_audit`] appends one JSON line to `audit.jsonl` and fsyncs it.
//! - [`StateStore::read_only`] loads the state without the lock, for `plan` and `status`.
//!
//! The records themselves ([`State`], [`UserRecord`]) are the plan's data, defined in
//! [`crate::reconcile::plan::owned`]; this module persists them and owns the files.
//!
//! Nothing here holds a secret: records carry ids, addresses and timestamps only.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::reconcile::journal::{self, WriteKind};
use crate::reconcile::plan::System;
pub use crate::reconcile::plan::owned::{AppliedRevision, STATE_VERSION, State, UserRecord};

/// File name of the state inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// File name of the temporary state written before the rename.
pub const STATE_TMP_FILE: &str = "state.json.tmp";

/// File name of the audit log inside the state directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// File name of the instance lock inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// Who holds the instance lock, as written into the lock file by [`StateStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Process id of the holder.
    pub pid: u32,
    /// When the holder started (took the lock).
    pub started: DateTime<Utc>,
}

impl LockHolder {
    /// The lock file's content: `pid=<pid>` and `started=<RFC 3339>` lines.
    fn to_file(&self) -> String {
        format!(
            "pid={}\nstarted={}\n",
            self.pid,
            self.started
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }

    /// Reads what [`LockHolder::to_file`] wrote; `None` for anything else (an empty file, a
    /// lock of an older guestops).
    fn from_file(text: &str) -> Option<LockHolder> {
        let (mut pid, mut started) = (None, None);
        for line in text.lines() {
            match line.trim().split_once('=') {
                Some(("pid", value)) => pid = value.trim().parse().ok(),
                Some(("started", value)) => {
                    started = DateTime::parse_from_rfc3339(value.trim())
                        .ok()
                        .map(|t| t.with_timezone(&Utc));
                }
                _ => {}
            }
        }
        Some(LockHolder {
            pid: pid?,
            started: started?,
        })
    }
}

/// How [`StateError::Locked`] names the holder.
fn describe_holder(holder: Option<&LockHolder>) -> String {
    match holder {
        Some(h) => format!(
            "pid {}, started {}",
            h.pid,
            h.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => "its pid is not recorded in the lock file".to_owned(),
    }
}

/// The outcome of one audited operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    /// The write happened (or was confirmed by re-observation after an ambiguous error).
    Ok,
    /// The write failed.
    Error,
    /// No write was needed after re-observation (e.g. the guest already existed and was adopted).
    Skipped,
}

/// One line of `audit.jsonl`: one remote write, or one ownership change, of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When the operation finished.
    pub time: DateTime<Utc>,
    /// The desired-state revision being applied (commit id or file hash).
    pub revision: Option<String>,
    /// Author of that revision (commit author), when known.
    pub author: Option<String>,
    /// The action's stable name, e.g. `invite` ([`crate::reconcile::plan::Action::name`]).
    pub action: String,
    /// The system written to.
    pub system: System,
    /// The user's email, as written in `users.yaml` (or as observed, for removals).
    pub user: String,
    /// What happened.
    pub result: AuditResult,
    /// Human detail: the error, or what re-observation found. Never a secret.
    pub detail: Option<String>,
    /// The remote request id (Graph `request-id`), when one was returned.
    pub request_id: Option<String>,
}

/// A failure to read, write or lock the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created or opened.
    #[error(
        "cannot create the state directory {}: {source}; create it or set `state.dir` to a writable directory",
        dir.display()
    )]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "another guestops ({}) holds the state directory {} (lock file {}); wait for it to finish, or stop it if it is a daemon or a hung apply, then try again",
        describe_holder(holder.as_ref()),
        dir.display(),
        dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder, as its lock file names it (`None` when it names none).
        holder: Option<LockHolder>,
    },
    /// The lock file could not be opened or locked for another reason.
    #[error("cannot lock {}: {source}; check the permissions of the state directory", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A state file could not be read.
    #[error("cannot read {}: {source}; check its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `state.json` is not valid JSON of the expected shape.
    #[error(
        "{} is corrupt ({source}); it was left untouched: restore it from a backup, or move it away to let guestops re-adopt users by matching (removals wait until ownership is known again)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// `state.json` was written by a newer guestops.
    #[error(
        "{} has schema version {found}, newer than the {supported} this guestops understands; it was left untouched: upgrade guestops",
        path.display()
    )]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// [`STATE_VERSION`].
        supported: u32,
    },
    /// A line of `audit.jsonl` is not a valid record.
    #[error(
        "line {line} of {} is not a valid audit record ({source}); the file is append-only: inspect and repair that line by hand",
        path.display()
    )]
    AuditLine {
        /// The audit log.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A line of `journal.jsonl` is not a valid entry (a torn last line is not this: it is
    /// ignored).
    #[error(
        "line {line} of {} is not a valid journal entry ({source}); it was left untouched: inspect it, or move the journal away to let the next reconcile re-observe (unrecorded invitations may then be sent again)",
        path.display()
    )]
    JournalLine {
        /// The journal.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A state file could not be written.
    #[error("cannot write {}: {source}; check free space and permissions of the state directory", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The state directory, locked for this process while the value lives.
///
/// Dropping it releases the lock.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    /// Held for the lock; released on drop.
    _lock: File,
    state: State,
    audit: Option<File>,
    journal: Option<File>,
}

impl StateStore {
    /// Opens the state directory `dir` for writing: creates it (mode `0700`) if missing, takes
    /// the instance lock (and writes this process's [`LockHolder`] into the lock file) and
    /// loads `state.json` (missing → an empty [`State`]).
    ///
    /// Fails with [`StateError::Locked`] when another guestops holds the directory, and with
    /// [`StateError::Corrupt`] / [`StateError::NewerVersion`] when `state.json` cannot be used
    /// (the file is left untouched).
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        create_dir(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| StateError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|text| LockHolder::from_file(&text));
                return Err(StateError::Locked {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StateError::Lock {
                    path: lock_path,
                    source,
                });
            }
        }
        let holder = LockHolder {
            pid: std::process::id(),
            started: Utc::now(),
        };
        write_holder(&lock, &holder).map_err(|source| StateError::Lock {
            path: lock_path.clone(),
            source,
        })?;
        let (state, pending) = load_with_journal(dir)?;
        let mut store = StateStore {
            dir: dir.to_path_buf(),
            _lock: lock,
            state,
            audit: None,
            journal: None,
        };
        if pending {
            // A run ended without compacting (a crash): fold the journal into state.json.
            store.save()?;
        }
        Ok(store)
    }

    /// Loads the state of `dir` (`state.json` and the journal replayed over it) without
    /// taking the lock (for `plan` and `status`). A missing directory or file gives an empty
    /// [`State`]; nothing is created or written.
    pub fn read_only(dir: &Path) -> Result<State, StateError> {
        load_with_journal(dir).map(|(state, _)| state)
    }

    /// Whether `dir` holds a `state.json` (an unreadable directory counts as holding one: the
    /// read that follows reports the problem).
    pub fn exists(dir: &Path) -> bool {
        dir.join(STATE_FILE).try_exists().unwrap_or(true)
    }

    /// A warning for a state directory without `state.json`, naming the folder as an absolute
    /// path; `None` when there is a state. Without state guestops owns nothing, adopts by
    /// matching and removes nothing, which is right on a first run and wrong when `state.dir`
    /// points at the wrong folder.
    pub fn warn_if_new(dir: &Path) -> Option<String> {
        if StateStore::exists(dir) {
            return None;
        }
        let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Some(format!(
            "no {STATE_FILE} in {} yet: guestops owns nothing there (normal on a first run); if guestops ran before, check `state.dir` (a relative path is relative to the config file's folder)",
            shown.display()
        ))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state as loaded or last modified (not necessarily saved).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state, for modification; call [`StateStore::save`] afterwards.
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Modifies the state with `f`, then saves it.
    pub fn update<R>(&mut self, f: impl FnOnce(&mut State) -> R) -> Result<R, StateError> {
        let out = f(&mut self.state);
        self.save()?;
        Ok(out)
    }

    /// Writes `state.json` atomically (temp file, fsync, rename, fsync of the directory), then
    /// empties the journal, whose lines it now holds (compaction).
    pub fn save(&mut self) -> Result<(), StateError> {
        let bytes = self.snapshot()?;
        write_snapshot(&self.dir, &bytes)?;
        self.truncate_journal()
    }

    /// Empties the journal if there is one.
    fn truncate_journal(&mut self) -> Result<(), StateError> {
        if self.journal.is_none() && !self.dir.join(journal::JOURNAL_FILE).exists() {
            return Ok(());
        }
        let file = open_journal(&mut self.journal, &self.dir)?;
        journal::truncate(&self.dir, file)
    }

    /// An owned handle on the journal (for writing from a blocking task).
    pub(crate) fn journal_handle(&mut self) -> Result<File, StateError> {
        let path = self.dir.join(journal::JOURNAL_FILE);
        open_journal(&mut self.journal, &self.dir)?
            .try_clone()
            .map_err(|source| StateError::Write { path, source })
    }

    /// Appends `record` as one line of `audit.jsonl`, then flushes and fsyncs it.
    pub fn append_audit(&mut self, record: &AuditRecord) -> Result<(), StateError> {
        let file = open_audit(&mut self.audit, &self.dir)?;
        append_audit_line(&self.dir, file, record)
    }

    /// The serialized state, as [`StateStore::save`] would write it.
    pub(crate) fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        let mut bytes =
            serde_json::to_vec_pretty(&self.state).map_err(|source| StateError::Write {
                path: self.dir.join(STATE_FILE),
                source: io::Error::other(source),
            })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// An owned handle on the audit log (for writing from a blocking task).
    pub(crate) fn audit_handle(&mut self) -> Result<File, StateError> {
        let path = self.dir.join(AUDIT_FILE);
        open_audit(&mut self.audit, &self.dir)?
            .try_clone()
            .map_err(|source| StateError::Write { path, source })
    }
}

/// Replaces the content of the (locked) lock file by `holder`.
fn write_holder(mut file: &File, holder: &LockHolder) -> io::Result<()> {
    use std::io::Seek as _;
    file.set_len(0)?;
    file.seek(io::SeekFrom::Start(0))?;
    file.write_all(holder.to_file().as_bytes())?;
    file.flush()
}

/// The journal of `dir`, opened for appending on first use and kept in `slot`.
fn open_journal<'f>(slot: &'f mut Option<File>, dir: &Path) -> Result<&'f File, StateError> {
    let file = match slot.take() {
        Some(file) => file,
        None => journal::open(dir)?,
    };
    Ok(slot.insert(file))
}

/// The audit log of `dir`, opened for appending on first use and kept in `slot`.
fn open_audit<'f>(slot: &'f mut Option<File>, dir: &Path) -> Result<&'f File, StateError> {
    let file = match slot.take() {
        Some(file) => file,
        None => {
            let path = dir.join(AUDIT_FILE);
            private_options()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|source| StateError::Write { path, source })?
        }
    };
    Ok(slot.insert(file))
}

/// Reads every record of `dir/audit.jsonl` (missing file → none). A last line without its
/// newline (being written, or cut off by a crash) is skipped; any other bad line is
/// [`StateError::AuditLine`] ([`crate::reconcile::history::read`] also tells the skipped line).
pub fn read_audit(dir: &Path) -> Result<Vec<AuditRecord>, StateError> {
    crate::reconcile::history::read(dir, &crate::reconcile::history::Filter::default())
        .map(|log| log.records)
}

/// Writes `bytes` as `dir/state.json` atomically (temp file, fsync, rename, directory fsync).
/// The temp file is removed if anything fails before the rename.
pub(crate) fn write_snapshot(dir: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = dir.join(STATE_TMP_FILE);
    let target = dir.join(STATE_FILE);
    let written = (|| -> io::Result<()> {
        let file = private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        journal::write_all(WriteKind::State, dir, &file, bytes)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(StateError::Write { path: tmp, source });
    }
    if let Err(source) = std::fs::rename(&tmp, &target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(StateError::Write {
            path: target,
            source,
        });
    }
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Appends one JSON line for `record` to `file` (opened in append mode), flushes and fsyncs.
pub(crate) fn append_audit_line(
    dir: &Path,
    file: &File,
    record: &AuditRecord,
) -> Result<(), StateError> {
    let path = dir.join(AUDIT_FILE);
    let mut line = serde_json::to_vec(record).map_err(|source| StateError::Write {
        path: path.clone(),
        source: io::Error::other(source),
    })?;
    line.push(b'\n');
    // One write call per line: appends of whole lines do not interleave; a failed one is cut
    // off again.
    journal::append_line(WriteKind::Audit, dir, file, &line)
        .map_err(|source| StateError::Write { path, source })
}

/// `state.json` with the journal replayed over it, and whether the journal holds anything
/// (then [`StateStore::open`] compacts it).
fn load_with_journal(dir: &Path) -> Result<(State, bool), StateError> {
    let mut state = load(dir)?;
    journal::replay(dir, &mut state.users)?;
    let pending = std::fs::metadata(dir.join(journal::JOURNAL_FILE)).is_ok_and(|m| m.len() > 0);
    Ok((state, pending))
}

fn load(dir: &Path) -> Result<State, StateError> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    /// Only the version, read first so that a newer schema is reported as such.
    #[derive(Deserialize)]
    struct Probe {
        version: u32,
    }
    let probe: Probe = serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
        path: path.clone(),
        source,
    })?;
    if probe.version > STATE_VERSION {
        return Err(StateError::NewerVersion {
            path,
            found: probe.version,
            supported: STATE_VERSION,
        });
    }
    let mut state: State =
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })?;
    // An older schema is read as it is and written back as the current one.
    state.version = STATE_VERSION;
    Ok(state)
}

fn create_dir(dir: &Path) -> Result<(), StateError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| StateError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Options creating files readable by the owner only.
pub(crate) fn private_options() -> OpenOptions {
    #[allow(unused_mut)]
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(test)]
mod tests {

    #[test]
    fn recorded_guests_visible_to_a_read_are_noted_as_seen() {
        let mut state = State::default();
        for (key, id) in [("ana@x.example", "g-ana"), ("bob@x.example", "g-bob")] {
            state.users.insert(
                key.to_owned(),
                UserRecord {
                    email: key.to_owned(),
                    guest_id: Some(id.to_owned()),
                    guest_owned: true,
                    ..UserRecord::default()
                },
            );
        }
        let observed = crate::reconcile::plan::Observed {
            lookups: vec![crate::remote::graph::DirectoryUser {
                id: "g-ana".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(state.note_seen_guests(&observed));
        assert!(state.users["ana@x.example"].guest_seen);
        assert!(!state.users["bob@x.example"].guest_seen);
        assert!(
            !state.note_seen_guests(&observed),
            "nothing new the second time"
        );
    }

    use super::*;

    fn record(email: &str) -> UserRecord {
        UserRecord {
            email: email.to_owned(),
            guest_id: Some("g-1".to_owned()),
            guest_owned: true,
            ..UserRecord::default()
        }
    }

    #[test]
    fn second_open_is_refused_while_the_first_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let first = StateStore::open(&dir).unwrap();
        let err = StateStore::open(&dir).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("another guestops"), "{message}");
        assert!(message.contains(&dir.display().to_string()), "{message}");
        drop(first);
        StateStore::open(&dir).expect("the lock is released on drop");
    }

    #[test]
    fn the_lock_message_names_the_holder_and_no_other_state_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let before = Utc::now() - chrono::Duration::seconds(1);
        let _first = StateStore::open(tmp.path()).unwrap();
        let err = StateStore::open(tmp.path()).unwrap_err();
        let StateError::Locked { holder, .. } = &err else {
            panic!("expected Locked, got {err:?}");
        };
        let holder = holder.clone().expect("the lock file names its holder");
        assert_eq!(holder.pid, std::process::id());
        assert!(holder.started >= before, "{holder:?}");
        assert!(holder.started <= Utc::now(), "{holder:?}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains(
                &holder
                    .started
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            "{message}"
        );
        assert!(!message.contains("another `state.dir`"), "{message}");
        assert!(!message.contains("another state.dir"), "{message}");
    }

    #[test]
    fn a_lock_file_of_an_older_guestops_is_rewritten_and_read_leniently() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(LOCK_FILE),
            "some much longer leftover content\n",
        )
        .unwrap();
        let store = StateStore::open(tmp.path()).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        let holder = LockHolder::from_file(&text).expect("rewritten with the holder");
        assert_eq!(holder.pid, std::process::id());
        assert!(!text.contains("leftover"), "{text}");
        drop(store);
        assert_eq!(LockHolder::from_file(""), None);
        assert_eq!(LockHolder::from_file("pid=12\n"), None);
    }

    #[test]
    fn a_directory_without_state_gets_a_warning_naming_it_absolutely() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh");
        let warning = StateStore::warn_if_new(&dir).expect("no state.json yet");
        assert!(warning.contains(&dir.display().to_string()), "{warning}");
        assert!(!StateStore::exists(&dir));
        let mut store = StateStore::open(&dir).unwrap();
        assert!(
            StateStore::warn_if_new(&dir).is_some(),
            "opening alone writes no state"
        );
        store.save().unwrap();
        assert!(StateStore::exists(&dir));
        assert_eq!(StateStore::warn_if_new(&dir), None);
    }

    #[test]
    fn the_warning_names_a_relative_directory_as_an_absolute_path() {
        let warning = StateStore::warn_if_new(Path::new("no-such-guestops-state-dir"))
            .expect("no state there");
        let cwd = std::env::current_dir().unwrap();
        assert!(
            warning.contains(&cwd.join("no-such-guestops-state-dir").display().to_string()),
            "{warning}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let _store = StateStore::open(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn save_is_atomic_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(tmp.path()).unwrap();
        assert_eq!(store.state(), &State::default());
        store
            .update(|s| {
                s.revision = Some("abc".to_owned());
                s.users
                    .insert("a@x.example".to_owned(), record("A@x.example"));
            })
            .unwrap();
        assert!(!tmp.path().join(STATE_TMP_FILE).exists());
        let expected = store.state().clone();
        drop(store);
        assert_eq!(StateStore::read_only(tmp.path()).unwrap(), expected);
        assert_eq!(
            StateStore::open(tmp.path()).unwrap().state(),
            &expected,
            "reopening loads what was saved"
        );
    }

    #[test]
    fn corrupt_state_is_an_error_and_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(STATE_FILE);
        std::fs::write(&path, b"{\"version\": 1, \"users\": [").unwrap();
        let err = StateStore::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("state.json"), "{err}");
        assert!(matches!(
            StateStore::read_only(tmp.path()),
            Err(StateError::Corrupt { .. })
        ));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"version\": 1, \"users\": [",
            "the corrupt file is left as it was"
        );
    }

    #[test]
    fn newer_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let content = b"{\"version\": 99, \"users\": {\"x\": {\"shape\": \"unknown\"}}}";
        std::fs::write(tmp.path().join(STATE_FILE), content).unwrap();
        let err = StateStore::open(tmp.path()).unwrap_err();
        assert!(
            matches!(err, StateError::NewerVersion { found: 99, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("upgrade guestops"), "{err}");
        assert_eq!(std::fs::read(tmp.path().join(STATE_FILE)).unwrap(), content);
    }

    #[test]
    fn read_only_of_a_missing_dir_is_empty_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("missing");
        assert_eq!(StateStore::read_only(&dir).unwrap(), State::default());
        assert!(!dir.exists());
    }

    #[test]
    fn read_only_does_not_need_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(tmp.path()).unwrap();
        store
            .update(|s| s.revision = Some("r1".to_owned()))
            .unwrap();
        let state = StateStore::read_only(tmp.path()).unwrap();
        assert_eq!(state.revision.as_deref(), Some("r1"));
    }

    #[test]
    fn audit_lines_are_appended() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(tmp.path()).unwrap();
        let line = |user: &str, result| AuditRecord {
            time: DateTime::<Utc>::UNIX_EPOCH,
            revision: Some("r1".to_owned()),
            author: None,
            action: "invite".to_owned(),
            system: System::Tenant,
            user: user.to_owned(),
            result,
            detail: None,
            request_id: Some("req-1".to_owned()),
        };
        store
            .append_audit(&line("a@x.example", AuditResult::Ok))
            .unwrap();
        drop(store);
        let mut store = StateStore::open(tmp.path()).unwrap();
        store
            .append_audit(&line("b@x.example", AuditResult::Error))
            .unwrap();
        let records = read_audit(tmp.path()).unwrap();
        assert_eq!(
            records,
            vec![
                line("a@x.example", AuditResult::Ok),
                line("b@x.example", AuditResult::Error)
            ]
        );
        let text = std::fs::read_to_string(tmp.path().join(AUDIT_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("\"result\":\"error\""), "{text}");
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use crate::reconcile::journal::{self, Entry, JOURNAL_FILE, WriteKind};

    fn ana() -> UserRecord {
        UserRecord {
            email: "Ana@x.example".to_owned(),
            invitation_unconfirmed_at: Some(DateTime::<Utc>::UNIX_EPOCH),
            ..UserRecord::default()
        }
    }

    fn append(store: &mut StateStore, entry: &Entry) -> Result<(), StateError> {
        let file = store.journal_handle()?;
        journal::append(store.dir(), &file, entry)
    }

    fn intent(key: &str, record: UserRecord) -> Entry {
        Entry {
            key: key.to_owned(),
            intent: Some("invite".to_owned()),
            record: Some(record),
        }
    }

    #[test]
    fn a_journaled_intent_survives_a_crash_and_is_compacted_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(tmp.path()).unwrap();
        store.update(|s| s.revision = Some("r1".into())).unwrap();
        append(&mut store, &intent("ana@x.example", ana())).unwrap();
        // A crash: no compaction. Readers see the journal replayed.
        drop(store);
        let seen = StateStore::read_only(tmp.path()).unwrap();
        assert_eq!(seen.users["ana@x.example"], ana());
        assert_eq!(seen.revision.as_deref(), Some("r1"));
        let on_disk = std::fs::read_to_string(tmp.path().join(STATE_FILE)).unwrap();
        assert!(
            !on_disk.contains("ana@x.example"),
            "not compacted by a reader"
        );
        // Opening compacts: state.json holds the record, the journal is empty.
        let store = StateStore::open(tmp.path()).unwrap();
        assert_eq!(store.state().users["ana@x.example"], ana());
        let on_disk = std::fs::read_to_string(tmp.path().join(STATE_FILE)).unwrap();
        assert!(on_disk.contains("ana@x.example"), "{on_disk}");
        assert_eq!(
            std::fs::metadata(tmp.path().join(JOURNAL_FILE))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn an_outcome_replaces_the_intent_and_null_drops_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(tmp.path()).unwrap();
        append(&mut store, &intent("ana@x.example", ana())).unwrap();
        let owned = UserRecord {
            email: "Ana@x.example".to_owned(),
            guest_id: Some("g1".into()),
            guest_owned: true,
            ..UserRecord::default()
        };
        let outcome = Entry {
            key: "ana@x.example".into(),
            intent: None,
            record: Some(owned.clone()),
        };
        append(&mut store, &outcome).unwrap();
        append(&mut store, &intent("bob@x.example", ana())).unwrap();
        let dropped = Entry {
            key: "bob@x.example".into(),
            intent: None,
            record: None,
        };
        append(&mut store, &dropped).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 4, "one line per step: {text}");
        drop(store);
        let state = StateStore::read_only(tmp.path()).unwrap();
        assert_eq!(state.users.len(), 1);
        assert_eq!(state.users["ana@x.example"], owned);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_bad_complete_line_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(tmp.path()).unwrap();
        append(&mut store, &intent("ana@x.example", ana())).unwrap();
        drop(store);
        let path = tmp.path().join(JOURNAL_FILE);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"key\":\"bob@x.exa");
        std::fs::write(&path, &text).unwrap();
        let store = StateStore::open(tmp.path()).expect("a torn tail is not corruption");
        assert_eq!(store.state().users.len(), 1);
        drop(store);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "compacted");

        std::fs::write(&path, b"not json\n").unwrap();
        let err = StateStore::open(tmp.path()).unwrap_err();
        assert!(
            matches!(err, StateError::JournalLine { line: 1, .. }),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"not json\n",
            "left untouched"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_journal_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(tmp.path()).unwrap();
        append(&mut store, &intent("ana@x.example", ana())).unwrap();
        let mode = std::fs::metadata(tmp.path().join(JOURNAL_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_version_1_state_loads_and_is_written_back_as_the_current_version() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(STATE_FILE),
            br#"{"version":1,"revision":"r0","users":{"ana@x.example":{"email":"Ana@x.example","guestId":"g1","guestOwned":true}}}"#,
        )
        .unwrap();
        let mut store = StateStore::open(tmp.path()).unwrap();
        assert!(store.state().users["ana@x.example"].guest_owned);
        store.save().unwrap();
        let text = std::fs::read_to_string(tmp.path().join(STATE_FILE)).unwrap();
        assert!(
            text.contains(&format!("\"version\": {STATE_VERSION}")),
            "{text}"
        );
    }

    // Issue 9 item 9: a full disk during any save leaves the previous files intact.
    #[test]
    fn a_full_disk_leaves_state_journal_and_audit_as_they_were() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = StateStore::open(dir).unwrap();
        store
            .update(|s| s.revision = Some("before".into()))
            .unwrap();
        append(&mut store, &intent("ana@x.example", ana())).unwrap();
        let audit = AuditRecord {
            time: DateTime::<Utc>::UNIX_EPOCH,
            revision: None,
            author: None,
            action: "invite".into(),
            system: System::Tenant,
            user: "ana@x.example".into(),
            result: AuditResult::Ok,
            detail: None,
            request_id: None,
        };
        store.append_audit(&audit).unwrap();
        let files = |dir: &Path| {
            [STATE_FILE, JOURNAL_FILE, AUDIT_FILE].map(|f| std::fs::read(dir.join(f)).unwrap())
        };
        let before = files(dir);

        journal::inject_full_disk(dir, WriteKind::State);
        let err = store
            .update(|s| s.revision = Some("after".into()))
            .unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(!dir.join(STATE_TMP_FILE).exists(), "no temp file left");

        journal::clear_full_disk(dir);
        journal::inject_full_disk(dir, WriteKind::Journal);
        let err = append(&mut store, &intent("bob@x.example", ana())).unwrap_err();
        assert!(matches!(err, StateError::Write { .. }), "{err:?}");

        journal::clear_full_disk(dir);
        journal::inject_full_disk(dir, WriteKind::Audit);
        store.append_audit(&audit).unwrap_err();
        journal::clear_full_disk(dir);

        assert_eq!(
            files(dir),
            before,
            "every file as it was before the failed saves"
        );
        drop(store);
        let state = StateStore::read_only(dir).unwrap();
        assert_eq!(state.revision.as_deref(), Some("before"));
        assert_eq!(state.users["ana@x.example"], ana());
        assert_eq!(read_audit(dir).unwrap().len(), 1);
        // After space is freed, appends go on from a clean line boundary.
        let mut store = StateStore::open(dir).unwrap();
        append(&mut store, &intent("bob@x.example", ana())).unwrap();
        drop(store);
        assert_eq!(StateStore::read_only(dir).unwrap().users.len(), 2);
    }
}
