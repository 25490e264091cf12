//! Crash safety: a signal or a SIGKILL at each phase of create and restore, two operations at once. After
//! each, etcd and the volumes come from the same point in time (after `resume` where the tool asks for it),
//! nothing is left in the nodes, and the workloads were not restarted by a create.
//! Phases are reached through the documented pause points (`KUBECTL_SNAPSHOT_PAUSE_AT`).

use std::process::Command;
use std::time::Duration;

use crate::util::*;

const KEY: &str = "/registry/test/crash";

/// `snap` (the snapshot's data) or `live` (what was there before the restore); panics on a mix.
fn state(cluster: &Cluster) -> &'static str {
    let etcd = cluster
        .etcdctl(&cluster.cp(1), &["get", KEY, "--print-value-only"])
        .trim()
        .to_owned();
    let mut pvs = Vec::new();
    for n in cluster.nodes() {
        let v = cluster.sh(&n, "cat /var/local-path-provisioner/*/crash.txt");
        pvs.push(v.trim().to_owned());
    }
    let all = |want: &str| etcd == want && pvs.iter().all(|p| p == want);
    if all("snap") {
        "snap"
    } else if all("live") {
        "live"
    } else {
        panic!("etcd and volumes disagree: etcd={etcd:?}, volumes={pvs:?}")
    }
}

fn set(cluster: &Cluster, value: &str) {
    cluster.etcdctl(&cluster.cp(1), &["put", KEY, value]);
    for n in cluster.nodes() {
        cluster.sh(
            &n,
            &format!("for d in /var/local-path-provisioner/*/; do echo {value} > $d/crash.txt; done"),
        );
    }
}

/// Nothing of an operation stays in the nodes: no staged data, no etcd snapshot copy, no lock, no unfinished
/// journal (a finished restore's journal stays for `resume --rollback`).
fn assert_clean(cluster: &Cluster) {
    for n in cluster.nodes() {
        let left = cluster.sh(
            &n,
            "ls -a /var /opt /var/lib /var/lib/etcd 2>/dev/null | grep -e kubectl-snapshot-stage -e etcd.kubectl-snapshot-new \
             -e kubectl-snapshot-restore -e 'kubectl-snapshot-.*\\.db' ; ls /var/lib/kubectl-snapshot 2>/dev/null | grep lock; \
             grep -L '\"phase\": \"done\"' /var/lib/kubectl-snapshot/journal.json 2>/dev/null; true",
        );
        assert_eq!(left.trim(), "", "{n}: left behind:\n{left}");
        assert_eq!(cluster.inspect(&n, "{{.State.Status}}"), "running", "{n}");
    }
}

fn ready(prefix: &str) -> (Cluster, Store) {
    let cluster = Cluster::up(prefix, 1, 1);
    let store = Store::new();
    set(&cluster, "snap");
    store.run(&["create", &cluster.name, "snap"]).ok();
    (cluster, store)
}

#[test]
fn sigint_and_sigterm_during_restore_end_all_old_or_all_new() {
    let (cluster, store) = ready("rsig");
    // Before the commit: undone, nothing changed. From the commit on: completed.
    for (phase, signal, code, want) in [
        ("restore:prepare", "INT", 130, "live"),
        ("restore:committed", "TERM", 143, "snap"),
        ("restore:quiesced", "INT", 130, "snap"),
        ("restore:switched", "TERM", 143, "snap"),
        // The first signal while waiting for etcd after the switch: completed (it counted as a second one and
        // exited 1 saying the cluster did not come back); SIGHUP, a closed terminal, as SIGTERM (it killed the
        // process at once, exit 129 with no message, leaving the cluster quiesced).
        ("restore:resuming", "TERM", 143, "snap"),
        ("restore:committed", "HUP", 129, "snap"),
    ] {
        set(&cluster, "live");
        let run = store
            .spawn_paused(&["restore", &cluster.name, "snap"], phase)
            .signal(signal);
        assert_eq!(run.code, Some(code), "{phase}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("interrupted by SIG{signal}")),
            "{phase}: {}",
            run.stderr
        );
        assert_eq!(state(&cluster), want, "{phase}: {}", run.stderr);
        assert_clean(&cluster);
    }
    cluster.assert_running();
}

