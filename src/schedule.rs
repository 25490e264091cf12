//! Scheduled snapshots, as k3s takes them (`--etcd-snapshot-schedule-cron`, `--etcd-snapshot-retention`,
//! `--s3-retention`): schedules live in config.toml, each run creates `<schedule>-YYYYMMDD-HHMMSS` (UTC) with the
//! schedule's name in its metadata, and retention then touches only that schedule's snapshots of that cluster —
//! never manual ones, another schedule's or another cluster's (k3s #10292, #9866). Local and remote retention are
//! separate, and a run whose create or push failed prunes nothing remotely.
//!
//! Each run is appended to a run log (`<store>/.schedule-runs.jsonl`, the last [`LOG_KEEP`] runs), which also
//! says when a schedule last ran: a schedule is due when its cron expression fired since then.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::metadata::ImagesMode;

/// Runs kept in the log (older ones are dropped when it grows past twice this).
pub const LOG_KEEP: usize = 500;
const LOG_FILE: &str = ".schedule-runs.jsonl";

/// A schedule, as stored in config.toml under `[schedules.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Schedule {
    pub cluster: String,
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with a leading seconds field.
    pub cron: String,
    /// Local snapshots of this schedule to keep (0: no count limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_last: usize,
    /// Local snapshots of this schedule older than this are removed (`7d`, `12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<crate::util::Span>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub push: bool,
    /// Remote name or URL to push to (default: the default remote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Remote snapshots of this schedule to keep (0: no remote retention).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub remote_keep_last: usize,
    #[serde(default, skip_serializing_if = "is_default_images")]
    pub images: ImagesMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<u32>,
    /// When the schedule was added: a first run is due once the expression fires after this. A schedule written
    /// into config.toml by hand, without it, is due at once.
    #[serde(default)]
    pub created: jiff::Timestamp,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_default_images(m: &ImagesMode) -> bool {
    *m == ImagesMode::All
}

/// Parses a cron expression: the usual 5 fields, or 6 with a leading seconds field.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "cron expression {expr:?} has {fields} fields; expected 5 (minute hour day-of-month month day-of-week, \
             e.g. \"0 */12 * * *\") or 6 with a leading seconds field (e.g. \"*/30 * * * * *\")"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!(
                "invalid cron expression {expr:?}: {e}; expected 5 fields (minute hour day-of-month month \
                 day-of-week) or 6 with a leading seconds field"
            )
        })
}

impl Schedule {
    pub fn cron(&self) -> Result<croner::Cron, String> {
        parse_cron(&self.cron)
    }

    /// The next `n` times the schedule fires after `after`, in the local time zone (as cron does).
    pub fn next_runs(&self, after: jiff::Timestamp, n: usize) -> Vec<jiff::Timestamp> {
        let Ok(cron) = self.cron() else { return Vec::new() };
        let mut out = Vec::with_capacity(n);
        let mut at = after.to_zoned(jiff::tz::TimeZone::system());
        while out.len() < n {
            match cron.find_next_occurrence(&at, false) {
                Ok(next) => {
                    out.push(next.timestamp());
                    at = next;
                }
                Err(_) => break,
            }
        }
        out
    }

    /// Whether the schedule fired after `last` (its last run, else when it was added) and at or before `now`.
    pub fn is_due(&self, last: Option<jiff::Timestamp>, now: jiff::Timestamp) -> bool {
        let since = last.unwrap_or(self.created);
        self.next_runs(since, 1).first().is_some_and(|t| *t <= now)
    }
}

/// The snapshot name of a run: `<schedule>-YYYYMMDD-HHMMSS`, UTC.
pub fn snapshot_name(schedule: &str, at: jiff::Timestamp) -> String {
    format!("{schedule}-{}", at.strftime("%Y%m%d-%H%M%S"))
}

/// Whether a snapshot belongs to a schedule: its metadata names it (the name alone could be a manual one).
pub fn belongs(schedule: &str, metadata_schedule: Option<&str>) -> bool {
    metadata_schedule == Some(schedule)
}

/// One run, as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub schedule: String,
    pub cluster: String,
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_pruned: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The snapshot was created (and pushed, if asked).
    Ok,
    /// Create, push or retention failed: `error` says which.
    Failed,
    /// Another operation held the cluster's lock (the previous run, still going).
    Skipped,
}

pub fn log_path(store_root: &Path) -> PathBuf {
    store_root.join(LOG_FILE)
}

/// Every run logged, oldest first (lines that do not parse are ignored).
pub fn read_log(store_root: &Path) -> Vec<Run> {
    std::fs::read_to_string(log_path(store_root))
        .map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// The last run of `schedule` on record.
pub fn last_run<'a>(log: &'a [Run], schedule: &str) -> Option<&'a Run> {
    log.iter().rev().find(|r| r.schedule == schedule)
}

