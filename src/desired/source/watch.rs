//! The file watch of `--desired FILE` mode: debounced, and reporting only real content changes.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{READ_LIMIT, SourceError};

/// Raw events buffered between the watcher thread and the debounce task. When it is full,
/// events are dropped: the ones already queued cause the same re-read.
const RAW_EVENTS: usize = 256;

/// A debounce window never stretches beyond this many debounce periods, so a file written
/// continuously is still read now and then.
const MAX_DEBOUNCE_PERIODS: u32 = 10;

/// New content of a watched file.
#[derive(Clone, PartialEq, Eq)]
pub struct FileChange {
    /// [`content_hash`] of `bytes`.
    pub hash: String,
    /// The content, at most [`READ_LIMIT`] bytes (a longer file is cut there, so that the
    /// parser reports it as too large).
    pub bytes: Vec<u8>,
}

impl FileChange {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            hash: content_hash(&bytes),
            bytes,
        }
    }
}

impl std::fmt::Debug for FileChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileChange")
            .field("hash", &self.hash)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The SHA-256 of `bytes` in lower-case hex: the revision of a desired state read from a file.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// A running watch of one file; dropping it stops the watch and closes the receiver.
pub struct FileWatch {
    path: PathBuf,
    baseline: Option<FileChange>,
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl FileWatch {
    /// The watched file (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The content when the watch started (`None` when the file could not be read then).
    ///
    /// Changes are reported relative to it; read it instead of reading the file separately so
    /// that no edit falls between the first read and the start of the watch.
    pub fn baseline(&self) -> Option<&FileChange> {
        self.baseline.as_ref()
    }
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch")
            .field("path", &self.path)
            .field("baseline", &self.baseline)
            .finish_non_exhaustive()
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `path` and sends its content each time it changes.
///
/// The parent directory is watched (not the file), so editors that write a temporary file and
/// rename it over the original are followed. Events are debounced: a burst of events within
/// `debounce` of each other leads to one read. The content is hashed and sent only when it
/// differs from the last content seen (starting with [`FileWatch::baseline`]); a file that
/// disappears sends nothing and is picked up again when it reappears.
///
/// Must be called inside a tokio runtime. Dropping the [`FileWatch`] stops the watch.
///
/// # Errors
/// [`SourceError::Watch`] when the directory cannot be watched, [`SourceError::NoRuntime`]
/// outside a runtime.
pub fn watch_file(
    path: PathBuf,
    debounce: Duration,
) -> Result<(FileWatch, mpsc::Receiver<FileChange>), SourceError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| SourceError::NoRuntime { path: path.clone() })?;
    let watch_err = |source| SourceError::Watch {
        path: path.clone(),
        source,
    };
    let absolute = std::path::absolute(&path).map_err(|e| watch_err(notify::Error::io(e)))?;
    let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(watch_err(notify::Error::generic(
            "the path names no file inside a directory",
        )));
    };
    let name = name.to_os_string();

    let (raw_tx, raw_rx) = mpsc::channel(RAW_EVENTS);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let _ = raw_tx.try_send(event);
    })
    .map_err(watch_err)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(watch_err)?;

    // Read after the watch started: an edit made in between is then both in the baseline or
    // reported.
    let baseline = read_file(&absolute).ok().map(FileChange::new);
    let (tx, rx) = mpsc::channel(8);
    let task = runtime.spawn(debounce_loop(
        absolute.clone(),
        name,
        debounce,
        baseline.as_ref().map(|b| b.hash.clone()),
        raw_rx,
        tx,
    ));
    Ok((
        FileWatch {
            path: absolute,
            baseline,
            _watcher: watcher,
            task,
        },
        rx,
    ))
}

/// Waits for a relevant event, lets the burst settle, re-reads the file and sends it when its
/// hash changed. Ends when the watcher or the receiver is gone.
async fn debounce_loop(
    path: PathBuf,
    name: OsString,
    debounce: Duration,
    mut last: Option<String>,
    mut raw: mpsc::Receiver<notify::Result<Event>>,
    tx: mpsc::Sender<FileChange>,
) {
    let max_wait = debounce.saturating_mul(MAX_DEBOUNCE_PERIODS);
    loop {
        // Wait for the first relevant event of a burst.
        loop {
            match raw.recv().await {
                None => return,
                Some(event) if is_relevant(&event, &name) => break,
                Some(_) => {}
            }
        }
        // Let the burst settle: quiet for `debounce`, or `max_wait` at most.
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let quiet_until = (tokio::time::Instant::now() + debounce).min(deadline);
            match tokio::time::timeout_at(quiet_until, raw.recv()).await {
                Err(_elapsed) => break,
                Ok(None) => return,
                Ok(Some(_)) => {}
            }
        }
        match read_bounded(&path).await {
            Ok(bytes) => {
                let change = FileChange::new(bytes);
                if last.as_deref() == Some(change.hash.as_str()) {
                    tracing::debug!(path = %path.display(), "watched file touched, content unchanged");
                    continue;
                }
                tracing::debug!(path = %path.display(), hash = %change.hash, "watched file changed");
                last = Some(change.hash.clone());
                if tx.send(change).await.is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "watched file is gone; waiting for it to reappear");
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read the watched file");
            }
        }
    }
}

/// Whether an event may mean new content for the file called `name`.
///
/// Opening and reading (ours included) and metadata changes are not; an error or an overflow
/// of the OS queue is, since something may have been missed.
fn is_relevant(event: &notify::Result<Event>, name: &OsString) -> bool {
    let event = match event {
        Ok(event) => event,
        Err(_) => return true,
    };
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => return false,
        _ => {}
    }
    event.need_rescan()
        || event.paths.is_empty()
        || event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
}

async fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(READ_LIMIT as u64).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

/// Reads a plain `users.yaml` file, at most [`READ_LIMIT`] bytes (one more than the parser
/// accepts, so that an oversized file is reported as such). Blocking.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(READ_LIMIT as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_hash_is_sha256_hex() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn own_reads_and_other_files_are_not_relevant() {
        use notify::event::{AccessKind, CreateKind, ModifyKind, RenameMode};
        let name = OsString::from("users.yaml");
        let ev = |kind, path: &str| Ok(Event::new(kind).add_path(PathBuf::from(path)));
        assert!(!is_relevant(
            &ev(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/d/users.yaml"
            ),
            &name
        ));
        assert!(!is_relevant(
            &ev(EventKind::Create(CreateKind::File), "/d/config.yaml"),
            &name
        ));
        assert!(is_relevant(
            &ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/d/users.yaml"
            ),
            &name
        ));
        assert!(is_relevant(
            &ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/d/users.yaml"
            ),
            &name
        ));
    }
}
