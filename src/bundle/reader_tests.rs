//! The bundle reader without Docker: a writer → reader round trip, and every hostile bundle a shared bucket
//! could hold, each refused by `extract::inspect` with a reason and nothing staged outside the staging
//! directory. (tests/integration/hostile.rs keeps one live run of the same corpus through `restore`.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kubectl_snapshot_testkit::bundle::{self as kit, seal, sidecar};

use sha2::{Digest, Sha256};

use super::extract::{Limits, inspect};
use super::metadata::{
    EtcdInfo, ImagesInfo, ImagesMode, Metadata, NodeImages, NodeInfo, PvsInfo, SCHEMA_VERSION, Topology,
};
use super::{BundleSink, ETCD_ENTRY, METADATA_ENTRY, WriterOptions, reader};

const NODE: &str = "kind-control-plane";
const ROOT: &str = "/var/local-path-provisioner";
const ETCD: &[u8] = b"an etcd snapshot, as far as the reader cares";
const BLOB: &[u8] = b"an image layer";
const HELLO: &[u8] = b"hello from a volume\n";

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn pv() -> String {
    format!("pvs/{NODE}{ROOT}/pvc-1_default_data")
}

fn metadata() -> Metadata {
    Metadata {
        schema_version: SCHEMA_VERSION,
        name: "snap".into(),
        cluster: "kind".into(),
        created: jiff::Timestamp::UNIX_EPOCH,
        tool_version: "test".into(),
        k8s_version: "v1.33.1".into(),
        node_image: "kindest/node:v1.33.1".into(),
        provider: "docker".into(),
        platform: "linux/amd64".into(),
        topology: Topology {
            control_planes: 1,
            workers: 0,
            load_balancer: false,
            nodes: vec![NodeInfo {
                name: NODE.into(),
                role: "control-plane".into(),
                container_id: "0".into(),
                image: "kindest/node:v1.33.1".into(),
            }],
        },
        addons: BTreeMap::new(),
        etcd: EtcdInfo {
            node: NODE.into(),
            image: "registry.k8s.io/etcd:3.5.30-0".into(),
            size: ETCD.len() as u64,
            digest: format!("sha256:{}", sha(ETCD)),
        },
        images: ImagesInfo {
            mode: ImagesMode::All,
            digest: String::new(),
            size: BLOB.len() as u64,
            blobs: 1,
            nodes: BTreeMap::from([(
                NODE.to_owned(),
                NodeImages {
                    images: Vec::new(),
                    blobs: vec![format!("sha256:{}", sha(BLOB))],
                    by_reference: Vec::new(),
                },
            )]),
        },
        pvs: PvsInfo {
            digest: String::new(),
            size: HELLO.len() as u64,
            files: 1,
            nodes: BTreeMap::from([(NODE.to_owned(), vec![ROOT.to_owned()])]),
        },
        schedule: None,
    }
}

/// A valid bundle written by the real writer, with its sidecar.
async fn write_good(dir: &Path) -> PathBuf {
    let bundle = dir.join("good.tar.gz");
    let sink = BundleSink::create(&bundle, WriterOptions::default()).unwrap();
    sink.add_bytes(ETCD_ENTRY, 0o600, ETCD).await.unwrap();
    sink.add_bytes(&format!("images/blobs/sha256/{}", sha(BLOB)), 0o644, BLOB)
        .await
        .unwrap();
    sink.add_bytes(&format!("images/nodes/{NODE}/index.json"), 0o644, b"{\"manifests\":[]}")
        .await
        .unwrap();
    sink.add_bytes(&format!("{}/hello.txt", pv()), 0o640, HELLO)
        .await
        .unwrap();
    let json = serde_json::to_vec(&metadata()).unwrap();
    sink.add_bytes(METADATA_ENTRY, 0o600, &json).await.unwrap();
    let sha256 = sink.finish().await.unwrap().sha256;
    std::fs::write(sidecar(&bundle), reader::sidecar_line(&sha256, "good.tar.gz")).unwrap();
    bundle
}

/// A bundle holding `hostile` entries, then a valid etcd snapshot, blob and metadata; sealed.
fn craft(dir: &Path, name: &str, hostile: impl FnOnce(&mut kit::Builder)) -> PathBuf {
    let meta = serde_json::to_vec(&metadata()).unwrap();
    let blob = format!("images/blobs/sha256/{}", sha(BLOB));
    kit::craft(
        dir,
        name,
        hostile,
        &[(ETCD_ENTRY, ETCD), (&blob, BLOB), (METADATA_ENTRY, &meta)],
    )
}