/// Appends a run; past 2 × [`LOG_KEEP`] lines the log is rewritten (atomically) with the last [`LOG_KEEP`].
pub fn append(store_root: &Path, run: &Run) -> std::io::Result<()> {
    std::fs::create_dir_all(store_root)?;
    let path = log_path(store_root);
    let line = serde_json::to_string(run).map_err(std::io::Error::other)? + "\n";
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?
    };
    f.write_all(line.as_bytes())?;
    // Re-read only when the log may be past its bound (a run's line is well over 100 bytes).
    if f.metadata()?.len() < (2 * LOG_KEEP * 100) as u64 {
        return Ok(());
    }
    let runs = read_log(store_root);
    if runs.len() > 2 * LOG_KEEP {
        let kept: String = runs[runs.len() - LOG_KEEP..]
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .map(|l| l + "\n")
            .collect();
        backends::local::write_atomic(&path, kept.as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str) -> Schedule {
        Schedule {
            cluster: "kind".into(),
            cron: cron.into(),
            keep_last: 0,
            older_than: None,
            push: false,
            remote: None,
            remote_keep_last: 0,
            images: ImagesMode::All,
            compression_level: None,
            created: "2026-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn five_fields_or_six_with_seconds_and_nothing_else() {
        assert!(parse_cron("0 */12 * * *").is_ok());
        assert!(parse_cron("*/30 * * * * *").is_ok());
        for bad in [
            "",
            "* * * *",
            "0 0 * * * * 2026",
            "61 * * * *",
            "every day",
            "0 25 * * *",
        ] {
            let e = parse_cron(bad).expect_err(bad);
            assert!(
                e.contains("expected 5") || e.contains("expected 5 fields"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn due_when_the_expression_fired_since_the_last_run() {
        let s = schedule("*/10 * * * * *");
        let t = |x: &str| -> jiff::Timestamp { x.parse().unwrap() };
        assert!(!s.is_due(Some(t("2026-01-01T00:00:00Z")), t("2026-01-01T00:00:09Z")));
        assert!(s.is_due(Some(t("2026-01-01T00:00:00Z")), t("2026-01-01T00:00:10Z")));
        // Never run: counted from when the schedule was added.
        assert!(s.is_due(None, t("2026-01-01T00:00:10Z")));
        assert!(!s.is_due(None, t("2026-01-01T00:00:05Z")));
        // Many missed firings: due once.
        assert!(s.is_due(Some(t("2026-01-01T00:00:00Z")), t("2026-01-02T00:00:00Z")));
        let next = s.next_runs(t("2026-01-01T00:00:00Z"), 3);
        assert_eq!(
            next,
            [
                t("2026-01-01T00:00:10Z"),
                t("2026-01-01T00:00:20Z"),
                t("2026-01-01T00:00:30Z")
            ]
        );
    }

    #[test]
    fn a_hand_written_schedule_needs_only_cluster_and_cron() {
        let s: Schedule = toml::from_str("cluster = \"kind\"\ncron = \"0 2 * * *\"\nkeep-last = 3\n").unwrap();
        assert_eq!((s.keep_last, s.push), (3, false));
        assert!(s.is_due(None, jiff::Timestamp::now()), "due at once");
        assert!(toml::from_str::<Schedule>("cluster = \"kind\"\ncron = \"0 2 * * *\"\nkeep = 3\n").is_err());
    }

    #[test]
    fn names_and_membership() {
        let at: jiff::Timestamp = "2026-12-02T03:04:05Z".parse().unwrap();
        assert_eq!(snapshot_name("nightly", at), "nightly-20261202-030405");
        assert!(belongs("nightly", Some("nightly")));
        assert!(
            !belongs("nightly", None),
            "a manual snapshot named like a schedule's is not the schedule's"
        );
        assert!(!belongs("nightly", Some("hourly")));
    }

    #[test]
    fn the_log_keeps_the_last_runs() {
        let dir = tempfile::tempdir().unwrap();
        let run = |i: usize| Run {
            schedule: format!("s{}", i % 2),
            cluster: "kind".into(),
            started: jiff::Timestamp::from_second(i as i64).unwrap(),
            finished: jiff::Timestamp::from_second(i as i64 + 1).unwrap(),
            result: Outcome::Ok,
            snapshot: Some(format!("snap-{i}")),
            error: None,
            pushed: None,
            pruned: vec![],
            remote_pruned: vec![],
        };
        for i in 0..(2 * LOG_KEEP + 1) {
            append(dir.path(), &run(i)).unwrap();
        }
        let log = read_log(dir.path());
        assert_eq!(log.len(), LOG_KEEP);
        assert_eq!(log.last().unwrap(), &run(2 * LOG_KEEP));
        assert_eq!(
            last_run(&log, "s1").unwrap().snapshot.as_deref(),
            Some(&*format!("snap-{}", 2 * LOG_KEEP - 1))
        );
    }
}
