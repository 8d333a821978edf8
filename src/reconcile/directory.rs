//! The local directory cache (`directory.sqlite` in the state directory): every user of the
//! tenant as last read with `GET /users/delta`, and the `@odata.deltaLink` those users reflect,
//! so that the daemon's next round asks Graph only for what changed.
//!
//! - The users and the delta link are written in the same file and in one SQLite transaction
//!   ([`DirectoryCache::replace`] after a full enumeration, [`DirectoryCache::apply`] after an
//!   incremental round): a crash leaves the previous round or the new one, never users of one
//!   round with the link of another. Losing or corrupting the file costs one full resync, never
//!   a wrong picture.
//! - A cache belongs to one [`Scope`] (tenant, Graph root, `$select`) and one schema version;
//!   [`DirectoryCache::load`] ignores content made for another and says why
//!   ([`Cached::discarded`]).
//! - The file is in WAL mode so that a read-only process ([`DirectoryCache::open_read_only`],
//!   `guestops plan` beside the daemon) reads the last committed round while the daemon writes
//!   the next one. Both kinds of connection wait up to [`BUSY_TIMEOUT`] for a lock.
//!
//! This module owns only this file: it never touches `state.json` or the other files of
//! [`crate::reconcile::state`], makes no Graph request and starts no thread. Its methods are
//! synchronous and short (one transaction each).
//!
//! Schema (version [`SCHEMA_VERSION`]): `meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)` with
//! the keys `schema_version`, `tenant_id`, `graph_root`, `select`, `delta_link` and
//! `full_sync_at` (RFC 3339), and `users(id TEXT PRIMARY KEY, user TEXT NOT NULL) WITHOUT ROWID`
//! holding each [`DirectoryUser`] as JSON.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, params};

use crate::remote::graph::{DeltaChange, DirectoryUser};

/// The cache's file name in the state directory.
pub const CACHE_FILE: &str = "directory.sqlite";

/// The layout of the tables this guestops reads and writes; content of another version is
/// discarded by [`DirectoryCache::load`] and overwritten by [`DirectoryCache::replace`].
pub const SCHEMA_VERSION: u32 = 1;

/// How long a connection waits for a lock held by another connection before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest size, in bytes, the `-wal` file is truncated back to after a checkpoint (a full
/// sync writes the whole table through it).
const WAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

const KEY_SCHEMA_VERSION: &str = "schema_version";
const KEY_TENANT_ID: &str = "tenant_id";
const KEY_GRAPH_ROOT: &str = "graph_root";
const KEY_SELECT: &str = "select";
const KEY_DELTA_LINK: &str = "delta_link";
const KEY_FULL_SYNC_AT: &str = "full_sync_at";

const CREATE_USERS: &str =
    "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, user TEXT NOT NULL) WITHOUT ROWID";
const UPSERT_USER: &str = "INSERT OR REPLACE INTO users (id, user) VALUES (?1, ?2)";
const DELETE_USER: &str = "DELETE FROM users WHERE id = ?1";
const SET_META: &str = "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)";

/// Which sync a cache belongs to; a cache made for another scope is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The Entra tenant id.
    pub tenant_id: String,
    /// The Graph base URL the delta link was issued by (e.g. `https://graph.microsoft.com/v1.0`).
    pub graph_root: String,
    /// The `$select` of the delta query ([`crate::remote::graph::USER_SELECT`]): a link made
    /// with other properties would leave them missing from the cached users.
    pub select: String,
}

/// What a cache held.
#[derive(Debug, Clone, Default)]
pub struct Cached {
    /// The users by object id.
    pub users: HashMap<String, DirectoryUser>,
    /// The deltaLink the users reflect; None: no complete round stored (start from scratch).
    pub delta_link: Option<String>,
    /// When the last full enumeration completed.
    pub full_sync_at: Option<DateTime<Utc>>,
    /// Why stored content was not used (other scope, other schema version), for a log line;
    /// None when used or empty.
    pub discarded: Option<String>,
}

