//! What breaks on a real kind node and not on a lenient fixture (issue: real kind clusters). Each test fails
//! on the plugin as it was before the matching fix:
//! - a pulled image whose layers containerd discarded (kind's `discard_unpacked_layers = true`): kept by
//!   reference when its registry is unreachable, fetched into the bundle when kind's local registry serves it;
//! - HA restore and resume with kind's external load balancer present (no systemd, kubelet or crictl in it);
//! - addon versions read from what `crictl ps` reports: image IDs, with the pod's image name beside them
//!   (containerd 2.x) or without it (containerd 1.7: names come from `crictl images`);
//! - restore with each etcd image layout (k8s-3.5: no etcdutl, bash-static as sh and no `ls`; k8s-3.6: the same
//!   with an etcdctl 3.6 that cannot restore, on one and on three control planes; official: no shell);
//! - the etcd revision moves forward across a restore (`--bump-revision`);
//! - create changes no image record, not even one the CRI pulled whose tag moved in the registry since, and
//!   re-import gives a record back its labels.

use crate::util::*;

const PULLED: &str = "localhost:5001/fixture-pulled:1.0";
const KEY: &str = "/registry/test/real-kind";

fn revision(cluster: &Cluster) -> i64 {
    let out = cluster.etcdctl(&cluster.cp(1), &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("endpoint status JSON");
    v[0]["Status"]["header"]["revision"].as_i64().expect("revision")
}

#[test]
fn create_keeps_pulled_images_with_discarded_layers_by_reference() {
    let cluster = Cluster::up("pulled", 1, 1);
    let store = Store::new();
    // The fixture state is what a CRI pull leaves: the image is listed, its layer blob is gone.
    let node = cluster.cp(1);
    assert!(
        cluster
            .sh(&node, "ctr --namespace=k8s.io images ls -q")
            .contains(PULLED)
    );

    let run = store.run(&["create", &cluster.name, "all", "--json"]).ok();
    assert!(
        run.stderr.contains(&format!("image {PULLED} kept by reference")),
        "{}",
        run.stderr
    );
    let v = run.json();
    assert_eq!(v["metadata"]["images"]["mode"], "all");
    for n in cluster.nodes() {
        let by_ref = v["metadata"]["images"]["nodes"][&n]["byReference"]
            .as_array()
            .unwrap_or_else(|| panic!("no byReference for {n}: {v}"));
        assert!(by_ref.iter().any(|r| r["name"] == PULLED), "{n}: {by_ref:?}");
        let bundled = v["metadata"]["images"]["nodes"][&n]["images"].as_array().unwrap();
        assert!(
            bundled.iter().any(|r| r["name"] == "registry.k8s.io/pause:3.10"),
            "complete images are still bundled: {bundled:?}"
        );
        assert!(!bundled.iter().any(|r| r["name"] == PULLED));
    }
    let show = store.run(&["show", &cluster.name, "all"]).ok();
    assert!(
        show.stdout.contains("Images By Reference") && show.stdout.contains(PULLED),
        "{}",
        show.stdout
    );

    // local: nothing fetched, same outcome; none: no images at all, and a smaller bundle.
    let local = store
        .run(&["create", &cluster.name, "local", "--images", "local", "--json"])
        .ok()
        .json();
    assert_eq!(local["metadata"]["images"]["mode"], "local");
    assert!(
        local["metadata"]["images"]["nodes"][&node]["byReference"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == PULLED)
    );
    let none = store
        .run(&["create", &cluster.name, "none", "--images", "none", "--json"])
        .ok()
        .json();
    assert_eq!(none["metadata"]["images"]["blobs"], 0);
    assert!(none["metadata"]["images"]["nodes"].as_object().unwrap().is_empty());
    assert!(
        bundle_names(&store.bundle(&cluster.name, "none"))
            .iter()
            .all(|n| !n.starts_with("images/"))
    );

    // The snapshot restores; the image kept by reference is left to the kubelet, the others are re-imported.
    cluster.sh(
        &node,
        "ctr --namespace=k8s.io images rm registry.k8s.io/pause:3.10 >/dev/null",
    );
    store.run(&["restore", &cluster.name, "all"]).ok();
    assert!(
        cluster
            .sh(&node, "ctr --namespace=k8s.io images ls -q")
            .contains("registry.k8s.io/pause:3.10")
    );
    cluster.assert_running();
}

/// Whether containerd has every blob of `image` in the node's k8s.io namespace (`ctr images check`).
fn complete(cluster: &Cluster, node: &str, image: &str) -> bool {
    let out = cluster.sh(node, "ctr --namespace=k8s.io images check");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{image} ")))
        .unwrap_or_else(|| panic!("{image} not in the node:\n{out}"));
    line.contains(" complete ")
}

#[test]
fn create_fetches_discarded_layers_from_the_kind_local_registry_so_the_bundle_restores_offline() {
    // kind's local-registry setup: a registry on the kind network, containerd's hosts.toml in each node.
    let cluster = Cluster::up_with("fetch", 1, 1, &["--registry"]);
    let store = Store::new();
    for n in cluster.nodes() {
        assert!(
            !complete(&cluster, &n, PULLED),
            "{n}: the fixture should have discarded the layers"
        );
    }

    let run = store.run(&["create", &cluster.name, "snap", "--json"]).ok();
    assert!(!run.stderr.contains("kept by reference"), "{}", run.stderr);
    let v = run.json();
    for n in cluster.nodes() {
        let node = &v["metadata"]["images"]["nodes"][&n];
        assert!(
            node.get("byReference").is_none_or(|r| r.as_array().unwrap().is_empty()),
            "{n}: {node}"
        );
        assert!(
            node["images"].as_array().unwrap().iter().any(|r| r["name"] == PULLED),
            "{n}: {PULLED} bundled: {node}"
        );
    }

    // Offline: the registry is gone and the image is removed from a node; restore brings it back whole.
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", &format!("{}-registry", cluster.name)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let worker = remove_pulled_from_the_worker_and_restore(&cluster, &store);
    assert!(complete(&cluster, &worker, PULLED), "the restored image lacks blobs");
    cluster.assert_running();
}

/// Removes the pulled image from the worker and restores snapshot `snap`, which re-imports it there.
fn remove_pulled_from_the_worker_and_restore(cluster: &Cluster, store: &Store) -> String {
    let worker = cluster.worker(1);
    cluster.sh(
        &worker,
        &format!("ctr --namespace=k8s.io images rm --sync {PULLED} >/dev/null"),
    );
    let restored = store.run(&["restore", &cluster.name, "snap", "--json"]).ok().json();
    assert!(
        restored["importedImages"][&worker]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i == PULLED)),
        "{restored}"
    );
    worker
}

