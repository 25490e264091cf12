//! A create that fails or is interrupted leaves every node running and no bundle behind.

use std::process::Command;

use crate::util::*;

fn assert_nothing_left(store: &Store, cluster: &str) {
    let files = store.files(cluster);
    assert!(files.is_empty(), "files left in the store: {files:?}");
}

/// No etcd snapshot copy, journal or lock left in any node.
fn assert_nothing_in_nodes(cluster: &Cluster) {
    for n in cluster.nodes() {
        let left = cluster.sh(
            &n,
            "ls /var/lib/etcd /var/lib/kubectl-snapshot 2>/dev/null | grep -e '\\.db$' -e journal -e lock || true",
        );
        assert_eq!(left.trim(), "", "{n}: left behind: {left}");
    }
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

/// A node whose containerd configuration no longer parses (an edit gone wrong; the running daemon still uses
/// the old one): create fails before anything is frozen, naming the command, among the several that survey
/// every node at once, the node and what containerd printed, once; it leaves nothing behind.
#[test]
fn a_failing_survey_command_is_named_with_its_node_and_output() {
    let cluster = Cluster::up("badcfg", 1, 1);
    let store = Store::new();
    let worker = cluster.worker(1);
    cluster.sh(&worker, "echo '[plugins' >> /etc/containerd/config.toml");
    let run = store.run(&["create", &cluster.name, "broken"]).fails();
    assert_eq!(run.code, Some(1));
    let lower = run.stderr.to_lowercase();
    // containerd's own words (cmd/containerd/server/config: "failed to unmarshal TOML")
    for want in [
        "exporting images",
        "`containerd config dump`",
        &worker,
        "exit code 1",
        "failed to unmarshal toml",
    ] {
        assert!(lower.contains(want), "stderr lacks {want:?}:\n{}", run.stderr);
    }
    assert_eq!(
        lower.matches("failed to unmarshal toml").count(),
        1,
        "error printed more than once:\n{}",
        run.stderr
    );
    assert!(
        !lower.contains("each argument"),
        "the survey's script is shown:\n{}",
        run.stderr
    );
    assert_nothing_left(&store, &cluster.name);
    cluster.assert_running();
}

/// etcd not running on the bootstrap control plane (its kubelet stopped, so nothing restarts it): create fails
/// in its etcd phase saying so, before anything is frozen, and leaves no bundle, copy, journal or lock.
#[test]
fn create_without_a_running_etcd_fails_saying_so_and_leaves_nothing() {
    let cluster = Cluster::up("noetcd", 1, 0);
    let store = Store::new();
    let cp = cluster.cp(1);
    cluster.sh(
        &cp,
        "systemctl stop kubelet && crictl stop $(crictl ps --name '^etcd$' -q) >/dev/null",
    );
    let run = store.run(&["create", &cluster.name, "no-etcd"]).fails();
    assert_eq!(run.code, Some(1));
    for want in ["etcd snapshot", "no running etcd container", &cp, "exit code 1"] {
        assert!(run.stderr.contains(want), "stderr lacks {want:?}:\n{}", run.stderr);
    }
    assert_nothing_left(&store, &cluster.name);
    let left = cluster.sh(
        &cp,
        "ls /var/lib/etcd /var/lib/kubectl-snapshot 2>/dev/null | grep -e '\\.db$' -e journal -e lock || true",
    );
    assert_eq!(left.trim(), "", "left behind: {left}");
    // Nothing was frozen or stopped by create: the other pods still run.
    assert_eq!(
        cluster.inspect(&cp, "{{.State.Status}} {{.State.Paused}}"),
        "running false"
    );
    assert!(cluster.sh(&cp, "crictl ps -q | wc -l").trim() != "0");
    cluster.sh(&cp, "systemctl start kubelet");
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
    assert_nothing_in_nodes(&cluster);
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

/// A signal while the nodes are being thawed (the control plane thawed, the worker not yet): the worker is
/// thawed on the way out too.
#[test]
fn sigterm_while_thawing_thaws_every_node() {
    interrupt("TERM", 143, "create:thawing");
}

/// A disk that fills up while the volumes are read (the store on an 8 MiB tmpfs; the worker holds 32 MiB of
/// volume data, spooled there while the control plane's volumes stream into the bundle): create fails saying
/// so, the nodes are thawed, and nothing is left in the store, on the disk or in the nodes.
#[test]
fn a_disk_that_fills_up_while_volumes_are_read_fails_and_leaves_the_cluster_running() {
    let cluster = Cluster::up("full", 1, 1);
    let worker = cluster.worker(1);
    cluster.sh(
        &worker,
        "d=$(ls -d /var/local-path-provisioner/*/ | head -n1); head -c 33554432 /dev/urandom > $d/big.bin",
    );
    let store = Store::new();
    let _tmpfs = Tmpfs::mount(store.root(), "8m");
    let run = store.run(&["create", &cluster.name, "full"]).fails();
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for want in [
        "copying volumes",
        "No space left on device",
        &store.root().display().to_string(),
    ] {
        assert!(run.stderr.contains(want), "stderr lacks {want:?}:\n{}", run.stderr);
    }
    assert_nothing_left(&store, &cluster.name);
    let used = Command::new("df")
        .args(["--output=used", "-B1"])
        .arg(store.root())
        .output()
        .expect("df");
    let used: u64 = String::from_utf8_lossy(&used.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's used bytes");
    assert!(used < 1 << 20, "{used} bytes still used on the store's filesystem");
    assert_nothing_in_nodes(&cluster);
    cluster.assert_running();
}

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped: as root, or through `sudo -n` (as tests/run
/// installs its packages).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        let out = as_root("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {} failed (run the suite as root or with passwordless sudo): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = as_root("umount").arg(&self.0).status();
    }
}

/// `program`, run as root: directly when this is root, else through `sudo -n`.
fn as_root(program: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"if [ "$(id -u)" -eq 0 ]; then exec "$@"; else exec sudo -n "$@"; fi"#,
        "sh",
        program,
    ]);
    cmd
}
