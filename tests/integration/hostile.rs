//! A bundle from a shared bucket is untrusted input. Each of these is refused by restore's pre-flight, with
//! nothing written outside the staging area (which is removed) and nothing changed in the cluster.

use std::io::Write;

use crate::util::*;

struct Base {
    etcd: Vec<u8>,
    metadata: Vec<u8>,
}

fn entry(
    b: &mut tar::Builder<impl Write>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
    claimed: Option<u64>,
) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(claimed.unwrap_or(data.len() as u64));
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// Writes `<name>.tar.gz` holding `hostile` entries then a valid etcd snapshot and metadata, plus a sidecar
/// that matches (an attacker controls both).
fn craft(
    dir: &std::path::Path,
    name: &str,
    base: &Base,
    hostile: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>),
) {
    let f = std::fs::File::create(dir.join(format!("{name}.tar.gz"))).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
    hostile(&mut b);
    entry(
        &mut b,
        "etcd/snapshot.db",
        tar::EntryType::Regular,
        None,
        &base.etcd,
        None,
    );
    entry(
        &mut b,
        "metadata.json",
        tar::EntryType::Regular,
        None,
        &base.metadata,
        None,
    );
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
    seal(dir, name);
}

fn seal(dir: &std::path::Path, name: &str) {
    let bytes = std::fs::read(dir.join(format!("{name}.tar.gz"))).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    std::fs::write(
        dir.join(format!("{name}.tar.gz.sha256")),
        format!("{digest}  {name}.tar.gz\n"),
    )
    .unwrap();
}

#[test]
fn hostile_bundles_are_refused() {
    use tar::EntryType::*;
    let cluster = Cluster::up("evil", 1, 0);
    let store = Store::new();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/hostile", "untouched"]);
    store.run(&["create", &cluster.name, "good"]).ok();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/hostile", "after-snapshot"]);
    let good = store.bundle(&cluster.name, "good");
    let base = Base {
        etcd: bundle_entry(&good, "etcd/snapshot.db").unwrap(),
        metadata: bundle_entry(&good, "metadata.json").unwrap(),
    };
    let dir = store.root().join(&cluster.name);
    let pv = format!("pvs/{}/var/local-path-provisioner/pvc-x", cluster.cp(1));
    let abs = format!("/tmp/kst-abs-{}", std::process::id());

    let mut corpus: Vec<(&str, &str)> = Vec::new();
    craft(&dir, "traversal", &base, |b| {
        entry(b, "../kst-escape", Regular, None, b"x", None)
    });
    corpus.push(("traversal", "contains '..'"));
    craft(&dir, "absolute", &base, |b| entry(b, &abs, Regular, None, b"x", None));
    corpus.push(("absolute", "absolute path"));
    craft(&dir, "nested-traversal", &base, |b| {
        entry(
            b,
            &format!("{pv}/../../../../../kst-escape2"),
            Regular,
            None,
            b"x",
            None,
        )
    });
    corpus.push(("nested-traversal", "contains '..'"));
    craft(&dir, "symlink-absolute", &base, |b| {
        entry(b, &format!("{pv}/evil"), Symlink, Some("/etc"), b"", None)
    });
    corpus.push(("symlink-absolute", "points outside its volume"));
    craft(&dir, "symlink-escape", &base, |b| {
        entry(b, &format!("{pv}/evil"), Symlink, Some("../../../../etc"), b"", None)
    });
    corpus.push(("symlink-escape", "points outside its volume"));
    craft(&dir, "through-symlink", &base, |b| {
        entry(b, &format!("{pv}/d"), Symlink, Some("sub"), b"", None);
        entry(b, &format!("{pv}/d/kst-through"), Regular, None, b"x", None);
    });
    corpus.push(("through-symlink", "below a symlink"));
    craft(&dir, "hardlink-outside", &base, |b| {
        entry(b, &format!("{pv}/h"), Link, Some("/etc/passwd"), b"", None)
    });
    corpus.push(("hardlink-outside", "unsafe hardlink"));
    craft(&dir, "hardlink-metadata", &base, |b| {
        entry(b, &format!("{pv}/h"), Link, Some("metadata.json"), b"", None)
    });
    corpus.push(("hardlink-metadata", "unsafe hardlink"));
    craft(&dir, "device", &base, |b| {
        entry(b, &format!("{pv}/kst-dev"), Char, None, b"", None)
    });
    corpus.push(("device", "special file"));
    craft(&dir, "fifo", &base, |b| {
        entry(b, &format!("{pv}/kst-fifo"), Fifo, None, b"", None)
    });
    corpus.push(("fifo", "special file"));
    craft(&dir, "absurd-size", &base, |b| {
        entry(b, &format!("{pv}/huge"), Regular, None, b"", Some(2 << 40))
    });
    corpus.push(("absurd-size", "absurd size"));
    craft(&dir, "unexpected", &base, |b| {
        entry(b, "kst-evil.sh", Regular, None, b"#!/bin/sh\n", None)
    });
    corpus.push(("unexpected", "unexpected entry"));
    craft(&dir, "bad-blob", &base, |b| {
        entry(
            b,
            &format!("images/blobs/sha256/{}", "0".repeat(64)),
            Regular,
            None,
            b"x",
            None,
        )
    });
    corpus.push(("bad-blob", "does not match its digest"));
    craft(&dir, "duplicate", &base, |b| {
        entry(b, "metadata.json", Regular, None, &base.metadata, None)
    });
    corpus.push(("duplicate", "duplicate entry"));
    craft(&dir, "foreign-node", &base, |b| {
        entry(
            b,
            "pvs/kst-other-node/var/local-path-provisioner/x",
            Regular,
            None,
            b"x",
            None,
        )
    });
    corpus.push(("foreign-node", "nodes not in its metadata"));
    // A decompression bomb: 64 MiB of zeros (a few KiB compressed) in a volume whose metadata declares a few
    // KiB. Refused while reading, once past the declared size.
    craft(&dir, "bomb", &base, |b| {
        entry(b, &format!("{pv}/zeros"), Regular, None, &vec![0u8; 64 << 20], None)
    });
    corpus.push(("bomb", "more volume data than its metadata declares"));
    // A name no node filesystem takes (Docker's archive API refused it only after the old volume was gone).
    craft(&dir, "long-name", &base, |b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(Regular);
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, format!("{pv}/{}", "n".repeat(5000)), &b"x"[..])
            .unwrap();
    });
    corpus.push(("long-name", "a node's filesystem takes at most 255"));
    craft(&dir, "long-path", &base, |b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(Regular);
        h.set_mode(0o644);
        h.set_size(1);
        let deep = vec!["d".repeat(200); 20].join("/");
        b.append_data(&mut h, format!("{pv}/{deep}"), &b"x"[..]).unwrap();
    });
    corpus.push(("long-path", "longer than a node can create"));
    let whole = std::fs::read(&good).unwrap();
    std::fs::write(dir.join("truncated.tar.gz"), &whole[..whole.len() / 2]).unwrap();
    seal(&dir, "truncated");
    corpus.push(("truncated", "unreadable"));
    std::fs::write(
        dir.join("not-gzip.tar.gz"),
        b"this is not a gzip stream at all".repeat(100),
    )
    .unwrap();
    seal(&dir, "not-gzip");
    corpus.push(("not-gzip", "unreadable"));
    assert!(corpus.len() >= 10);

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