fn raw(b: &mut kit::Builder, name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) {
    kit::raw(b, name, kind, link, data, None);
}

/// Reads `bundle` with staging into a fresh directory, with the limits its metadata declares.
fn read(bundle: &Path, stage: &Path) -> Vec<String> {
    let (insp, _) = inspect(
        bundle,
        &sidecar(bundle),
        Some(stage),
        u64::MAX,
        Some(Limits::declared(&metadata())),
    );
    insp.problems
}

#[tokio::test]
async fn what_the_writer_writes_the_reader_stages_intact() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_good(dir.path()).await;
    let stage = dir.path().join("stage");
    let (insp, staged) = inspect(
        &bundle,
        &sidecar(&bundle),
        Some(&stage),
        u64::MAX,
        Some(Limits::declared(&metadata())),
    );
    assert!(
        insp.problems.is_empty() && insp.integrity.is_empty(),
        "{:?} {:?}",
        insp.problems,
        insp.integrity
    );
    assert!(insp.integrity_ok);
    assert_eq!(insp.metadata.as_ref(), Some(&metadata()));
    let staged = staged.expect("staged");
    assert_eq!(std::fs::read(&staged.etcd).unwrap(), ETCD);
    assert_eq!(std::fs::read(staged.blobs.join(sha(BLOB))).unwrap(), BLOB);
    let key = (NODE.to_owned(), ROOT.to_owned());
    assert_eq!(staged.pv_files.get(&key), Some(&1));
    // The volume's re-packed tar holds the file under the root's base name, with its bytes and mode.
    let mut tar = tar::Archive::new(std::fs::File::open(&staged.pvs[&key]).unwrap());
    let mut found = false;
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().ends_with("hello.txt") {
            assert!(
                e.path()
                    .unwrap()
                    .starts_with("local-path-provisioner/pvc-1_default_data")
            );
            assert_eq!(e.header().mode().unwrap() & 0o777, 0o640);
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut got).unwrap();
            assert_eq!(got, HELLO);
            found = true;
        }
    }
    assert!(found, "hello.txt not staged");
}

#[tokio::test]
async fn a_changed_byte_is_an_integrity_failure() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_good(dir.path()).await;
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&bundle, bytes).unwrap();
    let (insp, staged) = inspect(
        &bundle,
        &sidecar(&bundle),
        Some(&dir.path().join("stage")),
        u64::MAX,
        None,
    );
    assert!(
        insp.integrity.iter().any(|p| p.contains("sha256 mismatch")),
        "{:?}",
        insp.integrity
    );
    assert!(staged.is_none(), "nothing staged is handed over");
}

