//! `guestops history`: the audit log (`state.dir/audit.jsonl`, [`super::state`]) read back,
//! filtered and rendered (`docs/history.md`).
//!
//! Reading takes no lock: the log only ever grows by whole lines, so a reader sees a prefix of
//! it. A last line without its newline is being written (or was cut off by a crash before it
//! was acknowledged): it is skipped and reported ([`AuditLog::torn_line`]); any other line that
//! is not a record is an error naming its line ([`StateError::AuditLine`]). The file is read
//! line by line, so a long history costs memory only for the rows that match.

use std::io::{self, BufRead as _, Write};
use std::path::Path;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;

use super::state::{AUDIT_FILE, AuditRecord, AuditResult, StateError};
use crate::markup::clean;
use crate::remote::identity::normalized;

/// The version of `guestops history --format json`.
pub const HISTORY_JSON_VERSION: u32 = 1;

/// Which audit records to show; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `--user`: the address, compared trimmed and case-insensitively.
    pub user: Option<String>,
    /// `--since`: records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// `--revision`: a prefix of the revision id (commit id, or `sha256:…` of a file),
    /// case-insensitive.
    pub revision: Option<String>,
}

impl Filter {
    /// Whether `record` passes every filter.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        self.user
            .as_deref()
            .is_none_or(|user| normalized(user) == normalized(&record.user))
            && self.since.is_none_or(|since| record.time >= since)
            && self.revision.as_deref().is_none_or(|prefix| {
                record.revision.as_deref().is_some_and(|rev| {
                    rev.len() >= prefix.len()
                        && rev.is_char_boundary(prefix.len())
                        && rev[..prefix.len()].eq_ignore_ascii_case(prefix)
                })
            })
    }
}

/// `--since`: a date (`2026-12-01`, the start of that day in UTC) or an RFC 3339 time
/// (`2026-12-01T09:30:00+01:00`).
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(date) => Ok(date.and_time(chrono::NaiveTime::MIN).and_utc()),
        Err(_) => Err(format!(
            "`{text}` is neither a date (2026-12-01) nor an RFC 3339 time (2026-12-01T09:30:00Z)"
        )),
    }
}

/// What [`read`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditLog {
    /// The records that matched, in the order of the log (oldest first).
    pub records: Vec<AuditRecord>,
    /// Complete lines read (matching or not).
    pub lines: usize,
    /// The 1-based number of a last line without its newline, skipped.
    pub torn_line: Option<usize>,
}

/// Reads `dir/audit.jsonl` without a lock, keeping the records `filter` matches (a missing
/// file: none).
pub fn read(dir: &Path, filter: &Filter) -> Result<AuditLog, StateError> {
    let path = dir.join(AUDIT_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(AuditLog::default()),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let mut reader = io::BufReader::new(file);
    let mut log = AuditLog::default();
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| StateError::Read {
                path: path.clone(),
                source,
            })?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            log.torn_line = Some(number);
            break;
        }
        log.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: AuditRecord =
            serde_json::from_slice(&line).map_err(|source| StateError::AuditLine {
                path: path.clone(),
                line: number,
                source,
            })?;
        if filter.matches(&record) {
            log.records.push(record);
        }
    }
    Ok(log)
}

/// How `guestops history` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryFormat {
    /// One aligned row per record, the detail below it.
    Text,
    /// One JSON document (`docs/history.md`).
    Json,
}

fn result_name(result: AuditResult) -> &'static str {
    match result {
        AuditResult::Ok => "ok",
        AuditResult::Error => "error",
        AuditResult::Skipped => "skipped",
    }
}

fn system_name(system: super::plan::System) -> &'static str {
    match system {
        super::plan::System::Tenant => "tenant",
        super::plan::System::Portal => "portal",
        super::plan::System::State => "state",
    }
}

/// A revision as shown in a row: 12 digits of a commit, `sha256:` and 12 of a file hash.
fn short_revision(revision: Option<&str>) -> String {
    match revision {
        None => "-".to_owned(),
        Some(rev) => {
            let (prefix, digits) = rev.split_once(':').unwrap_or(("", rev));
            let digits: String = digits.chars().take(12).collect();
            if prefix.is_empty() {
                digits
            } else {
                format!("{prefix}:{digits}")
            }
        }
    }
}

/// Writes `records` in `format`. Text: a header and one row per record (time, result,
/// system, action, user, revision, author, request id), its detail indented below;
/// `No remote writes recorded…` when there are none. Every string from the log is escaped
/// for the terminal.
pub fn render(
    records: &[AuditRecord],
    format: HistoryFormat,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        HistoryFormat::Json => {
            let doc = JsonHistory {
                version: HISTORY_JSON_VERSION,
                count: records.len(),
                records: records.iter().map(JsonRecord::of).collect(),
            };
            serde_json::to_writer_pretty(&mut *out, &doc).map_err(io::Error::from)?;
            out.write_all(b"\n")
        }
        HistoryFormat::Text => render_text(records, out),
    }
}