/// A failure to read or write the directory cache. Every variant names the file; deleting it
/// (or [`DirectoryCache::recreate`]) is always safe and costs one full resync.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be created.
    #[error(
        "cannot create the directory cache {}: {source}; check that the state directory exists and is writable",
        path.display()
    )]
    Create {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// SQLite could not open the file, or it is not an SQLite database.
    #[error(
        "cannot open the directory cache {}: {source}; delete the file (it costs one full resync of the directory)",
        path.display()
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// SQLite keeps another journal mode than WAL (e.g. on a file system without shared memory),
    /// so readers would block the writer.
    #[error(
        "the directory cache {} cannot use WAL journal mode (SQLite kept `{mode}`); put the state directory on a local file system",
        path.display()
    )]
    Wal {
        /// The file.
        path: PathBuf,
        /// The journal mode SQLite reported.
        mode: String,
    },
    /// A statement failed.
    #[error(
        "cannot {action} in the directory cache {}: {source}; if this persists, delete the file (it costs one full resync of the directory)",
        path.display()
    )]
    Sql {
        /// The file.
        path: PathBuf,
        /// What was being done, e.g. `store the users`.
        action: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A stored user is not valid JSON of a [`DirectoryUser`].
    #[error(
        "the directory cache {} holds an unreadable user {id}: {source}; delete the file (it costs one full resync of the directory)",
        path.display()
    )]
    Decode {
        /// The file.
        path: PathBuf,
        /// The user's object id (the row key).
        id: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A user could not be serialized (not expected for a [`DirectoryUser`]).
    #[error("cannot serialize user {id} for the directory cache {}: {source}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// The user's object id.
        id: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A `meta` value is unreadable (e.g. `full_sync_at` is not RFC 3339).
    #[error(
        "the directory cache {} holds an unreadable {key} `{value}`; delete the file (it costs one full resync of the directory)",
        path.display()
    )]
    Meta {
        /// The file.
        path: PathBuf,
        /// The `meta` key.
        key: &'static str,
        /// The stored value.
        value: String,
    },
    /// [`DirectoryCache::apply`] was asked to extend content it cannot extend: another scope,
    /// another schema version, or no complete round.
    #[error(
        "the directory cache {} cannot take an incremental round: {reason}; store a full enumeration (`replace`) instead",
        path.display()
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// [`DirectoryCache::recreate`] could not remove the old file or a companion.
    #[error(
        "cannot remove the directory cache file {}: {source}; remove it by hand (it costs one full resync of the directory)",
        path.display()
    )]
    Remove {
        /// The file that could not be removed.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl CacheError {
    /// Whether the file itself is damaged (not SQLite, corrupt pages, unreadable content):
    /// the caller should [`DirectoryCache::recreate`] it and do a full resync.
    pub fn is_corrupt(&self) -> bool {
        match self {
            CacheError::Open { source, .. } | CacheError::Sql { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
            ),
            CacheError::Decode { .. } | CacheError::Meta { .. } => true,
            _ => false,
        }
    }
}

/// The directory cache: one SQLite connection to [`CACHE_FILE`], for writing
/// ([`DirectoryCache::open`]) or reading ([`DirectoryCache::open_read_only`]).
#[derive(Debug)]
pub struct DirectoryCache {
    conn: Connection,
    path: PathBuf,
}

