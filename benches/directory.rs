//! Directory cache cost (`src/reconcile/directory.rs`): what a full sync, a start-up load and an
//! incremental round cost on disk for a large tenant.
//!
//! `cargo bench --bench directory` builds `BENCH_USERS` (default 100,000) users with realistic
//! fields (display name, mail, otherMails, a guest UPN with `#EXT#`, identities, dates; one in
//! ten a member) and times, in a fresh file of a temporary directory:
//!
//! - `replace`: storing a full enumeration (one transaction);
//! - `load`: reading everything back, as the daemon does at start-up;
//! - `apply`: an incremental round of 100 changes (60 updates, 20 new users, 20 removals);
//!
//! then prints the size of the file and of its `-wal`. Prints the timings; asserts nothing about
//! speed.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeZone as _, Utc};
use guestops::reconcile::directory::{CACHE_FILE, DirectoryCache, Scope};
use guestops::remote::graph::{
    DeltaChange, DirectoryUser, ObjectIdentity, RemovedReason, USER_SELECT,
};

/// One line on stdout (the benchmark's output; the library itself prints nothing).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User `n` as Graph would return it with `USER_SELECT`; `version` changes its mutable fields.
fn user(n: usize, version: u32) -> DirectoryUser {
    let member = n.is_multiple_of(10);
    let domain = format!("partner{}.example", n % 997);
    let local = format!("first.last{n:07}");
    let mail = format!("{local}@{domain}");
    let created = Utc
        .timestamp_opt(1_600_000_000 + (n as i64) * 97, 0)
        .unwrap();
    DirectoryUser {
        id: format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            n,
            n % 65536,
            n % 4096,
            version,
            n * 7919
        ),
        display_name: Some(format!("First Last {n} (v{version})")),
        mail: Some(mail.clone()),
        other_mails: if member {
            vec![]
        } else {
            vec![mail.clone(), format!("{local}.alt@{domain}")]
        },
        user_principal_name: Some(if member {
            format!("{local}@contoso.onmicrosoft.com")
        } else {
            format!("{local}_{domain}#EXT#@contoso.onmicrosoft.com")
        }),
        user_type: Some(if member { "Member" } else { "Guest" }.to_owned()),
        external_user_state: (!member).then(|| {
            if n.is_multiple_of(7) {
                "PendingAcceptance"
            } else {
                "Accepted"
            }
            .to_owned()
        }),
        external_user_state_change_date_time: (!member)
            .then(|| created + chrono::Duration::days(2)),
        creation_type: (!member).then(|| "Invitation".to_owned()),
        identities: vec![ObjectIdentity {
            sign_in_type: Some(
                if member {
                    "userPrincipalName"
                } else {
                    "federated"
                }
                .to_owned(),
            ),
            issuer: Some(if member {
                "contoso.onmicrosoft.com".to_owned()
            } else {
                "ExternalAzureAD".to_owned()
            }),
            issuer_assigned_id: member.then(|| format!("{local}@contoso.onmicrosoft.com")),
        }],
        account_enabled: Some(!n.is_multiple_of(50)),
        created_date_time: Some(created),
    }
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n = env_or("BENCH_USERS", 100_000) as usize;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(CACHE_FILE);
    let wal = dir.path().join(format!("{CACHE_FILE}-wal"));
    let scope = Scope {
        tenant_id: "00000000-0000-4000-8000-000000000001".to_owned(),
        graph_root: "https://graph.microsoft.com/v1.0".to_owned(),
        select: USER_SELECT.to_owned(),
    };
    let link = |round: u32| {
        format!(
            "https://graph.microsoft.com/v1.0/users/delta?$deltatoken=round{round}-{}",
            "x".repeat(200)
        )
    };
    let users: Vec<DirectoryUser> = (0..n).map(|i| user(i, 0)).collect();
    let json_bytes: usize = users
        .iter()
        .map(|u| serde_json::to_string(u).expect("json").len())
        .sum();
    say!(
        "directory cache, {n} users ({:.0} bytes of JSON per user on average)",
        json_bytes as f64 / n.max(1) as f64
    );

    let mut cache = DirectoryCache::open(&path).expect("open");
    for round in 0..3 {
        let started = Instant::now();
        cache
            .replace(&scope, &users, &link(0), Utc::now())
            .expect("replace");
        say!("replace (full sync) #{round}: {}", ms(started.elapsed()));
    }
    say!(
        "file after replace: {:.1} MiB, -wal {:.1} MiB",
        size(&path) as f64 / 1048576.0,
        size(&wal) as f64 / 1048576.0
    );

    for round in 0..3 {
        let started = Instant::now();
        let cached = cache.load(&scope).expect("load");
        assert_eq!(cached.users.len(), n);
        say!(
            "load (writer connection) #{round}: {}",
            ms(started.elapsed())
        );
    }
    let reader = DirectoryCache::open_read_only(&path)
        .expect("open read-only")
        .expect("exists");
    let started = Instant::now();
    let cached = reader.load(&scope).expect("load");
    say!(
        "load (read-only connection): {} ({} users)",
        ms(started.elapsed()),
        cached.users.len()
    );
    drop(cached);

    for round in 1..=3u32 {
        let mut changes = Vec::with_capacity(100);
        changes.extend(
            (0..60).map(|k| DeltaChange::Upsert(user((k * 1637 + round as usize * 13) % n, round))),
        );
        changes.extend((0..20).map(|k| DeltaChange::Upsert(user(n + round as usize * 100 + k, 0))));
        changes.extend((0..20).map(|k| DeltaChange::Removed {
            id: user((k * 4099 + round as usize * 7) % n, 0).id,
            reason: if k % 2 == 0 {
                RemovedReason::Changed
            } else {
                RemovedReason::Deleted
            },
        }));
        let started = Instant::now();
        cache.apply(&scope, &changes, &link(round)).expect("apply");
        say!("apply (100 changes) #{round}: {}", ms(started.elapsed()));
    }
    say!(
        "file after apply: {:.1} MiB, -wal {:.1} MiB",
        size(&path) as f64 / 1048576.0,
        size(&wal) as f64 / 1048576.0
    );
    drop(reader);
    drop(cache);
    say!(
        "file after close: {:.1} MiB, -wal {:.1} MiB",
        size(&path) as f64 / 1048576.0,
        size(&wal) as f64 / 1048576.0
    );
}
