//! The write-ahead journal `journal.jsonl` beside `state.json` (design §8), the injectable
//! write seam of every save, and the debug-only failpoints of the kill matrix.
//!
//! **Format.** One JSON object per line, appended with one `write` and fsync'd before the
//! caller goes on: `{"key":"ana@partner.example","intent":"invite","record":{…}}`. `key` is
//! the normalized address, `record` the user's whole [`UserRecord`] after the step (`null`:
//! the record was dropped), `intent` names the write about to be sent (`invite`, `register`)
//! or is absent for an outcome. Replaying the lines in order over `state.json` gives the state:
//! each line replaces one record, so a replay is idempotent and O(1) per change.
//!
//! **Intents.** Before `POST /invitations` (and `POST /api/user`) the user's record is
//! journaled with `invitationUnconfirmedAt` (`registrationUnconfirmedAt`) set to now; after
//! the answer, the record as the outcome left it. A crash in between leaves the intent, which
//! the next reconcile resolves by observation within `tenant.replicationGrace`.
//!
//! **Compaction.** [`crate::reconcile::state::StateStore::save`] writes the whole state to
//! `state.json` atomically, then truncates the journal: at the end of every apply, when the
//! revision is recorded, and on open when the journal holds lines (a crashed run). A crash
//! between the rename and the truncation replays lines already in `state.json`: harmless.
//!
//! **Torn and bad lines.** A last line without its newline was never acknowledged (the
//! request it announced was never sent): it is ignored. A failed append is rolled back (the
//! file is truncated to its previous length), so a later append cannot follow half a line. A
//! complete line that is not an entry is corruption: reported, the file left untouched.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::reconcile::plan::owned::UserRecord;
use crate::reconcile::state::StateError;

/// File name of the journal inside the state directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Normalized address: the key of [`crate::reconcile::state::State::users`].
    pub key: String,
    /// The write about to be sent (`invite`, `register`); `None` for an outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// The whole record after this step; `None`: the record is dropped.
    pub record: Option<UserRecord>,
}

/// Which file a save writes (the write seam's selector).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `state.json` (through `state.json.tmp`).
    State,
    /// `journal.jsonl`.
    Journal,
    /// `audit.jsonl`.
    Audit,
}

impl WriteKind {
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    fn name(self) -> &'static str {
        match self {
            WriteKind::State => "state",
            WriteKind::Journal => "journal",
            WriteKind::Audit => "audit",
        }
    }
}

/// The write seam: every byte of `state.json`, the journal and the audit log goes through
/// here. In debug builds a full disk can be injected: `GUESTOPS_FAILPOINT=enospc-journal`
/// (or `enospc-state`, `enospc-audit`; comma-separated) in the environment, or
/// [`inject_full_disk`] in unit tests, makes the write store half of `bytes` and fail with
/// `ENOSPC`, as a disk filling up mid-write does.
pub(crate) fn write_all(
    kind: WriteKind,
    dir: &Path,
    mut file: &File,
    bytes: &[u8],
) -> io::Result<()> {
    if disk_full(kind, dir) {
        file.write_all(&bytes[..bytes.len() / 2])?;
        return Err(enospc());
    }
    file.write_all(bytes)
}

fn enospc() -> io::Error {
    #[cfg(unix)]
    {
        // ENOSPC on Linux and the BSDs.
        io::Error::from_raw_os_error(28)
    }
    #[cfg(not(unix))]
    {
        io::Error::from(io::ErrorKind::StorageFull)
    }
}

#[cfg(debug_assertions)]
fn disk_full(kind: WriteKind, dir: &Path) -> bool {
    let wanted = format!("enospc-{}", kind.name());
    if failpoint_set(&wanted) {
        return true;
    }
    #[cfg(test)]
    {
        let injected = injected().lock().unwrap_or_else(|e| e.into_inner());
        if injected.iter().any(|(d, k)| d == dir && *k == kind) {
            return true;
        }
    }
    let _ = dir;
    false
}

#[cfg(not(debug_assertions))]
fn disk_full(_: WriteKind, _: &Path) -> bool {
    false
}

#[cfg(test)]
fn injected() -> &'static std::sync::Mutex<Vec<(std::path::PathBuf, WriteKind)>> {
    static INJECTED: std::sync::OnceLock<std::sync::Mutex<Vec<(std::path::PathBuf, WriteKind)>>> =
        std::sync::OnceLock::new();
    INJECTED.get_or_init(Default::default)
}

