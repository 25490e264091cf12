//! Scheduled snapshots on fixture clusters, with a cron expression that has a seconds field: runs, naming,
//! retention scoped to the schedule, a failing run, pushes with remote retention (S3), and the service files.

use std::time::Duration;

use crate::remote::{AK, S3, SECRET};
use crate::util::*;

/// A private config file for the test's schedules and remotes.
struct Env {
    _dir: tempfile::TempDir,
    config: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml").display().to_string();
        Self { _dir: dir, config }
    }
    fn vars(&self) -> Vec<(&str, &str)> {
        vec![
            ("KUBECTL_SNAPSHOT_CONFIG", self.config.as_str()),
            ("AWS_ACCESS_KEY_ID", AK),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ]
    }
}

/// Snapshot names with the schedule each one's metadata names (None: a manual one).
fn snapshots(store: &Store, env: &Env, cluster: &str, remote: &[String]) -> Vec<(String, Option<String>)> {
    let mut args = vec!["list", cluster, "-o", "json"];
    args.extend(remote.iter().map(String::as_str));
    let listed = store.run_env(&args, &env.vars()).ok().json();
    let mut out: Vec<(String, Option<String>)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let mut show = vec!["show", cluster, name.as_str(), "-o", "json"];
            show.extend(remote.iter().map(String::as_str));
            let meta = store.run_env(&show, &env.vars()).ok().json();
            (name, meta["schedule"].as_str().map(str::to_owned))
        })
        .collect();
    out.sort();
    out
}

