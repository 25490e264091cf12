//! A create that fails or is interrupted leaves every node running and no bundle behind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Replaces `ctr` in a node with a wrapper that runs `action` when reading image content (`ctr content
/// get`, what the image phase of create uses) and is `ctr` otherwise.
fn wrap_ctr_content(cluster: &Cluster, node: &str, action: &str) {
    cluster.sh(node, &format!(
        "mv /usr/bin/ctr /usr/bin/ctr.real && printf '%s\\n' '#!/bin/sh' 'case \"$*\" in *\"content get\"*) {action} ;; esac' 'exec /usr/bin/ctr.real \"$@\"' > /usr/bin/ctr && chmod +x /usr/bin/ctr"
    ));
}

fn assert_nothing_left(store: &Store, cluster: &str) {
    let files = store.files(cluster);
    assert!(files.is_empty(), "files left in the store: {files:?}");
}

#[test]
fn failed_image_read_leaves_cluster_running() {
    let cluster = Cluster::up("fail", 1, 1);
    let store = Store::new();
    wrap_ctr_content(
        &cluster,
        &cluster.worker(1),
        "echo \"boom: injected export failure\" >&2; exit 3",
    );
    let run = store.run(&["create", &cluster.name, "broken"]).fails();
    assert_eq!(run.code, Some(1));
    // The error names the phase, the command, the node and shows the command's output, once.
    for want in [
        "exporting images",
        "ctr --namespace=k8s.io content get",
        &cluster.worker(1),
        "exit code 3",
        "boom: injected export failure",
    ] {
        assert!(run.stderr.contains(want), "stderr lacks {want:?}:\n{}", run.stderr);
    }
    assert_eq!(
        run.stderr.matches("boom: injected export failure").count(),
        1,
        "error printed more than once:\n{}",
        run.stderr
    );
    assert_nothing_left(&store, &cluster.name);
    cluster.assert_running();
}

fn interrupt(signal: &str, code: i32) {
    let cluster = Cluster::up("sig", 1, 0);
    let store = Store::new();
    wrap_ctr_content(&cluster, &cluster.cp(1), "sleep 60");
    let mut cmd = store.command(&["create", &cluster.name, "interrupted"]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the cluster is quiesced (kubelet stopped), i.e. mid-create.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("docker")
            .args(["exec", &cluster.cp(1), "systemctl", "is-active", "kubelet"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "inactive" {
            break;
        }
        assert!(Instant::now() < deadline, "create never quiesced the cluster");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("create did not exit after the signal")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(&format!("interrupted by SIG{signal}")), "{stderr}");
    assert_nothing_left(&store, &cluster.name);
    cluster.assert_running();
}

#[test]
fn sigint_mid_create_resumes_cluster() {
    interrupt("INT", 130);
}

#[test]
fn sigterm_mid_create_resumes_cluster() {
    interrupt("TERM", 143);
}