#[test]
fn every_hostile_bundle_is_refused_with_its_reason_and_nothing_escapes() {
    use tar::EntryType::*;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let outside = d.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let abs = format!("{}/kst-abs", outside.display());
    let long_path = vec!["d".repeat(200); 20].join("/");
    type Case = (&'static str, &'static str, Box<dyn FnOnce(&mut kit::Builder)>);
    let cases: Vec<Case> = vec![
        (
            "traversal",
            "contains '..'",
            Box::new(|b| raw(b, "../kst-escape", Regular, None, b"x")),
        ),
        (
            "absolute",
            "absolute path",
            Box::new(move |b| raw(b, &abs, Regular, None, b"x")),
        ),
        (
            "nested-traversal",
            "contains '..'",
            Box::new(move |b| raw(b, &format!("{}/../../../../../kst-escape", pv()), Regular, None, b"x")),
        ),
        (
            "symlink-absolute",
            "points outside its volume",
            Box::new(move |b| raw(b, &format!("{}/evil", pv()), Symlink, Some("/etc"), b"")),
        ),
        (
            "symlink-escape",
            "points outside its volume",
            Box::new(move |b| raw(b, &format!("{}/evil", pv()), Symlink, Some("../../../../etc"), b"")),
        ),
        (
            "symlink-through-a-link",
            "points outside its volume",
            Box::new(move |b| {
                raw(b, &format!("{}/l", pv()), Symlink, Some(".."), b"");
                raw(b, &format!("{}/m", pv()), Symlink, Some("l/../.."), b"");
            }),
        ),
        (
            "symlink-through-a-later-link",
            "points outside its volume",
            Box::new(move |b| {
                raw(b, &format!("{}/m", pv()), Symlink, Some("l/../.."), b"");
                raw(b, &format!("{}/l", pv()), Symlink, Some(".."), b"");
            }),
        ),
        (
            "through-symlink",
            "below a symlink",
            Box::new(move |b| {
                raw(b, &format!("{}/d", pv()), Symlink, Some("sub"), b"");
                raw(b, &format!("{}/d/kst-through", pv()), Regular, None, b"x");
            }),
        ),
        (
            "hardlink-outside",
            "unsafe hardlink",
            Box::new(move |b| raw(b, &format!("{}/h", pv()), Link, Some("/etc/passwd"), b"")),
        ),
        (
            "hardlink-metadata",
            "unsafe hardlink",
            Box::new(move |b| raw(b, &format!("{}/h", pv()), Link, Some("metadata.json"), b"")),
        ),
        (
            "device",
            "special file",
            Box::new(move |b| raw(b, &format!("{}/dev", pv()), Char, None, b"")),
        ),
        (
            "fifo",
            "special file",
            Box::new(move |b| raw(b, &format!("{}/fifo", pv()), Fifo, None, b"")),
        ),
        (
            "absurd-size",
            "absurd size",
            Box::new(move |b| kit::raw(b, &format!("{}/huge", pv()), Regular, None, b"", Some(2 << 40))),
        ),
        (
            "unexpected",
            "unexpected entry",
            Box::new(|b| raw(b, "kst-evil.sh", Regular, None, b"#!/bin/sh\n")),
        ),
        (
            "bad-blob",
            "does not match its digest",
            Box::new(|b| {
                raw(
                    b,
                    &format!("images/blobs/sha256/{}", "0".repeat(64)),
                    Regular,
                    None,
                    b"x",
                )
            }),
        ),
        (
            "duplicate",
            "duplicate entry",
            Box::new(|b| {
                raw(
                    b,
                    METADATA_ENTRY,
                    Regular,
                    None,
                    &serde_json::to_vec(&metadata()).unwrap(),
                )
            }),
        ),
        (
            "foreign-node",
            "nodes not in its metadata",
            Box::new(|b| {
                raw(
                    b,
                    "pvs/kst-other-node/var/local-path-provisioner/x",
                    Regular,
                    None,
                    b"x",
                )
            }),
        ),
        (
            "bomb",
            "more volume data than its metadata declares",
            Box::new(move |b| raw(b, &format!("{}/zeros", pv()), Regular, None, &vec![0u8; 8 << 20])),
        ),
        (
            "long-name",
            "a node's filesystem takes at most 255",
            Box::new(move |b| kit::long(b, &format!("{}/{}", pv(), "n".repeat(5000)), b"x")),
        ),
        (
            "long-path",
            "longer than a node can create",
            Box::new(move |b| kit::long(b, &format!("{}/{long_path}", pv()), b"x")),
        ),
    ];
    assert!(cases.len() >= 18);
    for (name, why, hostile) in cases {
        let bundle = craft(d, name, hostile);
        let stage = d.join(format!("stage-{name}"));
        let problems = read(&bundle, &stage);
        assert!(
            problems.iter().any(|p| p.contains(why)),
            "{name}: wanted {why:?}, got {problems:?}"
        );
    }
    // Not archives at all.
    let truncated = d.join("truncated.tar.gz");
    let whole = std::fs::read(craft(d, "whole", |_| {})).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    seal(&truncated);
    assert!(
        read(&truncated, &d.join("stage-t"))
            .iter()
            .any(|p| p.contains("unreadable"))
    );
    let garbage = d.join("garbage.tar.gz");
    std::fs::write(&garbage, b"this is not a gzip stream at all".repeat(100)).unwrap();
    seal(&garbage);
    assert!(
        read(&garbage, &d.join("stage-g"))
            .iter()
            .any(|p| p.contains("unreadable"))
    );

    // Nothing named by an entry was ever created, in the staging directories or anywhere else.
    let mut escaped = Vec::new();
    walk(d, &mut |p| {
        if p.file_name().unwrap().to_string_lossy().starts_with("kst-") {
            escaped.push(p.display().to_string());
        }
    });
    assert!(escaped.is_empty(), "{escaped:?}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        f(&p);
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, f);
        }
    }
}