fn runs(store: &Store, env: &Env, schedule: &str) -> Vec<serde_json::Value> {
    let listed = store
        .run_env(&["schedule", "list", "-o", "json"], &env.vars())
        .ok()
        .json();
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == schedule)
        .unwrap_or_else(|| panic!("no schedule {schedule}: {listed}"))["runs"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn runs_are_named_after_their_schedule_and_retention_touches_only_them() {
    let cluster = Cluster::up("sched", 1, 0);
    let c = cluster.name.as_str();
    let store = Store::new();
    let env = Env::new();
    let vars = env.vars();
    // A manual snapshot, and a manual one named like the schedule's: neither is the schedule's.
    store
        .run_env(&["create", c, "manual-1", "--images", "none"], &vars)
        .ok();
    store
        .run_env(&["create", c, "nightly-20200101-000000", "--images", "none"], &vars)
        .ok();
    let bad = store.run_env(&["schedule", "add", "bad", c, "--cron", "61 * * * *"], &vars);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("expected 5 fields"), "{}", bad.stderr);
    store
        .run_env(
            &[
                "schedule",
                "add",
                "nightly",
                c,
                "--cron",
                "* * * * * *",
                "--keep-last",
                "2",
                "--images",
                "none",
            ],
            &vars,
        )
        .ok();
    // Another schedule that is not due during the test.
    store
        .run_env(
            &[
                "schedule",
                "add",
                "yearly",
                c,
                "--cron",
                "0 0 1 1 *",
                "--keep-last",
                "1",
            ],
            &vars,
        )
        .ok();
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..3 {
        let r = store.run_env(&["schedule", "run"], &vars).ok();
        assert!(r.stdout.contains("nightly: created nightly-"), "{}", r.stdout);
        assert!(
            !r.stdout.contains("yearly"),
            "a schedule that was not due ran: {}",
            r.stdout
        );
        std::thread::sleep(Duration::from_millis(1100));
    }
    let all = snapshots(&store, &env, c, &[]);
    let mine: Vec<&str> = all
        .iter()
        .filter(|(_, s)| s.as_deref() == Some("nightly"))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(mine.len(), 2, "retention keeps exactly the last 2: {all:?}");
    assert!(
        mine.iter()
            .all(|n| n.starts_with("nightly-20") && n.len() == "nightly-".len() + 15)
    );
    for manual in ["manual-1", "nightly-20200101-000000"] {
        assert!(
            all.iter().any(|(n, s)| n == manual && s.is_none()),
            "{manual} was pruned: {all:?}"
        );
    }
    let log = runs(&store, &env, "nightly");
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log.iter().all(|r| r["result"] == "ok"), "{log:?}");
    // Newest first: the third run pruned the first run's snapshot.
    assert_eq!(log[0]["pruned"], serde_json::json!([log[2]["snapshot"]]));
    assert!(runs(&store, &env, "yearly").is_empty());

    // A run while the cluster is busy (the previous run still going, here a paused create) is skipped, says so,
    // and changes nothing.
    let before = snapshots(&store, &env, c, &[]);
    let busy = store.spawn_paused(&["create", c, "busy", "--images", "none"], "create:images");
    let skipped = store.run_env(&["schedule", "run", "nightly"], &vars).ok();
    assert!(skipped.stdout.contains("nightly: skipped"), "{}", skipped.stdout);
    assert_eq!(runs(&store, &env, "nightly")[0]["result"], "skipped");
    let interrupted = busy.signal("INT");
    assert_eq!(interrupted.code, Some(130), "{}", interrupted.stderr);
    assert_eq!(snapshots(&store, &env, c, &[]), before);

    // `run --watch` stays in the foreground and runs the schedule on time until interrupted.
    let runs_before = runs(&store, &env, "nightly").len();
    let mut watch = store.command(&["schedule", "run", "nightly", "--watch"]);
    watch
        .envs(vars.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = watch.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Bounded: a watch that ignores the signal is killed and the test fails.
    let mut child = child;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("schedule run --watch did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let watched = runs(&store, &env, "nightly").len() - runs_before;
    assert!(
        watched >= 2,
        "--watch ran {watched} times in 6 s of a schedule firing every second"
    );
    let kept = snapshots(&store, &env, c, &[]);
    assert_eq!(
        kept.iter().filter(|(_, s)| s.as_deref() == Some("nightly")).count(),
        2,
        "{kept:?}"
    );

    // A failing run (the cluster is stopped) records its error and prunes nothing.
    let before = snapshots(&store, &env, c, &[]);
    let node = cluster.cp(1);
    assert!(
        std::process::Command::new("docker")
            .args(["stop", "-t", "1", &node])
            .status()
            .unwrap()
            .success()
    );
    let failed = store.run_env(&["schedule", "run", "nightly"], &vars);
    assert_eq!(failed.code, Some(1), "{}\n{}", failed.stdout, failed.stderr);
    assert!(failed.stdout.contains("nightly: failed"), "{}", failed.stdout);
    let last = &runs(&store, &env, "nightly")[0];
    assert_eq!(last["result"], "failed", "{last}");
    assert!(last["error"].as_str().unwrap().contains(&node), "{last}");
    assert!(last.get("pruned").is_none(), "{last}");
    assert_eq!(
        snapshots(&store, &env, c, &[]),
        before,
        "a failed run changed the snapshots"
    );
}

#[test]
fn pushed_runs_keep_their_own_count_on_the_remote() {
    let s3 = S3::start();
    let cluster = Cluster::up("schedpush", 1, 0);
    let c = cluster.name.as_str();
    let store = Store::new();
    let env = Env::new();
    let vars = env.vars();
    let endpoint = format!("127.0.0.1:{}", s3.port);
    store
        .run_env(
            &[
                "remote",
                "add",
                "team",
                "s3://snaps/team",
                "--s3-endpoint",
                &endpoint,
                "--s3-insecure",
            ],
            &vars,
        )
        .ok();
    store.run_env(&["create", c, "manual", "--images", "none"], &vars).ok();
    store.run_env(&["push", c, "manual", "--remote", "team"], &vars).ok();
    store
        .run_env(
            &[
                "schedule",
                "add",
                "hourly",
                c,
                "--cron",
                "* * * * * *",
                "--push",
                "--remote",
                "team",
                "--remote-keep-last",
                "1",
                "--images",
                "none",
            ],
            &vars,
        )
        .ok();
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..2 {
        let r = store.run_env(&["schedule", "run", "hourly"], &vars).ok();
        assert!(r.stdout.contains("pushed to s3://snaps/team"), "{}", r.stdout);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let local = snapshots(&store, &env, c, &[]);
    assert_eq!(
        local.iter().filter(|(_, s)| s.as_deref() == Some("hourly")).count(),
        2,
        "local retention is separate (none set): {local:?}"
    );
    let remote = snapshots(&store, &env, c, &["--remote".into(), "team".into()]);
    let newest = runs(&store, &env, "hourly")[0]["snapshot"].as_str().unwrap().to_owned();
    let mut expected = vec![(newest, Some("hourly".to_owned())), ("manual".to_owned(), None)];
    expected.sort();
    assert_eq!(
        remote, expected,
        "the remote keeps the newest run and the manual snapshot"
    );
    assert_eq!(
        runs(&store, &env, "hourly")[0]["remotePruned"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn install_writes_verified_units_and_uninstall_removes_them() {
    let store = Store::new();
    let env = Env::new();
    let xdg = tempfile::tempdir().unwrap();
    let mut vars = env.vars();
    let xdg_path = xdg.path().display().to_string();
    vars.push(("XDG_CONFIG_HOME", &xdg_path));
    let dry = store
        .run_env(&["schedule", "install", "--dry-run", "--manager", "systemd"], &vars)
        .ok();
    let service = xdg.path().join("systemd/user/kubectl-snapshot-schedule.service");
    let timer = xdg.path().join("systemd/user/kubectl-snapshot-schedule.timer");
    assert!(
        dry.stdout.contains(&format!("# would write {}", service.display())),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("schedule run"), "{}", dry.stdout);
    assert!(!service.exists(), "a dry run wrote a file");
    let cron = store
        .run_env(&["schedule", "install", "--dry-run", "--manager", "cron"], &vars)
        .ok();
    assert!(
        cron.stdout.contains("* * * * * KUBECTL_SNAPSHOT_DIR="),
        "{}",
        cron.stdout
    );
    // Installing runs `systemd-analyze verify` on the units where it exists (it does on the test machines);
    // --no-enable leaves the machine's own service manager alone.
    let installed = store
        .run_env(&["schedule", "install", "--manager", "systemd", "--no-enable"], &vars)
        .ok();
    assert!(
        installed
            .stdout
            .contains("systemctl --user enable --now kubectl-snapshot-schedule.timer"),
        "{}",
        installed.stdout
    );
    let unit = std::fs::read_to_string(&service).unwrap();
    assert!(unit.contains("ExecStart=") && unit.contains(&env.config), "{unit}");
    assert!(
        std::fs::read_to_string(&timer)
            .unwrap()
            .contains("OnCalendar=*-*-* *:*:00")
    );
    store
        .run_env(&["schedule", "uninstall", "--manager", "systemd", "--no-enable"], &vars)
        .ok();
    assert!(!service.exists() && !timer.exists());
}

/// The paths a unit and a crontab line name are escaped for what reads them (systemd specifiers and quoting,
/// cron's `%`), and a path neither can carry (a newline would start another setting or cron job) is refused
/// before any file is written.
#[test]
fn install_escapes_paths_for_systemd_and_cron_and_refuses_what_they_cannot_carry() {
    let store = Store::new();
    let xdg = tempfile::tempdir().unwrap();
    let odd = tempfile::tempdir().unwrap();
    let config = odd.path().join("we%h\"ird $HOME\\x 'q/config.toml");
    let config_text = config.display().to_string();
    let xdg_path = xdg.path().display().to_string();
    let vars = [
        ("XDG_CONFIG_HOME", xdg_path.as_str()),
        ("KUBECTL_SNAPSHOT_CONFIG", config_text.as_str()),
    ];
    let service = xdg.path().join("systemd/user/kubectl-snapshot-schedule.service");
    store
        .run_env(&["schedule", "install", "--manager", "systemd", "--no-enable"], &vars)
        .ok();
    let unit = std::fs::read_to_string(&service).unwrap();
    let quoted = config_text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    assert!(
        unit.contains(&format!("Environment=\"KUBECTL_SNAPSHOT_CONFIG={quoted}\"\n")),
        "{unit}"
    );
    let cron = store
        .run_env(&["schedule", "install", "--manager", "cron", "--dry-run"], &vars)
        .ok();
    assert!(
        cron.stdout.contains("we\\%h") && !cron.stdout.contains("we%h"),
        "cron would turn % into a newline: {}",
        cron.stdout
    );
    store
        .run_env(&["schedule", "uninstall", "--manager", "systemd", "--no-enable"], &vars)
        .ok();
    assert!(!service.exists());

    let injected = odd
        .path()
        .join("x\nExecStartPre=/bin/sh -c 'touch /tmp/pwned'\n/config.toml")
        .display()
        .to_string();
    let vars = [
        ("XDG_CONFIG_HOME", xdg_path.as_str()),
        ("KUBECTL_SNAPSHOT_CONFIG", injected.as_str()),
    ];
    for manager in ["systemd", "cron"] {
        let refused = store
            .run_env(&["schedule", "install", "--manager", manager, "--no-enable"], &vars)
            .fails();
        assert!(refused.stderr.contains("control character"), "{}", refused.stderr);
        assert!(!refused.stdout.contains("\nExecStartPre"), "{}", refused.stdout);
    }
    assert!(!service.exists(), "a unit was written for a path it cannot carry");
}
