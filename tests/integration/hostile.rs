//! A bundle from a shared bucket is untrusted input: a live run of hostile bundles through `restore` against a
//! real cluster (every case is a unit test of the reader, src/bundle/reader_tests.rs). Each is refused by the
//! pre-flight, with nothing written outside the staging area (which is removed) and nothing changed in the
//! cluster.

use kubectl_snapshot_testkit::bundle::{self as kit, EntryType::*};

use crate::util::*;

#[test]
fn hostile_bundles_are_refused() {
    let cluster = Cluster::up("evil", 1, 0);
    let store = Store::new();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/hostile", "untouched"]);
    store.run(&["create", &cluster.name, "good"]).ok();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/hostile", "after-snapshot"]);
    let good = store.bundle(&cluster.name, "good");
    let etcd = bundle_entry(&good, "etcd/snapshot.db").unwrap();
    let metadata = bundle_entry(&good, "metadata.json").unwrap();
    let dir = store.root().join(&cluster.name);
    let pv = format!("pvs/{}/var/local-path-provisioner/pvc-x", cluster.cp(1));
    let abs = format!("/tmp/kst-abs-{}", std::process::id());

    // The reader's unit tests (src/bundle/reader_tests.rs) cover every hostile case without Docker; this is
    // the live run of a few of them through `restore`, against a real cluster.
    let rest: [(&str, &[u8]); 2] = [("etcd/snapshot.db", &etcd), ("metadata.json", &metadata)];
    let mut corpus: Vec<(&str, &str)> = Vec::new();
    kit::craft(
        &dir,
        "traversal",
        |b| kit::raw(b, "../kst-escape", Regular, None, b"x", None),
        &rest,
    );
    corpus.push(("traversal", "contains '..'"));
    kit::craft(
        &dir,
        "absolute",
        |b| kit::raw(b, &abs, Regular, None, b"x", None),
        &rest,
    );
    corpus.push(("absolute", "absolute path"));
    kit::craft(
        &dir,
        "symlink-escape",
        |b| kit::raw(b, &format!("{pv}/evil"), Symlink, Some("../../../../etc"), b"", None),
        &rest,
    );
    corpus.push(("symlink-escape", "points outside its volume"));
    // Each link's text stays inside; through the first, the second leads to the node's `/`.
    kit::craft(
        &dir,
        "symlink-through-a-link",
        |b| {
            kit::raw(b, &format!("{pv}/l"), Symlink, Some(".."), b"", None);
            kit::raw(b, &format!("{pv}/m"), Symlink, Some("l/../.."), b"", None);
        },
        &rest,
    );
    corpus.push(("symlink-through-a-link", "points outside its volume"));
    // A decompression bomb: 64 MiB of zeros (a few KiB compressed) in a volume whose metadata declares a few
    // KiB. Refused while reading, once past the declared size.
    kit::craft(
        &dir,
        "bomb",
        |b| kit::raw(b, &format!("{pv}/zeros"), Regular, None, &vec![0u8; 64 << 20], None),
        &rest,
    );
    corpus.push(("bomb", "more volume data than its metadata declares"));
    // A name no node filesystem takes (Docker's archive API refused it only after the old volume was gone).
    kit::craft(
        &dir,
        "long-name",
        |b| kit::long(b, &format!("{pv}/{}", "n".repeat(5000)), b"x"),
        &rest,
    );
    corpus.push(("long-name", "a node's filesystem takes at most 255"));
    let whole = std::fs::read(&good).unwrap();
    std::fs::write(dir.join("truncated.tar.gz"), &whole[..whole.len() / 2]).unwrap();
    kit::seal(&dir.join("truncated.tar.gz"));
    corpus.push(("truncated", "unreadable"));

    for (name, why) in &corpus {
        let run = store.run(&["restore", &cluster.name, name]);
        assert_eq!(
            run.code,
            Some(3),
            "{name}: expected a pre-flight refusal:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("bundle contents") || run.stderr.contains(why),
            "{name}"
        );
        assert!(
            run.stderr.contains(why),
            "{name}: stderr lacks {why:?}:\n{}",
            run.stderr
        );
        assert!(run.stderr.contains("nothing was changed"), "{name}: {}", run.stderr);
    }

    // Nothing escaped on the host, and staging is gone.
    let mut found = Vec::new();
    for root in [store.root().to_path_buf(), std::env::temp_dir()] {
        walk(&root, &mut |p| {
            let n = p.file_name().unwrap().to_string_lossy();
            if n.starts_with("kst-escape") || n.starts_with("kst-through") || n.starts_with("kst-abs") {
                found.push(p.display().to_string());
            }
        });
    }
    assert!(found.is_empty(), "files written outside the target: {found:?}");
    assert!(!std::path::Path::new(&abs).exists());
    assert!(
        !store.files(&cluster.name).iter().any(|f| f.starts_with(".restore")),
        "{:?}",
        store.files(&cluster.name)
    );
    // Nothing changed in the cluster.
    assert_eq!(
        cluster
            .etcdctl(&cluster.cp(1), &["get", "/registry/test/hostile", "--print-value-only"])
            .trim(),
        "after-snapshot"
    );
    let leftovers = cluster.sh(&cluster.cp(1), "ls -a / /var /var/lib/etcd /var/local-path-provisioner/* /etc | grep -E 'kst-(escape|through|dev|fifo|abs|evil.sh)|kubectl-snapshot' || true");
    assert!(leftovers.trim().is_empty(), "{leftovers}");
    cluster.assert_running();
}

fn walk(dir: &std::path::Path, f: &mut dyn FnMut(&std::path::Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        f(&p);
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&p, f);
        }
    }
}
