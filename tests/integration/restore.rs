//! `restore` on each topology, and the failure paths: pre-flight refusals change nothing; a failed staging
//! step changes nothing; a failed switch is rolled back on every node, and where even that fails, `resume`
//! finishes the job from the nodes' journals.

use std::process::Command;

use crate::util::*;

const KEEP: &str = "/registry/test/kept";
const ADDED: &str = "/registry/test/added-later";
const DELETED: &str = "/registry/test/deleted-later";
const IMAGE: &str = "registry.k8s.io/pause:3.10";

fn pv_dir(cluster: &Cluster, node: &str) -> String {
    cluster
        .sh(node, "ls -d /var/local-path-provisioner/*/ | head -n1")
        .trim()
        .trim_end_matches('/')
        .to_owned()
}

/// The value a member holds locally (serializable read against that node's own member).
fn get(cluster: &Cluster, node: &str, key: &str) -> String {
    cluster
        .etcdctl(node, &["get", key, "--consistency=s", "--print-value-only"])
        .trim()
        .to_owned()
}

fn images(cluster: &Cluster, node: &str) -> String {
    cluster.sh(node, "ctr --namespace=k8s.io images ls -q")
}

/// Snapshot, then change everything a restore must undo. Returns the PV state at snapshot time per node.
fn snapshot_then_diverge(cluster: &Cluster, store: &Store) -> Vec<(String, String, String)> {
    cluster.etcdctl(&cluster.cp(1), &["put", KEEP, "at-snapshot"]);
    cluster.etcdctl(&cluster.cp(1), &["put", DELETED, "was-there"]);
    let mut pvs = Vec::new();
    for node in cluster.nodes() {
        let dir = pv_dir(cluster, &node);
        let sums = cluster.sh(
            &node,
            &format!("cd {dir} && sha256sum hello.txt sub/random.bin && readlink link-to-hello"),
        );
        pvs.push((node, dir, sums));
    }
    store.run(&["create", &cluster.name, "snap"]).ok();

    cluster.etcdctl(&cluster.cp(1), &["put", KEEP, "changed-later"]);
    cluster.etcdctl(&cluster.cp(1), &["put", ADDED, "new"]);
    cluster.etcdctl(&cluster.cp(1), &["del", DELETED]);
    for (node, dir, _) in &pvs {
        cluster.sh(
            node,
            &format!(
                "echo overwritten > {dir}/hello.txt && echo later > {dir}/created-later && rm {dir}/sub/random.bin"
            ),
        );
        cluster.sh(node, &format!("ctr --namespace=k8s.io images rm {IMAGE} >/dev/null"));
        assert!(!images(cluster, node).contains(IMAGE));
    }
    pvs
}

fn assert_restored(cluster: &Cluster, pvs: &[(String, String, String)]) {
    for cp in cluster.nodes().iter().filter(|n| n.contains("control-plane")) {
        assert_eq!(
            get(cluster, cp, KEEP),
            "at-snapshot",
            "key changed after the snapshot, on {cp}"
        );
        assert_eq!(
            get(cluster, cp, ADDED),
            "",
            "key added after the snapshot is still there on {cp}"
        );
        assert_eq!(
            get(cluster, cp, DELETED),
            "was-there",
            "key deleted after the snapshot is not back on {cp}"
        );
    }
    for (node, dir, sums) in pvs {
        let now = cluster.sh(
            node,
            &format!("cd {dir} && sha256sum hello.txt sub/random.bin && readlink link-to-hello"),
        );
        assert_eq!(&now, sums, "PV files of {node} differ from snapshot time");
        assert_eq!(
            cluster
                .sh(node, &format!("ls {dir}"))
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["hello.txt", "link-to-hello", "sub"],
            "{node}"
        );
        assert!(images(cluster, node).contains(IMAGE), "{IMAGE} is not back on {node}");
    }
    cluster.assert_running();
}