/// Every image record of a node as `ctr images ls` prints it: name, target (type, digest, size), platforms
/// and labels.
fn image_records(cluster: &Cluster, node: &str) -> Vec<String> {
    let out = cluster.sh(node, "ctr --namespace=k8s.io images ls");
    let mut lines: Vec<String> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
}

/// A snapshot leaves the cluster as it was: no node's image record changes, not even that of an image the
/// kubelet pulled (through the CRI: its labels, its `repo@digest` record, its layers discarded) whose tag has
/// moved in the registry since. Before, create fetched the discarded layers with `ctr content fetch TAG`, which
/// resolved the tag anew and rewrote the record (containerd `client.Fetch` → `createNewImage`): the tag then
/// named the registry's new image, and the snapshot kept the old one by reference. Re-import then restores the
/// record's labels (kind's pin among them) and adds no `import-<date>@` records.
#[test]
fn create_leaves_every_image_record_as_it_was_though_a_pulled_tag_moved() {
    let cluster = Cluster::up_with("records", 1, 1, &["--registry"]);
    let store = Store::new();
    let nodes = cluster.nodes();
    for n in &nodes {
        let socket = cluster.containerd_socket(n);
        kubectl_snapshot_testkit::cri::pull(&socket, PULLED)
            .unwrap_or_else(|e| panic!("{n}: the kubelet's pull through the CRI (needs root: {socket}): {e}"));
        // kind pins the images it preloads (kind pkg/build/nodeimage/imageimporter.go)
        cluster.sh(
            n,
            &format!("ctr --namespace=k8s.io images label {PULLED} io.cri-containerd.pinned=pinned >/dev/null"),
        );
        assert!(
            !complete(&cluster, n, PULLED),
            "{n}: the CRI's pull should have discarded the layers"
        );
    }
    let pulled_digest = |n: &str| {
        image_records(&cluster, n)
            .into_iter()
            .find(|l| l.starts_with(&format!("{PULLED} ")))
            .and_then(|l| l.split(' ').nth(2).map(str::to_owned))
            .unwrap_or_default()
    };
    let old = pulled_digest(&nodes[0]);
    let before: Vec<Vec<String>> = nodes.iter().map(|n| image_records(&cluster, n)).collect();
    assert!(
        before[0]
            .iter()
            .any(|l| l.starts_with(&format!("{PULLED} ")) && l.contains("io.cri-containerd.image=managed")),
        "{before:?}"
    );
    // The tag moves in the registry: someone pushed a new image under it.
    cluster.fixture(&["registry-push", &cluster.name, PULLED, "2"]);

    let v = store.run(&["create", &cluster.name, "snap", "--json"]).ok().json();
    let after: Vec<Vec<String>> = nodes.iter().map(|n| image_records(&cluster, n)).collect();
    assert_eq!(before, after, "create changed image records");
    for n in &nodes {
        let node = &v["metadata"]["images"]["nodes"][n];
        let bundled = node["images"].as_array().unwrap().iter().find(|r| r["name"] == PULLED);
        assert_eq!(
            bundled.map(|r| r["digest"].clone()),
            Some(old.clone().into()),
            "{n}: {node}"
        );
        assert!(!complete(&cluster, n, PULLED), "{n}: create stored layers in the node");
    }

    // Removed from the worker, then restored: the record is back as it was, labels included, and nothing else.
    let worker = remove_pulled_from_the_worker_and_restore(&cluster, &store);
    let records = image_records(&cluster, &worker);
    let line = records
        .iter()
        .find(|l| l.starts_with(&format!("{PULLED} ")))
        .expect("re-imported");
    assert!(
        line.contains(&old) && line.contains("io.cri-containerd.pinned=pinned"),
        "{line}"
    );
    assert!(!records.iter().any(|l| l.starts_with("import-")), "{records:#?}");
    cluster.assert_running();
}