/// Unit tests: writes of `kind` under `dir` fail with `ENOSPC` until [`clear_full_disk`].
#[cfg(test)]
pub(crate) fn inject_full_disk(dir: &Path, kind: WriteKind) {
    let mut injected = injected().lock().unwrap_or_else(|e| e.into_inner());
    injected.push((dir.to_path_buf(), kind));
}

/// Unit tests: writes under `dir` succeed again.
#[cfg(test)]
pub(crate) fn clear_full_disk(dir: &Path) {
    let mut injected = injected().lock().unwrap_or_else(|e| e.into_inner());
    injected.retain(|(d, _)| d != dir);
}

/// Whether the debug-only environment variable `GUESTOPS_FAILPOINT` names `name`.
#[cfg(debug_assertions)]
fn failpoint_set(name: &str) -> bool {
    std::env::var("GUESTOPS_FAILPOINT").is_ok_and(|v| v.split(',').any(|p| p.trim() == name))
}

/// A debug-only kill point of the kill matrix (`tests/e2e/kill.rs`): when
/// `GUESTOPS_FAILPOINT` names `name` (e.g. `after-invite`), says so on stderr and blocks this
/// thread for good, so the test can `SIGKILL` the process exactly there. Compiled out of
/// release builds.
pub(crate) fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if failpoint_set(name) {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "guestops: failpoint {name} reached");
        let _ = err.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Opens (creating, mode `0600`) the journal of `dir` for appending.
pub(crate) fn open(dir: &Path) -> Result<File, StateError> {
    let path = dir.join(JOURNAL_FILE);
    crate::reconcile::state::private_options()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|source| StateError::Write { path, source })
}

/// Appends `entry` as one line and fsyncs it; on failure the file is cut back to its length
/// before, so no half line stays behind.
pub(crate) fn append(dir: &Path, file: &File, entry: &Entry) -> Result<(), StateError> {
    let path = dir.join(JOURNAL_FILE);
    let mut line = serde_json::to_vec(entry).map_err(|source| StateError::Write {
        path: path.clone(),
        source: io::Error::other(source),
    })?;
    line.push(b'\n');
    append_line(WriteKind::Journal, dir, file, &line)
        .map_err(|source| StateError::Write { path, source })
}

/// Appends one whole line to an append-mode `file` and fsyncs it, or leaves the file as it was.
pub(crate) fn append_line(kind: WriteKind, dir: &Path, file: &File, line: &[u8]) -> io::Result<()> {
    let before = file.metadata()?.len();
    let written = write_all(kind, dir, file, line)
        .and_then(|()| {
            let mut f = file;
            f.flush()
        })
        .and_then(|()| file.sync_data());
    if let Err(err) = written {
        // Best effort: a disk that is full still lets a file shrink.
        let _ = file.set_len(before).and_then(|()| file.sync_data());
        return Err(err);
    }
    Ok(())
}

/// Empties the journal (after `state.json` holds everything) and fsyncs it.
pub(crate) fn truncate(dir: &Path, file: &File) -> Result<(), StateError> {
    file.set_len(0)
        .and_then(|()| file.sync_all())
        .map_err(|source| StateError::Write {
            path: dir.join(JOURNAL_FILE),
            source,
        })
}

/// Replays the journal of `dir` over `users`; returns how many lines it applied (missing
/// file → 0). A torn last line is ignored; a bad complete line is [`StateError::JournalLine`].
pub(crate) fn replay(
    dir: &Path,
    users: &mut BTreeMap<String, UserRecord>,
) -> Result<usize, StateError> {
    let path = dir.join(JOURNAL_FILE);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    // Everything after the last newline is a torn line: never acknowledged.
    let complete = match text.iter().rposition(|b| *b == b'\n') {
        Some(end) => &text[..=end],
        None => &text[..0],
    };
    let mut applied = 0;
    for (i, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let entry: Entry =
            serde_json::from_slice(line).map_err(|source| StateError::JournalLine {
                path: path.clone(),
                line: i + 1,
                source,
            })?;
        match entry.record {
            Some(record) => {
                users.insert(entry.key, record);
            }
            None => {
                users.remove(&entry.key);
            }
        }
        applied += 1;
    }
    Ok(applied)
}