/// Writes a bundle with `etcd` as its snapshot, the shared blob, and a PV tree (through the grouped tar path);
/// returns its bytes and index.
async fn write_members(
    dir: &Path,
    name: &str,
    etcd: &[u8],
    pv_files: &[(&str, Vec<u8>)],
) -> (Vec<u8>, backends::BundleIndex) {
    use crate::bundle::writer::Grouping;
    let bundle = dir.join(format!("{name}.tar.gz"));
    let sink = BundleSink::create(&bundle, WriterOptions::default()).unwrap();
    sink.add_bytes(ETCD_ENTRY, 0o600, etcd).await.unwrap();
    let layer: Vec<u8> = (0..(3 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    sink.add_bytes(&format!("images/blobs/sha256/{}", sha(&layer)), 0o644, &layer)
        .await
        .unwrap();
    let node_index = format!("{{\"manifests\":[{{\"digest\":\"sha256:{}\"}}]}}", sha(&layer));
    sink.add_bytes(&format!("images/nodes/{NODE}/index.json"), 0o644, node_index.as_bytes())
        .await
        .unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in pv_files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("local-path-provisioner/{path}"), &data[..])
            .unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let prefix = format!("pvs/{NODE}{ROOT}");
    sink.add_tar(
        &tar[..],
        Box::new(move |p| Some(format!("{prefix}{}", p.strip_prefix("local-path-provisioner")?))),
        Grouping::Grouped,
    )
    .await
    .unwrap();
    sink.add_bytes(METADATA_ENTRY, 0o600, b"{}").await.unwrap();
    let written = sink.finish().await.unwrap();
    let bytes = std::fs::read(&bundle).unwrap();
    assert_eq!(written.sha256, sha(&bytes));
    assert_eq!(written.index.sha256, written.sha256);
    written.index.check().expect("the index tiles the bundle");
    (bytes, written.index)
}

/// Schema 2: members are aligned to tar entries and deterministic, so the same blob is the same member bytes
/// in two bundles whose other contents differ, and each member is a gzip stream starting at its entry.
#[tokio::test]
async fn the_same_blob_is_the_same_member_in_two_bundles() {
    use flate2::read::MultiGzDecoder;
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(1 << 20) + 10).map(|i: u32| (i % 7) as u8).collect();
    // Many mid-size files after them: groups of more than one 1 MiB chunk, whose first chunk is written out
    // before their last entries are.
    let names: Vec<String> = (0..200).map(|i| format!("pvc-1/many/{i:03}.txt")).collect();
    let mut files_a = vec![
        ("pvc-1/a.txt", b"one".to_vec()),
        ("pvc-1/big.bin", big.clone()),
        ("pvc-1/z.txt", b"z".to_vec()),
    ];
    files_a.extend(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), format!("line {i} of a file\n").repeat(2000).into_bytes())),
    );
    let files_b = vec![
        ("pvc-1/a.txt", b"changed".to_vec()),
        ("pvc-1/big.bin", big),
        ("pvc-1/z.txt", b"z".to_vec()),
    ];
    let (a, ia) = write_members(dir.path(), "a", b"etcd one", &files_a).await;
    // A second later (the snapshot of the same cluster a minute later): no header may carry the time.
    tokio::time::sleep(std::time::Duration::from_millis(1001)).await;
    let (b, ib) = write_members(dir.path(), "b", b"etcd two, longer", &files_b).await;
    let member = |bytes: &[u8], index: &backends::BundleIndex, holds: &str| {
        let m = index
            .members
            .iter()
            .find(|m| m.holds.contains(holds))
            .unwrap_or_else(|| panic!("no member holds {holds}: {:?}", index.members));
        bytes[m.offset as usize..(m.offset + m.size) as usize].to_vec()
    };
    for holds in ["images/blobs/sha256/", "images/nodes/", "pvc-1/big.bin"] {
        let (ma, mb) = (member(&a, &ia, holds), member(&b, &ib, holds));
        assert_eq!(ma, mb, "{holds}: the same content must be the same member bytes");
    }
    assert_ne!(member(&a, &ia, ETCD_ENTRY), member(&b, &ib, ETCD_ENTRY));
    // Each member is a gzip stream that starts with its first entry's tar header.
    for m in &ia.members {
        let mut plain = Vec::new();
        MultiGzDecoder::new(&a[m.offset as usize..(m.offset + m.size) as usize])
            .read_to_end(&mut plain)
            .unwrap();
        let header = tar::Header::from_byte_slice(&plain[..512]);
        assert_eq!(header.path().unwrap().to_string_lossy(), m.holds, "{m:?}");
        if m.holds.starts_with("images/blobs/") {
            // Headers of content-addressed entries depend on nothing but the content (not on the time).
            assert_eq!((header.mtime().unwrap(), header.mode().unwrap()), (0, 0o444));
        }
    }
    // The big file is a member of its own, and the file after it starts one.
    let holds: Vec<&str> = ia.members.iter().map(|m| m.holds.as_str()).collect();
    assert!(holds.iter().any(|h| h.ends_with("pvc-1/z.txt")), "{holds:?}");
    assert_eq!(holds.last(), Some(&METADATA_ENTRY));
    // Every tar entry is counted in the member it starts in: etcd, the blob, the node's image index, the PV
    // files, the metadata.
    assert_eq!(
        ia.members.iter().map(|m| m.entries).sum::<u64>(),
        files_a.len() as u64 + 4,
        "{:?}",
        ia.members.iter().map(|m| (&m.holds, m.entries)).collect::<Vec<_>>()
    );
}

