//! `create` on each fixture topology: what the user cares about is in the bundle, and the cluster is back.

use sha2::{Digest, Sha256};

use crate::util::*;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The checks every topology shares; returns the CreateResult.
fn create_and_check(cluster: &Cluster, store: &Store, snap: &str) -> serde_json::Value {
    let marker = format!("value-{}", cluster.name);
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/kubectl-snapshot-test/key", &marker]);
    let ips: Vec<String> = cluster.nodes().iter().map(|n| cluster.ip(n)).collect();

    let run = store.run(&["create", &cluster.name, snap, "-o", "json"]).ok();
    let result = run.json();
    let bundle = store.bundle(&cluster.name, snap);
    let bytes = std::fs::read(&bundle).expect("bundle written");

    // Integrity: the JSON, the sidecar and the file agree.
    let digest = sha256_hex(&bytes);
    assert_eq!(result["sha256"], digest);
    assert_eq!(result["size"], bytes.len() as u64);
    let sidecar = std::fs::read_to_string(bundle.with_extension("gz.sha256")).expect("sidecar");
    assert_eq!(sidecar, format!("{digest}  {snap}.tar.gz\n"));

    // etcd: the key written before the snapshot is in it.
    let db = bundle_entry(&bundle, "etcd/snapshot.db").expect("etcd snapshot in bundle");
    assert!(
        contains(&db, marker.as_bytes()),
        "the etcd snapshot lacks the key written before create"
    );
    assert_eq!(
        result["metadata"]["etcd"]["digest"],
        format!("sha256:{}", sha256_hex(&db))
    );

    // PVs: every node's files, byte for byte.
    for node in cluster.nodes() {
        let dir = cluster
            .sh(&node, "ls -d /var/local-path-provisioner/*/ | head -n1")
            .trim()
            .trim_end_matches('/')
            .to_owned();
        let on_node = cluster.sh(&node, &format!("cat {dir}/hello.txt"));
        let in_bundle = bundle_entry(&bundle, &format!("pvs/{node}{dir}/hello.txt"))
            .unwrap_or_else(|| panic!("PV file of {node} missing"));
        assert_eq!(in_bundle, on_node.as_bytes());
        let random = bundle_entry(&bundle, &format!("pvs/{node}{dir}/sub/random.bin")).expect("binary PV file");
        let on_node_sum = cluster.sh(&node, &format!("sha256sum {dir}/sub/random.bin"));
        assert!(
            on_node_sum.starts_with(&sha256_hex(&random)),
            "PV binary file differs on {node}"
        );
    }

    // Members (schema 2): the index tiles the file, every member hashes to its digest and is a gzip stream
    // starting at the tar entry it names, one member per image blob, metadata last; `sha256sum -c` still works.
    store.sha256sum_check(&cluster.name, snap);
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.root().join(&cluster.name).join(format!("{snap}.index.json"))).expect("member index"),
    )
    .unwrap();
    assert_eq!(index["sha256"], digest);
    let members = index["members"].as_array().unwrap();
    let mut at = 0usize;
    for m in members {
        let (offset, size) = (
            m["offset"].as_u64().unwrap() as usize,
            m["size"].as_u64().unwrap() as usize,
        );
        assert_eq!(offset, at, "members must be contiguous");
        let bytes = &bytes[offset..offset + size];
        assert_eq!(m["sha256"], sha256_hex(bytes));
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(bytes), &mut plain).unwrap();
        let header = tar::Header::from_byte_slice(&plain[..512]);
        let first = header.path().unwrap().to_string_lossy().into_owned();
        assert!(
            first == m["holds"].as_str().unwrap() || header.entry_type().is_gnu_longname(),
            "member {m} starts with {first}"
        );
        at += size;
    }
    assert_eq!(at, bytes.len());
    assert_eq!(members.last().unwrap()["holds"], "metadata.json");

    // Images: each node's list is recorded, each node's index is in the bundle, blobs hash to their names.
    let names = bundle_names(&bundle);
    let blob_members = members
        .iter()
        .filter(|m| m["holds"].as_str().unwrap().starts_with("images/blobs/"))
        .count();
    assert_eq!(
        blob_members,
        names.iter().filter(|n| n.starts_with("images/blobs/")).count(),
        "one member per image blob"
    );
    for node in cluster.nodes() {
        assert!(
            names.contains(&format!("images/nodes/{node}/index.json")),
            "no image index for {node}"
        );
        let imgs = &result["metadata"]["images"]["nodes"][&node]["images"];
        let refs: Vec<&str> = imgs
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert!(refs.contains(&"registry.k8s.io/pause:3.10"), "{node}: {refs:?}");
        assert!(
            refs.contains(&"docker.io/kindest/local-path-provisioner:v20250214-acbabc1a"),
            "{node}: {refs:?}"
        );
    }
    for blob in names.iter().filter(|n| n.starts_with("images/blobs/sha256/")) {
        let data = bundle_entry(&bundle, blob).unwrap();
        assert_eq!(
            sha256_hex(&data),
            blob.rsplit('/').next().unwrap(),
            "blob content does not match its digest"
        );
    }
    assert_eq!(
        names.last().map(String::as_str),
        Some("metadata.json"),
        "metadata is the last entry"
    );

    // Metadata.
    let m = &result["metadata"];
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["k8sVersion"], "v1.33.1");
    assert_eq!(m["cluster"], cluster.name.as_str());
    assert_eq!(m["addons"]["local-path-provisioner"], "v20250214-acbabc1a");
    assert!(
        m["nodeImage"]
            .as_str()
            .unwrap()
            .starts_with("kubectl-snapshot-fixture/node:")
    );
    let phases: Vec<&str> = result["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "etcd snapshot",
        "quiescing nodes",
        "exporting images",
        "copying volumes",
        "resuming cluster",
    ] {
        assert!(phases.contains(&p), "phase {p} missing: {phases:?}");
    }
    // How long the nodes were frozen, first pause to last thaw: a fraction of the whole.
    let frozen = result["frozenSeconds"].as_f64().expect("frozenSeconds");
    let total: f64 = result["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["durationSeconds"].as_f64())
        .sum();
    assert!(
        frozen > 0.0 && (total == 0.0 || frozen < total),
        "frozen {frozen} s of {total} s"
    );

    // The cluster is back, with the same node IPs, and nothing is left behind in the nodes.
    cluster.assert_running();
    let after: Vec<String> = cluster.nodes().iter().map(|n| cluster.ip(n)).collect();
    assert_eq!(ips, after, "node IPs changed");
    let leftovers = cluster.sh(&cluster.cp(1), "ls /var/lib/etcd");
    assert!(
        !leftovers.contains("kubectl-snapshot"),
        "etcd snapshot left in the node: {leftovers}"
    );
    result
}