impl DirectoryCache {
    /// Opens or creates the cache for writing (file mode 0600 on Unix: it holds directory data),
    /// WAL, schema created if missing.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        create_private(path)?;
        let open_err = |source| CacheError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // The first statement that reads the file: a file that is not SQLite fails here.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CacheError::Wal {
                path: path.to_owned(),
                mode,
            });
        }
        conn.pragma_update_and_check(None, "journal_size_limit", WAL_SIZE_LIMIT, |_| Ok(()))
            .map_err(open_err)?;
        let cache = DirectoryCache {
            conn,
            path: path.to_owned(),
        };
        cache.create_schema()?;
        Ok(cache)
    }

    /// Opens an existing cache read-only; Ok(None) when the file does not exist.
    pub fn open_read_only(path: &Path) -> Result<Option<Self>, CacheError> {
        match path.try_exists() {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(source) => {
                return Err(CacheError::Create {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let open_err = |source| CacheError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Reads the header: a file that is not SQLite fails here rather than in `load`.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(open_err)?;
        Ok(Some(DirectoryCache {
            conn,
            path: path.to_owned(),
        }))
    }

    /// Removes the cache file and its -wal/-shm companions (after a corrupt file), then opens a
    /// fresh one. Drop every [`DirectoryCache`] of this process on the file first.
    pub fn recreate(path: &Path) -> Result<Self, CacheError> {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = OsString::from(path.as_os_str());
            name.push(suffix);
            let file = PathBuf::from(name);
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Remove { path: file, source }),
            }
        }
        DirectoryCache::open(path)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything stored, if it was made for `scope` and this schema version; otherwise an
    /// empty Cached with `discarded` saying why. Reads in one transaction, so the users and the
    /// link are those of one committed round even while a writer commits the next.
    pub fn load(&self, scope: &Scope) -> Result<Cached, CacheError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.sql("begin a read"))?;
        let has_meta: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
                [],
                |row| row.get(0),
            )
            .map_err(self.sql("read the schema"))?;
        if !has_meta {
            // Created by a writer that has not set it up yet: nothing stored.
            return Ok(Cached::default());
        }
        let meta = read_meta(&tx, &self.path)?;
        if let Some(reason) = unusable(&meta, scope) {
            return Ok(Cached {
                discarded: Some(reason),
                ..Cached::default()
            });
        }
        let Some(delta_link) = meta.get(KEY_DELTA_LINK).cloned() else {
            return Ok(Cached::default());
        };
        let full_sync_at = match meta.get(KEY_FULL_SYNC_AT) {
            None => None,
            Some(value) => Some(
                DateTime::parse_from_rfc3339(value)
                    .map_err(|_| CacheError::Meta {
                        path: self.path.clone(),
                        key: KEY_FULL_SYNC_AT,
                        value: value.clone(),
                    })?
                    .with_timezone(&Utc),
            ),
        };
        let mut users = HashMap::new();
        {
            let mut stmt = tx
                .prepare_cached("SELECT id, user FROM users")
                .map_err(self.sql("read the users"))?;
            let mut rows = stmt.query([]).map_err(self.sql("read the users"))?;
            while let Some(row) = rows.next().map_err(self.sql("read the users"))? {
                let id: String = row.get(0).map_err(self.sql("read the users"))?;
                let json: String = row.get(1).map_err(self.sql("read the users"))?;
                let user: DirectoryUser =
                    serde_json::from_str(&json).map_err(|source| CacheError::Decode {
                        path: self.path.clone(),
                        id: id.clone(),
                        source,
                    })?;
                users.insert(id, user);
            }
        }
        tx.commit().map_err(self.sql("end the read"))?;
        Ok(Cached {
            users,
            delta_link: Some(delta_link),
            full_sync_at,
            discarded: None,
        })
    }

    /// After a full enumeration: replaces every stored user by `users` and stores `delta_link`,
    /// `full_sync_at` and the scope, in ONE transaction. A user listed twice is stored as listed
    /// last. Overwrites content of another scope or schema version.
    pub fn replace<'a>(
        &mut self,
        scope: &Scope,
        users: impl IntoIterator<Item = &'a DirectoryUser>,
        delta_link: &str,
        full_sync_at: DateTime<Utc>,
    ) -> Result<(), CacheError> {
        let path = self.path.as_path();
        let sql = |action| sql_error(path, action);
        let tx = write_transaction(&mut self.conn, path)?;
        // Dropped, not emptied: a table of another schema version may have another shape.
        tx.execute_batch(&format!(
            "DROP TABLE IF EXISTS users; {CREATE_USERS}; DELETE FROM meta;"
        ))
        .map_err(sql("clear the cache"))?;
        {
            let mut upsert = tx
                .prepare_cached(UPSERT_USER)
                .map_err(sql("store the users"))?;
            for user in users {
                let json = encode(path, user)?;
                upsert
                    .execute(params![user.id, json])
                    .map_err(sql("store the users"))?;
            }
        }
        let version = SCHEMA_VERSION.to_string();
        let at = full_sync_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        {
            let mut set = tx
                .prepare_cached(SET_META)
                .map_err(sql("store the round"))?;
            for (key, value) in [
                (KEY_SCHEMA_VERSION, version.as_str()),
                (KEY_TENANT_ID, scope.tenant_id.as_str()),
                (KEY_GRAPH_ROOT, scope.graph_root.as_str()),
                (KEY_SELECT, scope.select.as_str()),
                (KEY_FULL_SYNC_AT, at.as_str()),
                (KEY_DELTA_LINK, delta_link),
            ] {
                set.execute(params![key, value])
                    .map_err(sql("store the round"))?;
            }
        }
        tx.commit().map_err(sql("commit the full enumeration"))
    }

    /// After an incremental round: upserts/removes per `changes` (in order; replays and
    /// removals of unknown ids are fine) and stores the new `delta_link`, in ONE transaction;
    /// keeps full_sync_at. Fails with [`CacheError::Mismatch`] if the stored content is of
    /// another scope or schema version or holds no complete round (the caller then does
    /// `replace`).
    pub fn apply(
        &mut self,
        scope: &Scope,
        changes: &[DeltaChange],
        delta_link: &str,
    ) -> Result<(), CacheError> {
        let path = self.path.as_path();
        let sql = |action| sql_error(path, action);
        let tx = write_transaction(&mut self.conn, path)?;
        let meta = read_meta(&tx, path)?;
        let reason = unusable(&meta, scope).or_else(|| {
            (!meta.contains_key(KEY_DELTA_LINK)).then(|| "it holds no complete round".to_owned())
        });
        if let Some(reason) = reason {
            return Err(CacheError::Mismatch {
                path: path.to_owned(),
                reason,
            });
        }
        {
            let mut upsert = tx
                .prepare_cached(UPSERT_USER)
                .map_err(sql("store a changed user"))?;
            let mut delete = tx
                .prepare_cached(DELETE_USER)
                .map_err(sql("remove a user"))?;
            for change in changes {
                match change {
                    DeltaChange::Upsert(user) => {
                        let json = encode(path, user)?;
                        upsert
                            .execute(params![user.id, json])
                            .map_err(sql("store a changed user"))?;
                    }
                    DeltaChange::Removed { id, .. } => {
                        delete.execute(params![id]).map_err(sql("remove a user"))?;
                    }
                }
            }
            tx.prepare_cached(SET_META)
                .and_then(|mut set| set.execute(params![KEY_DELTA_LINK, delta_link]))
                .map_err(sql("store the delta link"))?;
        }
        tx.commit().map_err(sql("commit the incremental round"))
    }

    /// Creates the tables if missing and records the schema version of a new file.
    fn create_schema(&self) -> Result<(), CacheError> {
        self.conn
            .execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 {CREATE_USERS};
                 INSERT OR IGNORE INTO meta (key, value) VALUES ('{KEY_SCHEMA_VERSION}', '{SCHEMA_VERSION}');
                 COMMIT;"
            ))
            .map_err(|source| {
                // Leaves no transaction open on the connection after a failure.
                let _ = self.conn.execute_batch("ROLLBACK");
                CacheError::Sql {
                    path: self.path.clone(),
                    action: "create the tables",
                    source,
                }
            })
    }

    /// Maps a SQLite error of `action` on this file.
    fn sql(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> CacheError + '_ {
        sql_error(&self.path, action)
    }
}