#[test]
fn ha_restore_and_resume_leave_the_load_balancer_alone() {
    let cluster = Cluster::up("halb", 2, 1);
    let store = Store::new();
    let lb = cluster.lb();
    assert_eq!(
        cluster.inspect(&lb, "{{index .Config.Labels \"io.x-k8s.kind.role\"}}"),
        "external-load-balancer"
    );
    let started = cluster.inspect(&lb, "{{.State.StartedAt}}");

    cluster.etcdctl(&cluster.cp(1), &["put", KEY, "before"]);
    let created = store.run(&["create", &cluster.name, "snap", "--json"]).ok().json();
    assert_eq!(created["metadata"]["topology"]["loadBalancer"], true);
    cluster.etcdctl(&cluster.cp(1), &["put", KEY, "after"]);

    store.run(&["restore", &cluster.name, "snap"]).ok();
    for cp in [cluster.cp(1), cluster.cp(2)] {
        let got = cluster.etcdctl(&cp, &["get", KEY, "--consistency=s", "--print-value-only"]);
        assert_eq!(got.trim(), "before", "{cp}");
    }
    store.run(&["resume", &cluster.name]).ok();
    assert_eq!(cluster.inspect(&lb, "{{.State.Status}}"), "running");
    assert_eq!(
        cluster.inspect(&lb, "{{.State.StartedAt}}"),
        started,
        "the load balancer was restarted"
    );
    cluster.assert_running();
}