#[test]
fn one_control_plane() {
    let cluster = Cluster::up("one", 1, 0);
    let store = Store::new();
    let result = create_and_check(&cluster, &store, "base");
    assert_eq!(result["metadata"]["topology"]["controlPlanes"], 1);
    assert_eq!(result["metadata"]["topology"]["workers"], 0);

    // Store permissions: bundles hold Secrets.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&store.root().join(&cluster.name)), 0o700);
    assert_eq!(mode(&store.bundle(&cluster.name, "base")), 0o600);

    // A name is never overwritten.
    let before = std::fs::read(store.bundle(&cluster.name, "base")).unwrap();
    let again = store.run(&["create", &cluster.name, "--name", "base"]).fails();
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(std::fs::read(store.bundle(&cluster.name, "base")).unwrap(), before);
    assert!(
        !store.files(&cluster.name).iter().any(|f| f.starts_with('.')),
        "staging file left: {:?}",
        store.files(&cluster.name)
    );
    cluster.assert_running();
}

#[test]
fn control_plane_and_worker() {
    let cluster = Cluster::up("cpw", 1, 1);
    let store = Store::new();
    let result = create_and_check(&cluster, &store, "with-worker");
    assert_eq!(result["metadata"]["topology"]["workers"], 1);
    // Images that only the worker holds are captured from the worker.
    let worker_imgs = result["metadata"]["images"]["nodes"][&cluster.worker(1)]["images"].to_string();
    assert!(
        worker_imgs.contains("docker.io/library/fixture-worker-app:1.0"),
        "{worker_imgs}"
    );
    let cp_imgs = result["metadata"]["images"]["nodes"][&cluster.cp(1)]["images"].to_string();
    assert!(!cp_imgs.contains("fixture-worker-app"));

    // Default name (UTC timestamp) and KIND_CLUSTER_NAME resolution.
    let mut cmd = store.command(&["create", "--json"]);
    cmd.env("KIND_CLUSTER_NAME", &cluster.name);
    let out = run_timeout(cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = v["name"].as_str().unwrap();
    assert!(
        name.len() == 20 && name.starts_with("snap-") && name[5..13].bytes().all(|b| b.is_ascii_digit()),
        "{name}"
    );
    cluster.assert_running();
}

#[test]
fn three_control_planes() {
    let cluster = Cluster::up("ha", 3, 0);
    let store = Store::new();
    let result = create_and_check(&cluster, &store, "ha");
    assert_eq!(result["metadata"]["topology"]["controlPlanes"], 3);
    let members = cluster.etcdctl(&cluster.cp(1), &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
}
