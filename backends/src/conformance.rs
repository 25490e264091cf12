//! The conformance suite: what every [`SnapshotStore`] must do, run unchanged against each implementation
//! (`tests/conformance.rs`). Backend-specific failure modes are reached through [`Raw`], which each backend's
//! harness implements by touching its storage directly.

use std::path::Path;

use async_trait::async_trait;

use crate::{ClusterName, Error, SnapshotName, SnapshotStore};

/// Direct access to a backend's storage, for simulating what the trait must never allow.
#[async_trait]
pub trait Raw: Send + Sync {
    /// Leaves the state an interrupted upload of `name` would leave (bundle data, no commit).
    async fn leave_incomplete(&self, cluster: &ClusterName, name: &SnapshotName);
    /// Changes one byte of a stored bundle.
    async fn tamper(&self, cluster: &ClusterName, name: &SnapshotName);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes a bundle of `size` pseudo-random bytes; returns its sidecar line and metadata.
fn bundle(dir: &Path, name: &str, size: usize) -> (std::path::PathBuf, String, Vec<u8>) {
    let mut data = Vec::with_capacity(size);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ size as u64;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    let path = dir.join(format!("{name}.tar.gz"));
    std::fs::write(&path, &data).expect("write bundle");
    let sidecar = format!("{}  {name}.tar.gz\n", sha256_hex(&data));
    let metadata = format!(r#"{{"schemaVersion":1,"name":"{name}"}}"#).into_bytes();
    (path, sidecar, metadata)
}

const NOOP: &(dyn Fn(u64) + Send + Sync) = &|_| {};

/// Runs every check. `scratch` is an empty directory for local files.
pub async fn run_all(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    round_trip_is_byte_identical(store, scratch).await;
    list_head_delete(store, scratch).await;
    incomplete_uploads_are_invisible(store, raw, scratch).await;
    not_found_errors(store, scratch).await;
    names_with_every_allowed_character(store, scratch).await;
    tampered_bundles_are_refused(store, raw, scratch).await;
    existing_snapshots_are_not_replaced(store, scratch).await;
    corrupt_local_bundles_are_not_published(store, scratch).await;
}

fn names(c: &str, n: &str) -> (ClusterName, SnapshotName) {
    (ClusterName::new(c).unwrap(), SnapshotName::new(n).unwrap())
}

pub async fn round_trip_is_byte_identical(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf-rt", "big");
    // Larger than one multipart part, not a multiple of it.
    let (path, sidecar, metadata) = bundle(scratch, "big", (8 << 20) * 2 + 12345);
    let sent = std::sync::atomic::AtomicU64::new(0);
    store
        .put(&c, &n, &path, &sidecar, &metadata, &|b| {
            sent.fetch_add(b, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .expect("put");
    assert_eq!(
        sent.into_inner(),
        std::fs::metadata(&path).unwrap().len(),
        "progress counts every byte"
    );
    let dest = scratch.join("big.out");
    let fetched = store.get(&c, &n, &dest, NOOP).await.expect("get");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&path).unwrap(),
        "bundle bytes differ after a round trip"
    );
    assert_eq!(fetched.sidecar, sidecar);
    assert_eq!(fetched.metadata, metadata);
    assert_eq!(format!("{}  big.tar.gz\n", fetched.sha256), sidecar);
    store.delete(&c, &n).await.expect("delete");
}

pub async fn list_head_delete(store: &dyn SnapshotStore, scratch: &Path) {
    let c = ClusterName::new("conf-list").unwrap();
    let other = ClusterName::new("conf-list-other").unwrap();
    for n in ["a", "b"] {
        let (path, sidecar, metadata) = bundle(scratch, n, 1000);
        store
            .put(&c, &SnapshotName::new(n).unwrap(), &path, &sidecar, &metadata, NOOP)
            .await
            .expect("put");
    }
    let (path, sidecar, metadata) = bundle(scratch, "x", 10);
    store
        .put(
            &other,
            &SnapshotName::new("x").unwrap(),
            &path,
            &sidecar,
            &metadata,
            NOOP,
        )
        .await
        .expect("put other");
    let listed = store.list(&c).await.expect("list");
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"],
        "a cluster lists only its own snapshots"
    );
    assert!(
        listed
            .iter()
            .all(|s| s.complete && s.size == 1000 && s.metadata.is_some() && s.sha256.is_some())
    );
    let head = store.head(&c, &SnapshotName::new("a").unwrap()).await.expect("head");
    assert_eq!(
        head.metadata.as_deref(),
        Some(&br#"{"schemaVersion":1,"name":"a"}"#[..])
    );
    store
        .delete(&c, &SnapshotName::new("a").unwrap())
        .await
        .expect("delete");
    assert_eq!(
        store
            .list(&c)
            .await
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert!(
        matches!(
            store.head(&c, &SnapshotName::new("a").unwrap()).await,
            Err(Error::NotFound { .. })
        ),
        "deleted snapshot still there"
    );
    assert_eq!(
        store.list(&other).await.unwrap().len(),
        1,
        "deleting in one cluster leaves others alone"
    );
    for (cl, n) in [(&c, "b"), (&other, "x")] {
        store.delete(cl, &SnapshotName::new(n).unwrap()).await.expect("cleanup");
    }
    assert!(store.list(&c).await.unwrap().is_empty());
}

pub async fn incomplete_uploads_are_invisible(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    let (c, n) = names("conf-inc", "half");
    raw.leave_incomplete(&c, &n).await;
    let listed = store.list(&c).await.expect("list");
    assert!(
        listed.iter().all(|s| !s.complete),
        "an interrupted upload is listed as complete"
    );
    assert!(
        matches!(store.head(&c, &n).await, Err(Error::NotFound { .. })),
        "head finds an incomplete upload"
    );
    assert!(
        matches!(
            store.get(&c, &n, &scratch.join("half.out"), NOOP).await,
            Err(Error::NotFound { .. })
        ),
        "get returns an incomplete upload"
    );
    // A new push of the same name completes it.
    let (path, sidecar, metadata) = bundle(scratch, "half", 4096);
    store
        .put(&c, &n, &path, &sidecar, &metadata, NOOP)
        .await
        .expect("re-push after an interrupted upload");
    assert!(store.list(&c).await.unwrap().iter().all(|s| s.complete));
    store
        .get(&c, &n, &scratch.join("half.out"), NOOP)
        .await
        .expect("get after re-push");
    store.delete(&c, &n).await.expect("delete");
}

pub async fn not_found_errors(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf-nf", "nothing");
    assert!(store.list(&c).await.expect("list of an empty cluster").is_empty());
    assert!(matches!(store.head(&c, &n).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        store.get(&c, &n, &scratch.join("nf.out"), NOOP).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(store.delete(&c, &n).await, Err(Error::NotFound { .. })));
}

pub async fn names_with_every_allowed_character(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf.names_x-1", "A_z.0-9_snap-2026.11.22");
    let (path, sidecar, metadata) = bundle(scratch, "names", 100);
    store.put(&c, &n, &path, &sidecar, &metadata, NOOP).await.expect("put");
    assert_eq!(store.list(&c).await.unwrap()[0].name, n);
    store.get(&c, &n, &scratch.join("names.out"), NOOP).await.expect("get");
    store.delete(&c, &n).await.expect("delete");
}

pub async fn tampered_bundles_are_refused(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    let (c, n) = names("conf-tamper", "t");
    let (path, sidecar, metadata) = bundle(scratch, "t", 5000);
    store.put(&c, &n, &path, &sidecar, &metadata, NOOP).await.expect("put");
    raw.tamper(&c, &n).await;
    let err = store
        .get(&c, &n, &scratch.join("t.out"), NOOP)
        .await
        .expect_err("a tampered bundle was accepted");
    assert!(matches!(err, Error::Integrity { .. }), "{err}");
    store.delete(&c, &n).await.expect("delete");
}

pub async fn existing_snapshots_are_not_replaced(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf-exists", "e");
    let (path, sidecar, metadata) = bundle(scratch, "e", 300);
    store.put(&c, &n, &path, &sidecar, &metadata, NOOP).await.expect("put");
    let (path2, sidecar2, metadata2) = bundle(scratch, "e2", 301);
    assert!(matches!(
        store.put(&c, &n, &path2, &sidecar2, &metadata2, NOOP).await,
        Err(Error::AlreadyExists { .. })
    ));
    let out = scratch.join("e.out");
    store.get(&c, &n, &out, NOOP).await.expect("get");
    assert_eq!(std::fs::read(out).unwrap(), std::fs::read(path).unwrap());
    store.delete(&c, &n).await.expect("delete");
}

pub async fn corrupt_local_bundles_are_not_published(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf-corrupt", "bad");
    let (path, _, metadata) = bundle(scratch, "bad", 3000);
    let wrong = format!("{}  bad.tar.gz\n", "ab".repeat(32));
    let err = store
        .put(&c, &n, &path, &wrong, &metadata, NOOP)
        .await
        .expect_err("a bundle not matching its sidecar was pushed");
    assert!(matches!(err, Error::Integrity { .. }), "{err}");
    assert!(
        store.list(&c).await.unwrap().iter().all(|s| !s.complete),
        "a corrupt bundle was published"
    );
    assert!(matches!(store.head(&c, &n).await, Err(Error::NotFound { .. })));
}