/// A volume root streamed as the runtime's archive API streams it (`local-path-provisioner/<volume>/…`): the
/// summary counts each volume's file bytes, which create names when a freeze was long.
#[tokio::test]
async fn a_tar_summary_counts_the_bytes_below_each_top_directory() {
    use crate::bundle::writer::Grouping;
    let dir = tempfile::tempdir().unwrap();
    let sink = BundleSink::create(&dir.path().join("b.tar.gz"), WriterOptions::default()).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, size) in [
        ("local-path-provisioner/", None),
        ("local-path-provisioner/pvc-a_default_db/", None),
        ("local-path-provisioner/pvc-a_default_db/x", Some(5)),
        ("local-path-provisioner/pvc-a_default_db/sub/y", Some(3)),
        ("local-path-provisioner/pvc-b_default_web/z", Some(7)),
        ("local-path-provisioner/loose-file", Some(11)),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        match size {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Some(n) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(n);
                tar.append_data(&mut h, path, &vec![b'x'; n as usize][..]).unwrap();
            }
        }
    }
    let tar = tar.into_inner().unwrap();
    let summary = sink
        .add_tar(
            &tar[..],
            Box::new(|p| Some(format!("pvs/{NODE}{ROOT}{}", p.strip_prefix("local-path-provisioner")?))),
            Grouping::Grouped,
        )
        .await
        .unwrap();
    assert_eq!(summary.bytes, 26);
    assert_eq!(
        summary.bytes_below,
        BTreeMap::from([
            ("loose-file".to_owned(), 11),
            ("pvc-a_default_db".to_owned(), 8),
            ("pvc-b_default_web".to_owned(), 7)
        ])
    );
}

/// A member index kept beside a local bundle is checked with it: one that lies about a member (which a push
/// would refuse, and by which a pull would copy wrong bytes) makes the snapshot corrupt, with the reason.
#[test]
fn a_local_member_index_that_lies_makes_the_snapshot_corrupt() {
    use super::Status;
    use backends::{BundleIndex, members::INDEX_VERSION, members::Member};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (vec![1u8; 3000], vec![2u8; 5000]);
    let bundle = dir.path().join("x.tar.gz");
    std::fs::write(&bundle, [a.clone(), b.clone()].concat()).unwrap();
    let whole = sha(&[a.clone(), b.clone()].concat());
    let side = dir.path().join("x.tar.gz.sha256");
    std::fs::write(&side, format!("{whole}  x.tar.gz\n")).unwrap();
    let member = |offset: u64, bytes: &[u8]| Member {
        offset,
        size: bytes.len() as u64,
        sha256: sha(bytes),
        holds: "part".into(),
        entries: 1,
    };
    let index = BundleIndex {
        index_version: INDEX_VERSION,
        sha256: whole.clone(),
        size: 8000,
        members: vec![member(0, &a), member(3000, &b)],
    };
    let at = dir.path().join("x.index.json");
    let check = |i: &BundleIndex| {
        std::fs::write(&at, i.to_json()).unwrap();
        reader::verify_with_index(&bundle, &side, Some(&at))
    };
    assert_eq!(check(&index), (Status::Ok, None));
    assert_eq!(
        reader::verify_with_index(&bundle, &side, Some(&dir.path().join("none.json"))),
        (Status::Ok, None),
        "a bundle without an index is checked against its sidecar alone"
    );
    let mut lying = index.clone();
    lying.members[1].sha256 = sha(b"something else");
    let (status, why) = check(&lying);
    assert_eq!(status, Status::Corrupt);
    assert!(why.unwrap().contains("member 1 of 2"));
    // Boundaries moved: the digests are the members', the bytes they cover are not.
    let mut moved = index.clone();
    moved.members[0].size = 2000;
    moved.members[1].offset = 2000;
    moved.members[1].size = 6000;
    assert_eq!(check(&moved).0, Status::Corrupt);
    let mut other = index.clone();
    other.sha256 = sha(b"another archive");
    assert_eq!(check(&other).0, Status::Corrupt);
    std::fs::write(&at, b"{not an index").unwrap();
    assert_eq!(reader::verify_with_index(&bundle, &side, Some(&at)).0, Status::Corrupt);
}