#[test]
fn addon_versions_come_from_image_ids_and_a_changed_addon_is_refused() {
    let cluster = Cluster::up("addons", 1, 0);
    let store = Store::new();
    let node = cluster.cp(1);
    // What a real kubelet makes crictl report: image IDs as the images, the pod's image name beside them.
    let ps = cluster.sh(&node, "crictl ps -o json");
    assert!(ps.contains("\"image\": \"sha256:"), "{ps}");
    assert!(
        ps.contains("\"userSpecifiedImage\": \"docker.io/kindest/kindnetd:v20250512-df8de77b\""),
        "{ps}"
    );
    let addons_of = |run: &Run| {
        let v = run.json();
        assert_eq!(
            v["metadata"]["addons"]["kindnetd"], "v20250512-df8de77b",
            "{}",
            v["metadata"]["addons"]
        );
        assert_eq!(v["metadata"]["addons"]["local-path-provisioner"], "v20250214-acbabc1a");
        assert!(
            v["metadata"]["etcd"]["image"].as_str().unwrap().contains("etcd"),
            "etcd image named: {}",
            v["metadata"]["etcd"]
        );
    };
    // containerd 2.x: the names are in `crictl ps`, so `crictl images` is not asked.
    let run = store.run(&["-v", "create", &cluster.name, "snap", "--json"]).ok();
    addons_of(&run);
    assert!(!run.stderr.contains("crictl images"), "{}", run.stderr);
    // containerd 1.7 (cri-api v0.27) has no userSpecifiedImage: the IDs are named through `crictl images`.
    cluster.sh(&node, "touch /run/fixture-cri/cri-api-v0.27");
    let run = store.run(&["-v", "create", &cluster.name, "snap-1-7", "--json"]).ok();
    addons_of(&run);
    assert!(run.stderr.contains("crictl images -o json -> exit 0"), "{}", run.stderr);

    // Upgrade kindnet: restore must refuse, naming both versions.
    let repo = "docker.io/kindest/kindnetd";
    cluster.upgrade_addon(
        &node,
        "kindnet.yaml",
        "kindnet",
        &format!("{repo}:v20250512-df8de77b"),
        &format!("{repo}:v20260101-upgraded"),
    );
    let run = store.run(&["restore", &cluster.name, "snap"]);
    assert_eq!(run.code, Some(3), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("addon version mismatch: kindnetd snapshot=v20250512-df8de77b, live=v20260101-upgraded"),
        "{}",
        run.stderr
    );
}

fn restore_on_layout(layout: &str, control_planes: u32) {
    let name = format!("etcd-{}-{control_planes}", layout.replace('.', ""));
    let cluster = Cluster::up_with(&name, control_planes, 0, &["--etcd", layout]);
    let store = Store::new();
    let manifest = cluster.sh(&cluster.cp(1), "cat /etc/kubernetes/manifests/etcd.yaml");
    let (image, want) = match layout {
        "official" => ("gcr.io/etcd-development/etcd:v", "etcdutl"),
        "k8s-3.5" => ("registry.k8s.io/etcd:3.5.", "etcdctl"),
        // etcdctl is 3.6 (no `snapshot restore`), and the image has no `ls`: the bundled 3.5 copy restores.
        _ => ("registry.k8s.io/etcd:3.6.4-0", "etcdctl-3.5."),
    };
    assert!(manifest.contains(&format!("image: {image}")), "{manifest}");

    cluster.etcdctl(&cluster.cp(1), &["put", KEY, "before"]);
    store.run(&["create", &cluster.name, "snap"]).ok();
    cluster.etcdctl(&cluster.cp(1), &["put", KEY, "after"]);
    for i in 0..20 {
        cluster.etcdctl(&cluster.cp(1), &["put", &format!("{KEY}-{i}"), "x"]);
    }
    let before = revision(&cluster);

    let v = store.run(&["restore", &cluster.name, "snap", "--json"]).ok().json();
    let tool = v["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "etcd restore tool")
        .cloned()
        .expect("restore tool check");
    let found = tool["message"].as_str().unwrap_or_default();
    assert!(
        if want == "etcdctl-3.5." {
            found.starts_with(want)
        } else {
            found == want
        },
        "{tool}: want {want}"
    );
    for i in 1..=control_planes {
        let got = cluster.etcdctl(&cluster.cp(i), &["get", KEY, "--consistency=s", "--print-value-only"]);
        assert_eq!(got.trim(), "before", "on {}", cluster.cp(i));
    }
    let after = revision(&cluster);
    assert!(
        after > before,
        "the revision went back from {before} to {after}: watchers would miss the rollback"
    );
    assert!(
        v["etcdRevisionBump"].as_u64().is_some_and(|b| b >= 1_000_000_000),
        "{v}"
    );
    cluster.assert_running();
}

#[test]
fn restore_with_the_k8s_3_5_etcd_image_layout() {
    restore_on_layout("k8s-3.5", 1);
}

/// kindest/node v1.34 (kind v0.30's default): registry.k8s.io/etcd:3.6.4-0.
#[test]
fn restore_with_the_k8s_3_6_etcd_image_layout() {
    restore_on_layout("k8s-3.6", 1);
}

/// kind's HA layout on kindest/node v1.34: three control planes and the external load balancer.
#[test]
fn restore_three_control_planes_with_the_k8s_3_6_etcd_image_layout() {
    restore_on_layout("k8s-3.6", 3);
}

#[test]
fn restore_with_the_official_etcd_image_layout() {
    restore_on_layout("official", 1);
}