/// Maps a SQLite error of `action` on the file at `path`.
fn sql_error<'p>(
    path: &'p Path,
    action: &'static str,
) -> impl Fn(rusqlite::Error) -> CacheError + 'p {
    move |source| CacheError::Sql {
        path: path.to_owned(),
        action,
        source,
    }
}

/// A write transaction that takes the write lock at once (waiting up to [`BUSY_TIMEOUT`]), so
/// that it never fails halfway for a lock.
fn write_transaction<'c>(
    conn: &'c mut Connection,
    path: &Path,
) -> Result<Transaction<'c>, CacheError> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql_error(path, "begin a write"))
}

/// Every `meta` row.
fn read_meta(conn: &Connection, path: &Path) -> Result<HashMap<String, String>, CacheError> {
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM meta")
        .map_err(sql_error(path, "read the metadata"))?;
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(sql_error(path, "read the metadata"))?;
    rows.collect::<Result<_, _>>()
        .map_err(sql_error(path, "read the metadata"))
}

/// Why content with `meta` cannot be used for `scope`, if it cannot.
fn unusable(meta: &HashMap<String, String>, scope: &Scope) -> Option<String> {
    let version = meta.get(KEY_SCHEMA_VERSION).map(String::as_str);
    if version != Some(SCHEMA_VERSION.to_string().as_str()) {
        return Some(format!(
            "it has schema version {}, this guestops uses {SCHEMA_VERSION}",
            version.unwrap_or("(none)")
        ));
    }
    if !meta.contains_key(KEY_TENANT_ID) {
        // Never written by `replace`: empty, nothing to discard.
        return None;
    }
    let differs: Vec<String> = [
        ("tenant id", KEY_TENANT_ID, &scope.tenant_id),
        ("Graph root", KEY_GRAPH_ROOT, &scope.graph_root),
        ("$select", KEY_SELECT, &scope.select),
    ]
    .into_iter()
    .filter_map(|(name, key, wanted)| {
        let stored = meta.get(key).map(String::as_str).unwrap_or("");
        (stored != wanted).then(|| format!("{name} `{stored}` (now `{wanted}`)"))
    })
    .collect();
    (!differs.is_empty()).then(|| format!("it was made for another {}", differs.join(", ")))
}