#[test]
fn sigkill_during_restore_then_resume_completes_or_undoes_it() {
    let (cluster, store) = ready("rkill");
    for (phase, want) in [
        ("restore:prepare", "live"),
        ("restore:committed", "snap"),
        ("restore:quiesced", "snap"),
        ("restore:switched", "snap"),
    ] {
        set(&cluster, "live");
        let run = store
            .spawn_paused(&["restore", &cluster.name, "snap"], phase)
            .signal("KILL");
        assert_eq!(run.code, None, "killed");
        // The dead holder's lock is taken over; the unfinished restore is named, with what to run.
        let refused = store.run(&["restore", &cluster.name, "snap"]);
        assert_eq!(refused.code, Some(1), "{phase}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("has an unfinished restore")
                && refused
                    .stderr
                    .contains(&format!("kubectl snapshot resume {}", cluster.name)),
            "{phase}: {}",
            refused.stderr
        );
        let resumed = store.run(&["resume", &cluster.name]).ok();
        assert_eq!(state(&cluster), want, "{phase}: {}", resumed.stdout);
        assert_clean(&cluster);
        cluster.assert_running();
    }
    // The last restore completed: --rollback puts the data from before it back, once confirmed.
    let rolled = store.run(&["resume", &cluster.name, "--rollback", "--yes"]).ok();
    assert!(rolled.stdout.contains("rolled back the restore"), "{}", rolled.stdout);
    assert_eq!(state(&cluster), "live");
    assert_clean(&cluster);
    cluster.assert_running();
}

