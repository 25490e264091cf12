//! Bad input gets a clear error and changes nothing.

use std::process::Command;

use crate::util::*;

#[test]
fn invalid_snapshot_names_are_refused() {
    let store = Store::new();
    for bad in ["../etc", "a/b", ".hidden", "with space"] {
        let run = store.run(&["create", "some-cluster", bad]).fails();
        assert!(run.stderr.contains("invalid snapshot name"), "{bad}: {}", run.stderr);
        assert_eq!(run.code, Some(2), "a usage error: {bad}");
    }
    let run = store.run(&["create", "c", "one", "--name", "two"]).fails();
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("two snapshot names"), "{}", run.stderr);
}

#[test]
fn malformed_sizes_and_durations() {
    let store = Store::new();
    let run = store.run(&["prune", "c", "--max-size", "10X"]).fails();
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("invalid size \"10X\""), "{}", run.stderr);
    let run = store.run(&["prune", "c", "--older-than", "7"]).fails();
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("invalid duration \"7\""), "{}", run.stderr);
    let run = store.run(&["prune", "c", "--keep-last", "-1"]).fails();
    assert_eq!(run.code, Some(2));
}

#[test]
fn unknown_cluster_names_the_existing_ones() {
    let store = Store::new();
    let run = store.run(&["create", "no-such-cluster-xyz"]).fails();
    assert!(
        run.stderr.contains("kind cluster \"no-such-cluster-xyz\" not found"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("existing clusters:") || run.stderr.contains("there are no kind clusters"),
        "{}",
        run.stderr
    );
}

/// Stand-ins for two clusters' nodes: labelled containers are all kind's discovery looks at.
struct FakeNode(String);
impl Drop for FakeNode {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[test]
fn two_clusters_and_no_name_is_ambiguous() {
    let image = String::from_utf8(
        Command::new(repo().join("tests/fixtures/node/build"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let (a, b) = (unique("amb-a"), unique("amb-b"));
    let mut nodes = Vec::new();
    for c in [&a, &b] {
        let node = format!("{c}-control-plane");
        let ok = Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                &node,
                "--label",
                &format!("io.x-k8s.kind.cluster={c}"),
                "--label",
                "io.x-k8s.kind.role=control-plane",
                "--entrypoint",
                "/bin/sleep",
                image.trim(),
                "300",
            ])
            .output()
            .unwrap();
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        nodes.push(FakeNode(node));
    }
    let store = Store::new();
    let run = store.run(&["create"]).fails();
    assert!(run.stderr.contains("several kind clusters found ("), "{}", run.stderr);
    assert!(run.stderr.contains(&a) && run.stderr.contains(&b), "{}", run.stderr);
    assert!(store.files(&a).is_empty() && store.files(&b).is_empty());
}

#[test]
fn credentials_in_endpoint_urls_are_refused_and_never_stored_or_echoed() {
    let store = Store::new();
    let cfg = store.root().join("config.toml");
    let env = [("KUBECTL_SNAPSHOT_CONFIG", cfg.to_str().unwrap())];
    for args in [
        vec!["remote", "add", "team", "oci://bob:hunter2@127.0.0.1:5000/team"],
        vec![
            "remote",
            "add",
            "team",
            "s3://bucket/x",
            "--s3-endpoint",
            "bob:hunter2@127.0.0.1:9000",
        ],
        vec!["push", "c", "snap", "--remote", "oci://bob:hunter2@127.0.0.1:5000/team"],
    ] {
        let run = store.run_env(&args, &env);
        assert_ne!(run.code, Some(0), "{args:?}");
        assert!(
            run.stderr.contains("had credentials before '@'"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("hunter2") && !run.stdout.contains("hunter2"),
            "{args:?}: echoed"
        );
        let stored = std::fs::read_to_string(&cfg).unwrap_or_default();
        assert!(!stored.contains("hunter2"), "stored: {stored}");
    }
}

#[test]
fn a_closed_stdout_ends_quietly_and_older_than_0_means_off() {
    let store = Store::new();
    for i in 0..4 {
        fake_snapshot(&store, "c", &format!("s{i}"), 1024, i);
    }
    // `kubectl snapshot list c | head -0`: the reader is gone before anything is written.
    for args in [
        vec!["list", "c"],
        vec!["list", "c", "-o", "json"],
        vec!["show", "c", "s0"],
        vec!["prune", "c", "--keep-last", "1", "--dry-run"],
        vec!["delete", "c", "s3"],
    ] {
        let mut child = store
            .command(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // 0 turns the age policy off; with another policy the plan is that policy's alone.
    let run = store
        .run(&["prune", "c", "--keep-last", "2", "--older-than", "0", "--dry-run"])
        .ok();
    let deleted: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("DELETE"))
        .collect();
    assert_eq!(deleted.len(), 1, "{}", run.stdout);
    assert!(
        deleted[0].contains("s2") && deleted[0].contains("most recent"),
        "{}",
        run.stdout
    );
}