fn restore_topology(prefix: &str, cps: u32, workers: u32) {
    let cluster = Cluster::up(prefix, cps, workers);
    let store = Store::new();
    let pvs = snapshot_then_diverge(&cluster, &store);
    let run = store.run(&["restore", &cluster.name, "snap", "--json"]).ok();
    let v = run.json();
    assert_eq!(v["ok"], true);
    assert!(
        v["preflight"].as_array().unwrap().iter().all(|c| c["ok"] == true),
        "{}",
        v["preflight"]
    );
    for i in 1..=cps {
        let old = v["previousEtcdData"][&cluster.cp(i)]
            .as_str()
            .unwrap_or_else(|| panic!("no old data for {}", cluster.cp(i)));
        assert!(
            cluster.sh(&cluster.cp(i), &format!("ls {old}")).contains("member"),
            "old etcd data not kept in {old}"
        );
    }
    assert_restored(&cluster, &pvs);
    let members = cluster.etcdctl(&cluster.cp(1), &["member", "list"]);
    assert_eq!(members.lines().count(), cps as usize, "{members}");
    // Staging is gone from the store.
    assert!(
        !store.files(&cluster.name).iter().any(|f| f.starts_with(".restore")),
        "{:?}",
        store.files(&cluster.name)
    );
}

#[test]
fn one_control_plane() {
    restore_topology("r1", 1, 0);
}

#[test]
fn control_plane_and_worker() {
    restore_topology("rw", 1, 1);
}

#[test]
fn three_control_planes() {
    restore_topology("r3", 3, 0);
}