/// Container IDs the CRI reports on every node: a restarted pod gets new ones.
fn containers(cluster: &Cluster) -> Vec<String> {
    let mut ids: Vec<String> = cluster
        .nodes()
        .iter()
        .flat_map(|n| {
            cluster
                .sh(n, "crictl ps -q")
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn create_freezes_instead_of_stopping_and_a_killed_create_is_thawed_by_resume() {
    let cluster = Cluster::up("frz", 1, 1);
    let store = Store::new();
    let before = containers(&cluster);
    assert!(!before.is_empty());

    // While the volumes are read, every node is frozen, not stopped.
    let paused = store.spawn_paused(&["create", &cluster.name, "one"], "create:quiesced");
    for n in cluster.nodes() {
        assert_eq!(cluster.inspect(&n, "{{.State.Paused}}"), "true", "{n}");
    }
    let run = paused.signal("INT");
    assert_eq!(run.code, Some(130), "{}", run.stderr);
    assert!(run.stderr.contains("interrupted by SIGINT"), "{}", run.stderr);
    assert_clean(&cluster);
    assert!(
        store.files(&cluster.name).is_empty(),
        "{:?}",
        store.files(&cluster.name)
    );

    // SIGKILL while frozen: the nodes stay frozen; every command names it, resume thaws them.
    let killed = store.spawn_paused(&["create", &cluster.name, "two"], "create:quiesced");
    let pid = killed.pid();
    killed.signal("KILL");
    let refused = store.run(&["create", &cluster.name, "three"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    for w in [
        "is paused by an interrupted `create`".to_string(),
        format!("pid {pid}"),
        format!("kubectl snapshot resume {}", cluster.name),
    ] {
        assert!(refused.stderr.contains(&w), "stderr lacks {w:?}:\n{}", refused.stderr);
    }
    let resumed = store.run(&["resume", &cluster.name]).ok();
    assert!(resumed.stdout.contains("thawed"), "{}", resumed.stdout);
    assert_clean(&cluster);

    // SIGKILL before the freeze (images being read): nothing is frozen, but the journal is left; the next
    // create names the unfinished one, resume cleans up.
    store
        .spawn_paused(&["create", &cluster.name, "five"], "create:images")
        .signal("KILL");
    let refused = store.run(&["create", &cluster.name, "six"]);
    assert!(
        refused.stderr.contains("has an unfinished create") && refused.stderr.contains("kubectl snapshot resume"),
        "{}",
        refused.stderr
    );
    store.run(&["resume", &cluster.name]).ok();
    assert_clean(&cluster);

    // A create that completes: no pod was restarted by any of this.
    let done = store.run(&["create", &cluster.name, "four", "--json"]).ok().json();
    assert!(
        !done["warnings"].to_string().contains("could not freeze"),
        "{}",
        done["warnings"]
    );
    assert_eq!(containers(&cluster), before, "containers were restarted");
    assert_clean(&cluster);
    cluster.assert_running();
}

#[test]
fn one_mutating_operation_at_a_time() {
    let (cluster, store) = ready("lock");
    set(&cluster, "live");
    let holder = store.spawn_paused(&["restore", &cluster.name, "snap"], "restore:prepare");
    let pid = holder.pid();
    for args in [
        vec!["create", cluster.name.as_str(), "meanwhile"],
        vec!["restore", cluster.name.as_str(), "snap"],
        vec!["resume", cluster.name.as_str()],
    ] {
        let run = store.run(&args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.stderr);
        let want = format!("is busy: `restore` (pid {pid} on host");
        assert!(run.stderr.contains(&want), "{args:?}: {}", run.stderr);
    }
    let run = holder.signal("INT");
    assert_eq!(run.code, Some(130), "{}", run.stderr);
    assert_eq!(state(&cluster), "live");
    assert_clean(&cluster);
    store.run(&["create", &cluster.name, "after"]).ok();
}

#[test]
fn an_explicit_daemon_is_the_only_one_used() {
    // A cluster of that name exists on the local daemon: it must not be reached through a fallback.
    let cluster = Cluster::up("dsel", 1, 0);
    let store = Store::new();
    let dead = store.root().join("no-daemon.sock");
    let host = format!("unix://{}", dead.display());
    for (env, names) in [
        (vec![("DOCKER_HOST", host.as_str())], vec!["docker", host.as_str()]),
        (
            vec![("KIND_EXPERIMENTAL_PROVIDER", "podman"), ("DOCKER_HOST", host.as_str())],
            vec!["podman", host.as_str()],
        ),
    ] {
        for args in [
            vec!["create", cluster.name.as_str(), "x"],
            vec!["resume", cluster.name.as_str()],
        ] {
            let run = store.run_env(&args, &env);
            assert_eq!(run.code, Some(1), "{env:?} {args:?}: {}", run.stderr);
            assert!(run.stderr.contains("cannot reach the"), "{env:?}: {}", run.stderr);
            for n in &names {
                assert!(
                    run.stderr.contains(n),
                    "{env:?}: the error does not name {n}: {}",
                    run.stderr
                );
            }
        }
    }
    assert!(store.files(&cluster.name).is_empty());
    // The provider recorded is the daemon that answered.
    let v = store.run(&["create", &cluster.name, "ok", "--json"]).ok().json();
    assert_eq!(v["metadata"]["provider"], "docker");
}

#[test]
fn a_lock_held_elsewhere_blocks_until_its_heartbeat_stops() {
    let cluster = Cluster::up("stale", 1, 0);
    let store = Store::new();
    let cp = cluster.cp(1);
    let plant = |heartbeat: &str| {
        cluster.sh(
            &cp,
            &format!(
                "mkdir -p /var/lib/kubectl-snapshot/lock && printf '%s' '{{\"pid\":4242,\"host\":\"another-host\",\
                 \"command\":\"restore\",\"since\":\"2026-01-01T00:00:00Z\",\"heartbeat\":\"{heartbeat}\",\"id\":\"x\"}}' \
                 > /var/lib/kubectl-snapshot/lock/holder.json"
            ),
        );
    };
    // A process on another host sharing the daemon, alive (its heartbeat is fresh): refused, named.
    plant(&jiff::Timestamp::now().to_string());
    let run = store.run(&["create", &cluster.name, "blocked"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("is busy: `restore` (pid 4242 on host another-host)"),
        "{}",
        run.stderr
    );
    // Its heartbeat stopped long ago: the lock is taken over.
    plant(&(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600)).to_string());
    store.run(&["create", &cluster.name, "after-stale"]).ok();
    // A lock whose holder was killed before it could describe itself (an empty lock directory) too.
    cluster.sh(&cp, "mkdir -p /var/lib/kubectl-snapshot/lock");
    store.run(&["create", &cluster.name, "after-empty"]).ok();
    assert_clean(&cluster);
}

#[test]
fn a_stopped_control_plane_is_named_before_anything_is_tried() {
    let cluster = Cluster::up("down", 1, 0);
    let store = Store::new();
    store.run(&["create", &cluster.name, "snap"]).ok();
    let cp = cluster.cp(1);
    let out = std::process::Command::new("docker")
        .args(["stop", "-t", "1", &cp])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for args in [["create", &cluster.name, "again"], ["restore", &cluster.name, "snap"]] {
        let run = store.run(&args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.stderr);
        let want = format!("node {cp} is exited, not running; start the cluster first (`docker start {cp}`)");
        assert!(run.stderr.contains(&want), "{args:?}: {}", run.stderr);
    }
}

/// The lock is exclusive under every interleaving: creates started together over a stale lock (its holder's
/// heartbeat stopped long ago) take it over once. Exactly one proceeds (it stops at a pause point, holding the
/// lock), the lock is its own, and every other says the cluster is busy. Before, a takeover renamed away
/// whatever `lock` was by then, so a second create could move the first one's fresh lock aside, take its own,
/// then fail on the first one's journal (telling the user to run `resume` meanwhile) and release: the first
/// create ran on without a lock.
#[test]
fn creates_started_together_over_a_stale_lock_take_it_over_once() {
    use std::io::Read;
    use std::process::Stdio;
    let cluster = Cluster::up("takeover", 1, 0);
    let store = Store::new();
    let cp = cluster.cp(1);
    const RACERS: usize = 4;
    for round in 0..12 {
        let stale = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600)).to_string();
        cluster.sh(
            &cp,
            &format!(
                "rm -rf /var/lib/kubectl-snapshot/lock && mkdir -p /var/lib/kubectl-snapshot/lock && printf '%s' \
                 '{{\"pid\":4242,\"host\":\"another-host\",\"command\":\"restore\",\"since\":\"{stale}\",\
                 \"heartbeat\":\"{stale}\",\"id\":\"dead{round}x{}\"}}' > /var/lib/kubectl-snapshot/lock/holder.json",
                std::process::id()
            ),
        );
        let mut racers: Vec<std::process::Child> = (0..RACERS)
            .map(|i| {
                store
                    .command(&["create", &cluster.name, &format!("r{round}-{i}"), "--images", "none"])
                    .env("KUBECTL_SNAPSHOT_PAUSE_AT", "create:images")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        // Each racer either exits (it did not get the lock) or stops at the pause point holding it.
        let logs: Vec<std::sync::Arc<std::sync::Mutex<String>>> = racers
            .iter_mut()
            .map(|c| {
                let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
                let (mut err, sink) = (c.stderr.take().unwrap(), log.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = err.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                });
                log
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let (mut exited, mut paused) = (Vec::new(), Vec::new());
        loop {
            exited.clear();
            paused.clear();
            for (i, c) in racers.iter_mut().enumerate() {
                if let Some(status) = c.try_wait().unwrap() {
                    exited.push((i, status));
                } else if logs[i].lock().unwrap().contains("paused at create:images") {
                    paused.push(i);
                }
            }
            if exited.len() + paused.len() == RACERS {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: racers neither exited nor paused"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let holder = cluster.sh(&cp, "cat /var/lib/kubectl-snapshot/lock/holder.json 2>&1 || true");
        for i in &paused {
            let _ = Command::new("kill")
                .args(["-TERM", &racers[*i].id().to_string()])
                .status();
        }
        for c in racers.iter_mut() {
            let _ = c.wait();
        }
        assert_eq!(paused.len(), 1, "round {round}: {} racers hold the lock", paused.len());
        let pid = racers[paused[0]].id();
        assert!(
            holder.contains(&format!("\"pid\":{pid},")),
            "round {round}: the lock is not the holder's: {holder}"
        );
        for (i, status) in &exited {
            let err = logs[*i].lock().unwrap().clone();
            assert_eq!(status.code(), Some(1), "round {round}: {err}");
            assert!(err.contains("is busy"), "round {round}: {err}");
        }
    }
    assert_clean(&cluster);
}

/// `resume --rollback` never destroys data. Rolling back a restore that completed (the cluster has run on its
/// data since, for days perhaps) must be confirmed: without `--yes` and off a terminal it is refused, naming
/// that restore, and nothing changes. Confirmed, the data from before the restore comes back, and what was
/// live is kept aside on the nodes, named. Before, it rolled back at once, and the work written since was
/// deleted from etcd and the volumes and kept nowhere.
#[test]
fn rolling_back_a_completed_restore_asks_first_and_keeps_what_was_live() {
    let (cluster, store) = ready("rollback");
    set(&cluster, "live");
    store.run(&["restore", &cluster.name, "snap"]).ok();
    assert_eq!(state(&cluster), "snap");
    // Work done on the restored cluster.
    cluster.etcdctl(&cluster.cp(1), &["put", KEY, "work"]);
    for n in cluster.nodes() {
        cluster.sh(
            &n,
            "for d in /var/local-path-provisioner/*/; do echo work > $d/crash.txt; done",
        );
    }

    let refused = store.run(&["resume", &cluster.name, "--rollback"]).fails();
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    for w in [
        "the last restore, of snapshot \"snap\"",
        "completed",
        "--rollback --yes",
    ] {
        assert!(refused.stderr.contains(w), "stderr lacks {w:?}:\n{}", refused.stderr);
    }
    let work = cluster.etcdctl(&cluster.cp(1), &["get", KEY, "--print-value-only"]);
    assert_eq!(work.trim(), "work", "a refused rollback changed etcd");

    let v = store
        .run(&["resume", &cluster.name, "--rollback", "--yes", "--json"])
        .ok()
        .json();
    assert_eq!(state(&cluster), "live");
    let kept: Vec<String> = v["kept"]
        .as_array()
        .expect("kept")
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    for n in cluster.nodes() {
        let pv = kept
            .iter()
            .find_map(|k| k.strip_prefix(&format!("{n}:/var/local-path-provisioner.old-")))
            .unwrap_or_else(|| panic!("{n}: its volumes are not kept: {kept:?}"));
        let got = cluster.sh(&n, &format!("cat /var/local-path-provisioner.old-{pv}/*/crash.txt"));
        assert_eq!(got.trim(), "work", "{n}");
    }
    assert!(
        kept.iter()
            .any(|k| k.starts_with(&format!("{}:/var/lib/etcd.old-", cluster.cp(1)))),
        "{kept:?}"
    );
    cluster.assert_running();
}

/// Old copies have a lifecycle: once a restore completes, the nodes keep only its own copies of the data it
/// replaced (for `resume --rollback`); older ones, and what dead restores staged, are removed. Before, every
/// restore left a full etcd copy (every Secret in it) and a volume copy behind, forever.
#[test]
fn after_five_restores_only_the_last_ones_copies_remain() {
    let (cluster, store) = ready("copies");
    let worker = cluster.worker(1);
    cluster.sh(&worker, "mkdir -p /var/.kubectl-snapshot-stage-deadbeef/x");
    for _ in 0..5 {
        store.run(&["restore", &cluster.name, "snap"]).ok();
    }
    let mut all = Vec::new();
    for n in cluster.nodes() {
        let copies = cluster.sh(
            &n,
            "for d in /var/lib/etcd.old-* /var/local-path-provisioner.old-* /var/.kubectl-snapshot-stage-*; do \
             [ -e \"$d\" ] && echo \"$d\"; done; true",
        );
        let copies: Vec<&str> = copies.lines().collect();
        let journal = cluster.sh(&n, "cat /var/lib/kubectl-snapshot/journal.json");
        let want = if n == cluster.cp(1) { 2 } else { 1 };
        assert_eq!(copies.len(), want, "{n}: {copies:?}");
        for c in &copies {
            assert!(
                journal.contains(&format!("\"aside\": \"{c}\"")),
                "{n}: {c} is not the last restore's"
            );
        }
        all.extend(copies.iter().map(|c| format!("{n}:{c}")));
    }
    // resume names what is kept and what it takes.
    let report = store.run(&["resume", &cluster.name, "-o", "json"]).ok().json();
    let mut named: Vec<String> = report["keptOnNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert!(k["size"].as_u64().unwrap() > 0, "{k}");
            format!("{}:{}", k["node"].as_str().unwrap(), k["path"].as_str().unwrap())
        })
        .collect();
    named.sort();
    all.sort();
    assert_eq!(named, all);
    cluster.assert_running();
}
