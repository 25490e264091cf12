//! A create that fails or is interrupted leaves every node running and no bundle behind.

use crate::util::*;

/// Replaces `ctr` in a node with a wrapper that runs `action` when reading image content (`ctr content
/// get`, what the image phase of create uses) and is `ctr` otherwise.
fn assert_nothing_left(store: &Store, cluster: &str) {
    let files = store.files(cluster);
    assert!(files.is_empty(), "files left in the store: {files:?}");
}

#[test]
fn failed_image_read_leaves_cluster_running() {
    let cluster = Cluster::up("fail", 1, 1);
    let store = Store::new();
    // A content store that lists a manifest it no longer holds (a disk that lost a file).
    let worker = cluster.worker(1);
    let digest = cluster.sh(
        &worker,
        "ctr --namespace=k8s.io images ls | awk 'NR > 1 && $3 ~ /^sha256:/ { print $3; exit }'",
    );
    let hex = digest
        .trim()
        .strip_prefix("sha256:")
        .expect("an image digest")
        .to_owned();
    cluster.sh(
        &worker,
        &format!("rm /var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/{hex}"),
    );
    let run = store.run(&["create", &cluster.name, "broken"]).fails();
    assert_eq!(run.code, Some(1));
    // The error names the phase, the command, the node and shows the command's output, once.
    // (busybox's sh says "no such file", dash's "No such file or directory")
    let lower = run.stderr.to_lowercase();
    for want in ["exporting images", "wc -c", &worker, "exit code 1", "no such file"] {
        assert!(lower.contains(want), "stderr lacks {want:?}:\n{}", run.stderr);
    }
    assert_eq!(
        lower.matches("no such file").count(),
        1,
        "error printed more than once:\n{}",
        run.stderr
    );
    assert_nothing_left(&store, &cluster.name);
    cluster.assert_running();
}

/// A signal at a phase of create (reached through its pause point): exit 128+n, the cluster resumed, no
/// bundle and nothing in the nodes left behind.
fn interrupt(signal: &str, code: i32, phase: &str) {
    let cluster = Cluster::up("sig", 1, 1);
    let store = Store::new();
    let run = store
        .spawn_paused(&["create", &cluster.name, "interrupted"], phase)
        .signal(signal);
    assert_eq!(run.code, Some(code), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("interrupted by SIG{signal}")),
        "{}",
        run.stderr
    );
    assert_nothing_left(&store, &cluster.name);
    for n in cluster.nodes() {
        let left = cluster.sh(
            &n,
            "ls /var/lib/etcd /var/lib/kubectl-snapshot 2>/dev/null | grep -e '\\.db$' -e journal -e lock || true",
        );
        assert_eq!(left.trim(), "", "{n}: left behind: {left}");
    }
    cluster.assert_running();
}

#[test]
fn sigint_while_images_are_read_leaves_nothing() {
    interrupt("INT", 130, "create:images");
}

#[test]
fn sigterm_while_frozen_thaws_the_cluster() {
    interrupt("TERM", 143, "create:quiesced");
}