fn render_text(records: &[AuditRecord], out: &mut dyn Write) -> io::Result<()> {
    if records.is_empty() {
        return writeln!(out, "No remote writes recorded that match.");
    }
    let header = [
        "TIME",
        "RESULT",
        "SYSTEM",
        "ACTION",
        "USER",
        "REVISION",
        "AUTHOR",
        "REQUEST ID",
    ];
    let rows: Vec<[String; 8]> = records
        .iter()
        .map(|r| {
            [
                r.time.to_rfc3339_opts(SecondsFormat::Secs, true),
                result_name(r.result).to_owned(),
                system_name(r.system).to_owned(),
                clean(&r.action).into_owned(),
                clean(&r.user).into_owned(),
                clean(&short_revision(r.revision.as_deref())).into_owned(),
                r.author
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |a| clean(a).into_owned()),
                r.request_id
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |id| clean(id).into_owned()),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        s
    };
    writeln!(out, "{}", line(&header))?;
    for (row, record) in rows.iter().zip(records) {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
        if let Some(detail) = &record.detail {
            writeln!(out, "    {}", clean(detail))?;
        }
    }
    let n = records.len();
    writeln!(out, "\n{n} record{}.", if n == 1 { "" } else { "s" })
}

/// The JSON document of `history --format json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonHistory<'a> {
    version: u32,
    count: usize,
    records: Vec<JsonRecord<'a>>,
}

/// One record: the audit line's fields, with the time in seconds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonRecord<'a> {
    time: String,
    result: &'static str,
    system: &'static str,
    action: &'a str,
    user: &'a str,
    revision: Option<&'a str>,
    author: Option<&'a str>,
    request_id: Option<&'a str>,
    detail: Option<&'a str>,
}

impl<'a> JsonRecord<'a> {
    fn of(r: &'a AuditRecord) -> Self {
        Self {
            time: r.time.to_rfc3339_opts(SecondsFormat::Secs, true),
            result: result_name(r.result),
            system: system_name(r.system),
            action: &r.action,
            user: &r.user,
            revision: r.revision.as_deref(),
            author: r.author.as_deref(),
            request_id: r.request_id.as_deref(),
            detail: r.detail.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::System;
    use chrono::TimeZone as _;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0)
            .single()
            .expect("valid")
    }

    fn record(user: &str, time: DateTime<Utc>, revision: Option<&str>) -> AuditRecord {
        AuditRecord {
            time,
            revision: revision.map(str::to_owned),
            author: Some("Rita Reviewer <rita@contoso.example>".to_owned()),
            action: "invite".to_owned(),
            system: System::Tenant,
            user: user.to_owned(),
            result: AuditResult::Ok,
            detail: None,
            request_id: Some("req-1".to_owned()),
        }
    }

    #[test]
    fn the_user_filter_ignores_case_and_blanks() {
        let r = record("Ana.Silva@Partner.example", at(1, 9), Some("abc"));
        let f = |user: &str| Filter {
            user: Some(user.to_owned()),
            ..Filter::default()
        };
        assert!(f(" ana.silva@partner.EXAMPLE ").matches(&r));
        assert!(!f("ana@partner.example").matches(&r));
        assert!(Filter::default().matches(&r));
    }

    #[test]
    fn since_keeps_records_at_or_after_the_time_and_a_date_is_its_midnight_utc() {
        let since = parse_since("2026-11-02").expect("a date");
        assert_eq!(since, at(2, 0));
        let f = Filter {
            since: Some(since),
            ..Filter::default()
        };
        assert!(!f.matches(&record("a@x.example", at(1, 23), None)));
        assert!(f.matches(&record("a@x.example", at(2, 0), None)));
        assert_eq!(
            parse_since("2026-11-02T10:00:00+01:00").expect("RFC 3339"),
            at(2, 9)
        );
        let err = parse_since("yesterday").unwrap_err();
        assert!(
            err.contains("yesterday") && err.contains("RFC 3339"),
            "{err}"
        );
        assert!(parse_since("2026-02-30").is_err());
    }

    #[test]
    fn the_revision_filter_is_a_case_insensitive_prefix() {
        let commit = record("a@x.example", at(1, 9), Some("1a2b3c4d5e6f7a8b"));
        let file = record("a@x.example", at(1, 9), Some("sha256:00ff11"));
        let none = record("a@x.example", at(1, 9), None);
        let f = |rev: &str| Filter {
            revision: Some(rev.to_owned()),
            ..Filter::default()
        };
        assert!(f("1A2B").matches(&commit));
        assert!(f("1a2b3c4d5e6f7a8b").matches(&commit));
        assert!(
            !f("1a2b3c4d5e6f7a8b0").matches(&commit),
            "longer than the id"
        );
        assert!(!f("2b3c").matches(&commit), "not a prefix");
        assert!(f("sha256:00F").matches(&file));
        assert!(!f("1a").matches(&none), "a record without a revision");
    }