/// Asserts a refused restore: exit 3, each expected message, and the cluster exactly as it was.
fn assert_refused(cluster: &Cluster, store: &Store, extra: &[&str], want: &[&str]) -> Run {
    let mut args = vec!["restore", &cluster.name, "snap"];
    args.extend(extra);
    let run = store.run(&args);
    assert_eq!(
        run.code,
        Some(3),
        "expected a pre-flight refusal:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
    for w in want {
        assert!(run.stderr.contains(w), "stderr lacks {w:?}:\n{}", run.stderr);
    }
    run
}

/// The post-snapshot state is untouched: the changed key, the new PV file, the removed image.
fn assert_untouched(cluster: &Cluster) {
    assert_eq!(get(cluster, &cluster.cp(1), KEEP), "changed-later");
    assert_eq!(get(cluster, &cluster.cp(1), ADDED), "new");
    for node in cluster.nodes() {
        let dir = pv_dir(cluster, &node);
        assert_eq!(cluster.sh(&node, &format!("cat {dir}/created-later")).trim(), "later");
        assert!(!images(cluster, &node).contains(IMAGE));
        assert!(
            !cluster.sh(&node, "ls -a /var/lib/etcd").contains("kubectl-snapshot"),
            "restore files left in {node}"
        );
    }
}

#[test]
fn preflight_integrity() {
    let cluster = Cluster::up("pfi", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    let bundle = store.bundle(&cluster.name, "snap");
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&bundle, bytes).unwrap();
    assert_refused(&cluster, &store, &[], &["bundle sha256 mismatch"]);
    assert_untouched(&cluster);
}

#[test]
fn preflight_disk_space() {
    let cluster = Cluster::up("pfd", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    assert_refused(
        &cluster,
        &store,
        &["--min-free-space", "100T"],
        &["not enough disk space", "100.00 TiB required"],
    );
    assert_untouched(&cluster);
}

#[test]
fn preflight_cluster_running() {
    let cluster = Cluster::up("pfr", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    // etcd stopped the kubeadm way: its manifest moved out of the manifests directory.
    cluster.sh(
        &cluster.cp(1),
        "mv /etc/kubernetes/manifests/etcd.yaml /etc/kubernetes/etcd.yaml.parked && sleep 2",
    );
    assert_refused(&cluster, &store, &[], &["cluster not running", "etcd on"]);
    cluster.sh(
        &cluster.cp(1),
        "mv /etc/kubernetes/etcd.yaml.parked /etc/kubernetes/manifests/etcd.yaml",
    );
    cluster.assert_running();
    assert_untouched(&cluster);
}

#[test]
fn preflight_k8s_version() {
    let cluster = Cluster::up("pfv", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    cluster.sh(&cluster.cp(1), "echo v1.34.0 > /kind/version");
    assert_refused(
        &cluster,
        &store,
        &[],
        &["k8s version mismatch: snapshot=v1.33.1, live=v1.34.0"],
    );
    assert_untouched(&cluster);
}

#[test]
fn preflight_topology() {
    let cluster = Cluster::up("pft", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    // A second node joins the cluster after the snapshot (a labelled node container is what kind sees).
    let image = String::from_utf8(
        Command::new(repo().join("tests/fixtures/node/build"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let extra = format!("{}-worker", cluster.name);
    let ok = Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &extra,
            "--label",
            &format!("io.x-k8s.kind.cluster={}", cluster.name),
            "--label",
            "io.x-k8s.kind.role=worker",
            "--entrypoint",
            "/bin/sleep",
            image.trim(),
            "600",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_refused(
        &cluster,
        &store,
        &[],
        &["topology mismatch: snapshot=1 nodes, live=2 nodes"],
    );
    let _ = Command::new("docker").args(["rm", "-f", &extra]).output();
    assert_untouched(&cluster);
}

#[test]
fn preflight_addons() {
    let cluster = Cluster::up("pfa", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    upgrade_addon(&cluster);
    assert_refused(
        &cluster,
        &store,
        &[],
        &["addon version mismatch: local-path-provisioner snapshot=v20250214-acbabc1a, live=v9.9.9"],
    );
    assert_untouched(&cluster);
}

fn upgrade_addon(cluster: &Cluster) {
    let repo = "docker.io/kindest/local-path-provisioner";
    cluster.upgrade_addon(
        &cluster.cp(1),
        "local-path-provisioner.yaml",
        "local-path-provisioner",
        &format!("{repo}:v20250214-acbabc1a"),
        &format!("{repo}:v9.9.9"),
    );
}

#[test]
fn preflight_schema_and_platform() {
    let cluster = Cluster::up("pfs", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    let dir = store.root().join(&cluster.name);
    // A bundle from a newer kubectl-snapshot (consistent sidecar): refused for its schema.
    rewrite_metadata(&dir, "snap", "future", |m| m["schemaVersion"] = 99.into());
    let run = store.run(&["restore", &cluster.name, "future"]);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains("schema version 99 is not supported"),
        "{}",
        run.stderr
    );
    // A bundle taken on another architecture.
    rewrite_metadata(&dir, "snap", "arm", |m| m["platform"] = "linux/arm64".into());
    let run = store.run(&["restore", &cluster.name, "arm"]);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains("platform mismatch: snapshot=linux/arm64"),
        "{}",
        run.stderr
    );
    assert_untouched(&cluster);
}

#[test]
fn preflight_reports_every_violation_at_once() {
    let cluster = Cluster::up("pfm", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    cluster.sh(&cluster.cp(1), "echo v1.34.0 > /kind/version");
    upgrade_addon(&cluster);
    let run = store.run(&["restore", &cluster.name, "snap", "--min-free-space", "100T", "--json"]);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    for w in [
        "k8s version mismatch",
        "addon version mismatch",
        "not enough disk space",
    ] {
        assert!(run.stderr.contains(w), "stderr lacks {w:?}:\n{}", run.stderr);
    }
    let v = run.json();
    assert_eq!(v["ok"], false);
    let failed: Vec<&str> = v["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["disk space", "k8s version", "addons"]);
    assert_untouched(&cluster);
}

/// The state from before the restore: the snapshot's changes undone (the diverged values are live again).
fn assert_diverged(cluster: &Cluster, pvs: &[(String, String, String)]) {
    assert_eq!(
        get(cluster, &cluster.cp(1), KEEP),
        "changed-later",
        "etcd is not the pre-restore data"
    );
    assert_eq!(get(cluster, &cluster.cp(1), ADDED), "new");
    for (node, dir, _) in pvs {
        assert_eq!(
            cluster.sh(node, &format!("cat {dir}/hello.txt")).trim(),
            "overwritten",
            "{node}: volumes are not the pre-restore data"
        );
    }
    cluster.assert_running();
}

/// Replaces `mv` on a node: its renames of volume roots fail when their count passes `test` (`-eq 2`: the
/// second only; `-ge 2`: the second and every later one).
fn break_pv_renames(cluster: &Cluster, node: &str, test: &str) {
    cluster.sh(node, &format!("rm /bin/mv && printf '%s\\n' '#!/bin/sh' 'case \"$*\" in *local-path-provisioner*) c=$(cat /tmp/mv-count 2>/dev/null || echo 0); c=$((c+1)); echo $c > /tmp/mv-count; if [ $c {test} ]; then echo \"mv exploded\" >&2; exit 5; fi ;; esac' 'exec /bin/busybox mv \"$@\"' > /bin/mv && chmod +x /bin/mv"));
}

#[test]
fn a_failed_switch_rolls_every_node_back() {
    let cluster = Cluster::up("rfail", 1, 1);
    let store = Store::new();
    let pvs = snapshot_then_diverge(&cluster, &store);
    // The worker's new volume root cannot be renamed in (its old one was already moved aside); by then the
    // control plane's etcd data has been switched. Both must go back.
    break_pv_renames(&cluster, &cluster.worker(1), "-eq 2");
    let run = store.run(&["restore", &cluster.name, "snap"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for w in [
        "restore failed while switching etcd data and volumes",
        "mv exploded",
        "rolled back: etcd data and volumes are as they were before the restore",
    ] {
        assert!(run.stderr.contains(w), "stderr lacks {w:?}:\n{}", run.stderr);
    }
    assert_diverged(&cluster, &pvs);
    // Nothing staged is left behind, and the next restore is not refused.
    let left = cluster.sh(
        &cluster.cp(1),
        "ls -a /var /var/lib /var/lib/etcd | grep kubectl-snapshot || true",
    );
    assert_eq!(left.trim(), "kubectl-snapshot", "leftovers: {left}");
}

#[test]
fn a_failed_rollback_leaves_journals_that_resume_rollback_completes() {
    let cluster = Cluster::up("rfail2", 1, 1);
    let store = Store::new();
    let pvs = snapshot_then_diverge(&cluster, &store);
    // Every volume-root rename after the first fails: the switch, then its rollback.
    let worker = cluster.worker(1);
    break_pv_renames(&cluster, &worker, "-ge 2");
    let run = store.run(&["restore", &cluster.name, "snap"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let hint = format!("kubectl snapshot resume {} --rollback", cluster.name);
    for w in ["rolling back failed too", "left quiesced", &hint] {
        assert!(run.stderr.contains(w), "stderr lacks {w:?}:\n{}", run.stderr);
    }
    // Any other command now says what to run.
    let again = store.run(&["create", &cluster.name, "meanwhile"]);
    assert!(
        again.stderr.contains("has an unfinished restore") && again.stderr.contains("kubectl snapshot resume"),
        "{}",
        again.stderr
    );
    cluster.sh(&worker, "rm /bin/mv && ln -s busybox /bin/mv");
    let resumed = store.run(&["resume", &cluster.name, "--rollback"]).ok();
    assert!(resumed.stdout.contains("rolled back the restore"), "{}", resumed.stdout);
    assert_diverged(&cluster, &pvs);
}

#[test]
fn failed_image_import_changes_no_etcd_data_or_volume() {
    let cluster = Cluster::up("rimg", 1, 0);
    let store = Store::new();
    snapshot_then_diverge(&cluster, &store);
    let cp = cluster.cp(1);
    cluster.sh(&cp, "mv /usr/bin/ctr /usr/bin/ctr.real && printf '%s\\n' '#!/bin/sh' 'case \"$*\" in *\"images import\"*) echo \"import exploded\" >&2; exit 5 ;; esac' 'exec /usr/bin/ctr.real \"$@\"' > /usr/bin/ctr && chmod +x /usr/bin/ctr");
    let run = store.run(&["restore", &cluster.name, "snap"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for w in [
        "restore failed while re-importing images",
        "import exploded",
        "nothing was changed: the cluster kept running",
    ] {
        assert!(run.stderr.contains(w), "stderr lacks {w:?}:\n{}", run.stderr);
    }
    assert_untouched(&cluster);
    cluster.assert_running();
}

/// Rewrites a bundle's metadata into a new snapshot `to`, with a consistent sidecar (as another tool would).
fn rewrite_metadata(dir: &std::path::Path, from: &str, to: &str, edit: impl Fn(&mut serde_json::Value)) {
    use std::io::{Read, Write};
    let src = std::fs::File::open(dir.join(format!("{from}.tar.gz"))).unwrap();
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(src));
    let out = std::fs::File::create(dir.join(format!("{to}.tar.gz"))).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(out, flate2::Compression::fast()));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if e.path().unwrap().to_str() == Some("metadata.json") {
            let mut m: serde_json::Value = serde_json::from_slice(&data).unwrap();
            edit(&mut m);
            data = serde_json::to_vec(&m).unwrap();
            h.set_size(data.len() as u64);
            h.set_cksum();
        }
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
    let bytes = std::fs::read(dir.join(format!("{to}.tar.gz"))).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    std::fs::write(
        dir.join(format!("{to}.tar.gz.sha256")),
        format!("{digest}  {to}.tar.gz\n"),
    )
    .unwrap();
}