/// The stored form of `user`.
fn encode(path: &Path, user: &DirectoryUser) -> Result<String, CacheError> {
    serde_json::to_string(user).map_err(|source| CacheError::Encode {
        path: path.to_owned(),
        id: user.id.clone(),
        source,
    })
}

/// Creates `path` empty if missing, readable by its owner only on Unix (SQLite gives the
/// `-wal` and `-shm` files the same mode).
fn create_private(path: &Path) -> Result<(), CacheError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|source| CacheError::Create {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::graph::{ObjectIdentity, RemovedReason, USER_SELECT};

    fn scope() -> Scope {
        Scope {
            tenant_id: "tenant-1".to_owned(),
            graph_root: "https://graph.microsoft.com/v1.0".to_owned(),
            select: USER_SELECT.to_owned(),
        }
    }

    fn user(id: &str, mail: &str) -> DirectoryUser {
        DirectoryUser {
            id: id.to_owned(),
            display_name: Some(format!("User {id}")),
            mail: Some(mail.to_owned()),
            other_mails: vec![mail.to_uppercase()],
            user_principal_name: Some(format!(
                "{}#EXT#@tenant.onmicrosoft.com",
                mail.replace('@', "_")
            )),
            user_type: Some("Guest".to_owned()),
            external_user_state: Some("Accepted".to_owned()),
            external_user_state_change_date_time: Some("2024-05-01T10:00:00Z".parse().unwrap()),
            creation_type: Some("Invitation".to_owned()),
            identities: vec![ObjectIdentity {
                sign_in_type: Some("federated".to_owned()),
                issuer: Some("ExternalAzureAD".to_owned()),
                issuer_assigned_id: None,
            }],
            account_enabled: Some(true),
            created_date_time: Some("2024-04-01T09:30:00.123Z".parse().unwrap()),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// A writer on a fresh file holding `a` and `b` at link `L1`.
    fn seeded(dir: &tempfile::TempDir) -> (PathBuf, DirectoryCache) {
        let path = dir.path().join(CACHE_FILE);
        let mut cache = DirectoryCache::open(&path).unwrap();
        let users = [user("a", "a@example.com"), user("b", "b@example.com")];
        cache
            .replace(&scope(), &users, "L1", at("2025-01-02T03:04:05.678Z"))
            .unwrap();
        (path, cache)
    }

    fn ids(cached: &Cached) -> Vec<&str> {
        let mut ids: Vec<&str> = cached.users.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn replace_then_load_round_trips_users_link_and_full_sync_time() {
        let dir = tempfile::tempdir().unwrap();
        let (path, cache) = seeded(&dir);
        let cached = cache.load(&scope()).unwrap();
        assert_eq!(cached.users.len(), 2);
        assert_eq!(cached.users["a"], user("a", "a@example.com"));
        assert_eq!(cached.users["b"], user("b", "b@example.com"));
        assert_eq!(cached.delta_link.as_deref(), Some("L1"));
        assert_eq!(cached.full_sync_at, Some(at("2025-01-02T03:04:05.678Z")));
        assert_eq!(cached.discarded, None);
        drop(cache);

        // Reopened, and read by a reader after the writer closed (no -wal/-shm left).
        let reopened = DirectoryCache::open(&path).unwrap();
        assert_eq!(reopened.load(&scope()).unwrap().users.len(), 2);
        drop(reopened);
        let reader = DirectoryCache::open_read_only(&path).unwrap().unwrap();
        assert_eq!(reader.path(), path);
        let read = reader.load(&scope()).unwrap();
        assert_eq!(read.users.len(), 2);
        assert_eq!(read.delta_link.as_deref(), Some("L1"));
    }

    #[test]
    fn a_second_replace_drops_users_not_listed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut cache) = seeded(&dir);
        let b2 = user("b", "b2@example.com");
        let c = user("c", "c@example.com");
        cache
            .replace(&scope(), [&b2, &c, &c], "L9", at("2025-02-01T00:00:00Z"))
            .unwrap();
        let cached = cache.load(&scope()).unwrap();
        assert_eq!(ids(&cached), ["b", "c"]);
        assert_eq!(cached.users["b"], b2);
        assert_eq!(cached.delta_link.as_deref(), Some("L9"));
        assert_eq!(cached.full_sync_at, Some(at("2025-02-01T00:00:00Z")));
    }

    #[test]
    fn a_fresh_cache_is_empty_and_takes_no_incremental_round() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CACHE_FILE);
        let mut cache = DirectoryCache::open(&path).unwrap();
        let cached = cache.load(&scope()).unwrap();
        assert!(cached.users.is_empty());
        assert_eq!(cached.delta_link, None);
        assert_eq!(cached.full_sync_at, None);
        assert_eq!(cached.discarded, None);
        let err = cache.apply(&scope(), &[], "L2").unwrap_err();
        assert!(
            matches!(&err, CacheError::Mismatch { reason, .. } if reason.contains("no complete round")),
            "{err}"
        );
    }

    #[test]
    fn apply_upserts_and_removes_in_order_and_keeps_the_full_sync_time() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut cache) = seeded(&dir);
        let mut a_changed = user("a", "new-a@example.com");
        a_changed.other_mails.clear();
        a_changed.identities.clear();
        a_changed.display_name = None;
        let c = user("c", "c@example.com");
        let d = user("d", "d@example.com");
        let changes = vec![
            DeltaChange::Upsert(c.clone()),
            DeltaChange::Upsert(a_changed.clone()),
            DeltaChange::Removed {
                id: "b".to_owned(),
                reason: RemovedReason::Changed,
            },
            DeltaChange::Upsert(d.clone()),
            DeltaChange::Removed {
                id: "d".to_owned(),
                reason: RemovedReason::Deleted,
            },
            DeltaChange::Removed {
                id: "never-seen".to_owned(),
                reason: RemovedReason::Deleted,
            },
        ];
        cache.apply(&scope(), &changes, "L2").unwrap();
        let once = cache.load(&scope()).unwrap();
        assert_eq!(ids(&once), ["a", "c"]);
        // The whole record is replaced: fields absent from the change are gone.
        assert_eq!(once.users["a"], a_changed);
        assert_eq!(once.users["c"], c);
        assert_eq!(once.delta_link.as_deref(), Some("L2"));
        assert_eq!(once.full_sync_at, Some(at("2025-01-02T03:04:05.678Z")));

        // A replay of the same round (Graph may send entries again) changes nothing but the link.
        cache.apply(&scope(), &changes, "L3").unwrap();
        let twice = cache.load(&scope()).unwrap();
        assert_eq!(twice.users, once.users);
        assert_eq!(twice.delta_link.as_deref(), Some("L3"));
        assert_eq!(twice.full_sync_at, once.full_sync_at);

        // The same entry twice in one round: the last one wins.
        let a_last = user("a", "last-a@example.com");
        cache
            .apply(
                &scope(),
                &[
                    DeltaChange::Upsert(a_changed.clone()),
                    DeltaChange::Upsert(a_last.clone()),
                ],
                "L4",
            )
            .unwrap();
        assert_eq!(cache.load(&scope()).unwrap().users["a"], a_last);
    }

    #[test]
    fn another_scope_is_discarded_by_load_and_refused_by_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut cache) = seeded(&dir);
        let others = [
            (
                Scope {
                    tenant_id: "tenant-2".to_owned(),
                    ..scope()
                },
                "tenant id `tenant-1` (now `tenant-2`)",
            ),
            (
                Scope {
                    graph_root: "https://graph.microsoft.us/v1.0".to_owned(),
                    ..scope()
                },
                "Graph root `https://graph.microsoft.com/v1.0`",
            ),
            (
                Scope {
                    select: "id,mail".to_owned(),
                    ..scope()
                },
                "$select",
            ),
        ];
        for (other, named) in others {
            let cached = cache.load(&other).unwrap();
            assert!(cached.users.is_empty());
            assert_eq!(cached.delta_link, None);
            assert_eq!(cached.full_sync_at, None);
            let discarded = cached.discarded.expect("says why");
            assert!(discarded.contains(named), "{discarded}");

            let err = cache.apply(&other, &[], "L2").unwrap_err();
            assert!(
                matches!(&err, CacheError::Mismatch { reason, .. } if reason.contains(named)),
                "{err}"
            );
        }
        // Nothing was changed by the refused rounds; a replace for the new scope takes over.
        assert_eq!(
            cache.load(&scope()).unwrap().delta_link.as_deref(),
            Some("L1")
        );
        let tenant2 = Scope {
            tenant_id: "tenant-2".to_owned(),
            ..scope()
        };
        cache
            .replace(&tenant2, [], "T2", at("2025-03-01T00:00:00Z"))
            .unwrap();
        assert_eq!(
            cache.load(&tenant2).unwrap().delta_link.as_deref(),
            Some("T2")
        );
        assert!(cache.load(&scope()).unwrap().discarded.is_some());
    }

    #[test]
    fn another_schema_version_is_discarded_and_overwritten_by_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, mut cache) = seeded(&dir);
        cache
            .conn
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        let cached = cache.load(&scope()).unwrap();
        assert!(cached.users.is_empty());
        let discarded = cached.discarded.unwrap();
        assert!(discarded.contains("schema version 99"), "{discarded}");
        assert!(matches!(
            cache.apply(&scope(), &[], "L2"),
            Err(CacheError::Mismatch { .. })
        ));
        let a = user("a", "a@example.com");
        cache
            .replace(&scope(), [&a], "L5", at("2025-03-01T00:00:00Z"))
            .unwrap();
        assert_eq!(ids(&cache.load(&scope()).unwrap()), ["a"]);
    }

    #[test]
    fn a_reader_sees_the_last_committed_round_while_the_writer_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut cache) = seeded(&dir);
        let reader = DirectoryCache::open_read_only(&path).unwrap().unwrap();
        assert_eq!(ids(&reader.load(&scope()).unwrap()), ["a", "b"]);

        // In the middle of the next full enumeration's transaction, a second reader (as
        // `guestops plan` would open) and the first one still see the previous round.
        let next: Vec<DirectoryUser> = (0..50)
            .map(|i| user(&format!("n{i:02}"), &format!("n{i}@example.com")))
            .collect();
        let mut seen_mid_write = Vec::new();
        let users = next.iter().inspect(|u| {
            if u.id == "n25" {
                let late = DirectoryCache::open_read_only(&path).unwrap().unwrap();
                for r in [&reader, &late] {
                    let cached = r.load(&scope()).unwrap();
                    seen_mid_write.push((ids(&cached).join(","), cached.delta_link));
                }
            }
        });
        cache
            .replace(&scope(), users, "L2", at("2025-02-01T00:00:00Z"))
            .unwrap();
        assert_eq!(
            seen_mid_write,
            vec![("a,b".to_owned(), Some("L1".to_owned())); 2]
        );

        let after = reader.load(&scope()).unwrap();
        assert_eq!(after.users.len(), 50);
        assert_eq!(after.delta_link.as_deref(), Some("L2"));
    }

    #[test]
    fn a_write_that_fails_midway_leaves_the_previous_round() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut cache) = seeded(&dir);
        let before = cache.load(&scope()).unwrap();
        // SQL failures injected inside the transactions: on the last write of `replace` (the
        // link, after every user is stored) and on the second user of `apply`.
        cache
            .conn
            .execute_batch(
                "CREATE TRIGGER fail_link BEFORE INSERT ON meta WHEN NEW.value = 'BAD'
                   BEGIN SELECT RAISE(ABORT, 'injected'); END;",
            )
            .unwrap();
        let next = [user("x", "x@example.com"), user("y", "y@example.com")];
        let err = cache
            .replace(&scope(), &next, "BAD", at("2025-02-01T00:00:00Z"))
            .unwrap_err();
        assert!(
            matches!(
                err,
                CacheError::Sql {
                    action: "store the round",
                    ..
                }
            ),
            "{err}"
        );
        let err = cache
            .apply(
                &scope(),
                &[DeltaChange::Upsert(user("z", "z@example.com"))],
                "BAD",
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                CacheError::Sql {
                    action: "store the delta link",
                    ..
                }
            ),
            "{err}"
        );

        for cached in [
            cache.load(&scope()).unwrap(),
            DirectoryCache::open_read_only(&path)
                .unwrap()
                .unwrap()
                .load(&scope())
                .unwrap(),
        ] {
            assert_eq!(cached.users, before.users);
            assert_eq!(cached.delta_link.as_deref(), Some("L1"));
            assert_eq!(cached.full_sync_at, before.full_sync_at);
        }

        // A write interrupted by a panic (the transaction is dropped before its commit).
        let users = next
            .iter()
            .inspect(|u| assert_ne!(u.id, "y", "interrupted"));
        let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.replace(&scope(), users, "L2", at("2025-02-01T00:00:00Z"))
        }));
        assert!(interrupted.is_err());
        let cached = cache.load(&scope()).unwrap();
        assert_eq!(cached.users, before.users);
        assert_eq!(cached.delta_link.as_deref(), Some("L1"));
        // And the connection still writes.
        cache.apply(&scope(), &[], "L2").unwrap();
        assert_eq!(
            cache.load(&scope()).unwrap().delta_link.as_deref(),
            Some("L2")
        );
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_an_error_naming_it_and_recreate_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CACHE_FILE);
        std::fs::write(
            &path,
            b"this is not a database, just some garbage bytes ".repeat(100),
        )
        .unwrap();

        let err = DirectoryCache::open(&path).unwrap_err();
        assert!(err.is_corrupt(), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("full resync"), "{message}");

        let err = DirectoryCache::open_read_only(&path).unwrap_err();
        assert!(err.is_corrupt(), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));

        let mut cache = DirectoryCache::recreate(&path).unwrap();
        assert!(cache.load(&scope()).unwrap().users.is_empty());
        let a = user("a", "a@example.com");
        cache
            .replace(&scope(), [&a], "L1", at("2025-01-01T00:00:00Z"))
            .unwrap();
        assert_eq!(ids(&cache.load(&scope()).unwrap()), ["a"]);
    }

    #[test]
    fn an_unreadable_user_row_is_a_decode_error_naming_the_file_and_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let (path, cache) = seeded(&dir);
        cache
            .conn
            .execute("UPDATE users SET user = '{not json' WHERE id = 'b'", [])
            .unwrap();
        let err = cache.load(&scope()).unwrap_err();
        assert!(
            matches!(&err, CacheError::Decode { id, .. } if id == "b"),
            "{err}"
        );
        assert!(err.is_corrupt());
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn open_read_only_of_a_missing_file_is_none_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CACHE_FILE);
        assert!(DirectoryCache::open_read_only(&path).unwrap().is_none());
        assert!(!path.exists());
    }

    #[test]
    fn a_reader_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _writer) = seeded(&dir);
        let mut reader = DirectoryCache::open_read_only(&path).unwrap().unwrap();
        assert!(reader.apply(&scope(), &[], "L2").is_err());
        assert_eq!(
            reader.load(&scope()).unwrap().delta_link.as_deref(),
            Some("L1")
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_file_and_its_companions_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (path, _cache) = seeded(&dir);
        for suffix in ["", "-wal", "-shm"] {
            let mut name = OsString::from(path.as_os_str());
            name.push(suffix);
            let mode = std::fs::metadata(PathBuf::from(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{suffix}");
        }
    }
}