    #[test]
    fn filters_combine() {
        let f = Filter {
            user: Some("a@x.example".to_owned()),
            since: Some(at(2, 0)),
            revision: Some("r2".to_owned()),
        };
        assert!(f.matches(&record("a@x.example", at(3, 0), Some("r2-commit"))));
        assert!(!f.matches(&record("b@x.example", at(3, 0), Some("r2-commit"))));
        assert!(!f.matches(&record("a@x.example", at(1, 0), Some("r2-commit"))));
        assert!(!f.matches(&record("a@x.example", at(3, 0), Some("r1-commit"))));
    }

    fn write_log(dir: &Path, records: &[AuditRecord], tail: &[u8]) {
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend(serde_json::to_vec(r).expect("json"));
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(tail);
        std::fs::write(dir.join(AUDIT_FILE), bytes).expect("write");
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_reported() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let records = [
            record("a@x.example", at(1, 9), Some("r1")),
            record("b@x.example", at(1, 10), Some("r1")),
        ];
        write_log(tmp.path(), &records, b"{\"time\":\"2026-11-01T11:00");
        let log = read(tmp.path(), &Filter::default()).expect("readable");
        assert_eq!(log.records, records);
        assert_eq!(log.torn_line, Some(3));
        assert_eq!(log.lines, 2);

        write_log(tmp.path(), &records, b"");
        let log = read(tmp.path(), &Filter::default()).expect("readable");
        assert_eq!((log.records.len(), log.torn_line), (2, None));
    }

    #[test]
    fn a_bad_complete_line_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut bytes = serde_json::to_vec(&record("a@x.example", at(1, 9), None)).expect("json");
        bytes.extend_from_slice(b"\nnot a record\n");
        bytes.extend(serde_json::to_vec(&record("b@x.example", at(1, 9), None)).expect("json"));
        bytes.push(b'\n');
        std::fs::write(tmp.path().join(AUDIT_FILE), bytes).expect("write");
        let err = read(tmp.path(), &Filter::default()).unwrap_err();
        assert!(
            matches!(err, StateError::AuditLine { line: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("line 2 of"), "{err}");
    }

    #[test]
    fn a_missing_log_is_empty() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = read(&tmp.path().join("nowhere"), &Filter::default()).expect("empty");
        assert_eq!(log, AuditLog::default());
    }

    #[test]
    fn text_rows_are_aligned_escaped_and_carry_every_column() {
        let mut failed = record(
            "evil\u{1b}[31m@x.example",
            at(1, 9),
            Some("1a2b3c4d5e6f7a8b9c"),
        );
        failed.result = AuditResult::Error;
        failed.detail = Some("409 conflict".to_owned());
        failed.request_id = None;
        let rows = [
            record("a@x.example", at(1, 8), Some("sha256:abcdef0123456789")),
            failed,
        ];
        let mut out = Vec::new();
        render(&rows, HistoryFormat::Text, &mut out).expect("render");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!text.contains('\u{1b}'), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME"), "{text}");
        assert!(lines[1].contains("2026-11-01T08:00:00Z"), "{text}");
        assert!(lines[1].contains("sha256:abcdef012345 "), "{text}");
        assert!(
            lines[1].contains("Rita Reviewer <rita@contoso.example>"),
            "{text}"
        );
        assert!(lines[1].ends_with("req-1"), "{text}");
        assert!(lines[2].contains("1a2b3c4d5e6f "), "{text}");
        assert!(lines[2].contains(" error "), "{text}");
        assert_eq!(lines[3], "    409 conflict");
        let column = |line: &str| line.find("invite");
        assert_eq!(column(lines[1]), column(lines[2]), "aligned:\n{text}");
        assert_eq!(lines.last(), Some(&"2 records."));
    }

    #[test]
    fn json_has_one_entry_per_record() {
        let rows = [record("a@x.example", at(1, 8), Some("r1"))];
        let mut out = Vec::new();
        render(&rows, HistoryFormat::Json, &mut out).expect("render");
        let doc: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["count"], 1);
        let r = &doc["records"][0];
        assert_eq!(r["time"], "2026-11-01T08:00:00Z");
        assert_eq!(r["result"], "ok");
        assert_eq!(r["system"], "tenant");
        assert_eq!(r["action"], "invite");
        assert_eq!(r["requestId"], "req-1");
        assert_eq!(r["revision"], "r1");
        assert_eq!(r["detail"], serde_json::Value::Null);
    }
}
