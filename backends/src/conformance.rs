//! The conformance suite: what every [`SnapshotStore`] must do, run unchanged against each implementation
//! (`tests/conformance.rs`). Backend-specific failure modes are reached through [`Raw`], which each backend's
//! harness implements by touching its storage directly.

use std::path::Path;

use async_trait::async_trait;

use crate::members::{BundleIndex, INDEX_VERSION, LocalMembers, Member, Moved};
use crate::{ClusterName, Error, SnapshotName, SnapshotStore, Upload};

/// Direct access to a backend's storage, for simulating what the trait must never allow.
#[async_trait]
pub trait Raw: Send + Sync {
    /// Leaves the state an interrupted upload of `name` would leave (bundle data, no commit).
    async fn leave_incomplete(&self, cluster: &ClusterName, name: &SnapshotName);
    /// Changes one byte of a stored bundle.
    async fn tamper(&self, cluster: &ClusterName, name: &SnapshotName);
    /// Changes one byte of the stored member (shared blob) `sha256`.
    async fn tamper_member(&self, sha256: &str);
    /// Whether the member `sha256` is stored.
    async fn has_member(&self, sha256: &str) -> bool;
    /// Plants the mark of a garbage collection that is running (stores that collect blobs themselves);
    /// returns false when the store has no such thing.
    async fn plant_collection_mark(&self) -> bool;
    /// Removes the marks planted.
    async fn remove_collection_marks(&self);
    /// Turns a complete schema-2 snapshot into a push that stopped after its members: the commit marker and
    /// sidecar are removed, the index stays. False when the store has no such state.
    async fn uncommit(&self, cluster: &ClusterName, name: &SnapshotName) -> bool;
    /// Plants what a teammate's other tools may leave in a shared remote: objects outside the layout (names
    /// with a control character, tags that are not snapshots) under `cluster` and at the top, and `broken`, a
    /// snapshot that looks complete but cannot be read (an invalid member index, a manifest declaring a 1 GiB
    /// metadata blob).
    async fn plant_odd_objects(&self, cluster: &ClusterName, broken: &SnapshotName);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes a bundle of `size` pseudo-random bytes; returns its sidecar line and metadata.
fn bundle(dir: &Path, name: &str, size: usize) -> (std::path::PathBuf, String, Vec<u8>) {
    let data = part(size as u64, size);
    let path = dir.join(format!("{name}.tar.gz"));
    std::fs::write(&path, &data).expect("write bundle");
    let sidecar = format!("{}  {name}.tar.gz\n", sha256_hex(&data));
    let metadata = format!(r#"{{"schemaVersion":1,"name":"{name}"}}"#).into_bytes();
    (path, sidecar, metadata)
}

const NOOP: &(dyn Fn(u64) + Send + Sync) = &|_| {};

/// A bundle made of `parts` (pseudo-random members), with its member index.
struct Members {
    path: std::path::PathBuf,
    sidecar: String,
    metadata: Vec<u8>,
    index: BundleIndex,
}

fn part(seed: u64, size: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(size + 8);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    data
}

fn member_bundle(dir: &Path, name: &str, parts: &[&[u8]]) -> Members {
    let mut data = Vec::new();
    let mut members = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        members.push(Member {
            offset: data.len() as u64,
            size: p.len() as u64,
            sha256: sha256_hex(p),
            holds: format!("part-{i}"),
            entries: 1,
        });
        data.extend_from_slice(p);
    }
    let path = dir.join(format!("{name}.tar.gz"));
    std::fs::write(&path, &data).expect("write bundle");
    let sha = sha256_hex(&data);
    Members {
        path,
        sidecar: format!("{sha}  {name}.tar.gz\n"),
        metadata: format!(r#"{{"schemaVersion":2,"name":"{name}"}}"#).into_bytes(),
        index: BundleIndex {
            index_version: INDEX_VERSION,
            sha256: sha,
            size: data.len() as u64,
            members,
        },
    }
}

async fn put(
    store: &dyn SnapshotStore,
    c: &ClusterName,
    n: &SnapshotName,
    path: &Path,
    sidecar: &str,
    metadata: &[u8],
) -> Result<Moved, Error> {
    let upload = Upload {
        bundle: path,
        sidecar,
        metadata,
        index: None,
    };
    store.put(c, n, upload, NOOP).await
}

async fn put_members(
    store: &dyn SnapshotStore,
    c: &ClusterName,
    n: &SnapshotName,
    b: &Members,
) -> Result<Moved, Error> {
    let upload = Upload {
        bundle: &b.path,
        sidecar: &b.sidecar,
        metadata: &b.metadata,
        index: Some(&b.index),
    };
    store.put(c, n, upload, NOOP).await
}

async fn get(
    store: &dyn SnapshotStore,
    c: &ClusterName,
    n: &SnapshotName,
    dest: &Path,
) -> Result<crate::Fetched, Error> {
    store.get(c, n, dest, &LocalMembers::new(), NOOP).await
}

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
    members_move_once(store, raw, scratch).await;
    collection_keeps_what_snapshots_share(store, raw, scratch).await;
    a_push_waits_for_a_running_collection(store, raw, scratch).await;
    an_interrupted_push_keeps_its_members(store, raw, scratch).await;
    a_corrupt_shared_member_is_refused(store, raw, scratch).await;
    hostile_member_indexes_are_refused(store, scratch).await;
    odd_objects_do_not_break_a_shared_remote(store, raw, scratch).await;
}

fn names(c: &str, n: &str) -> (ClusterName, SnapshotName) {
    (ClusterName::new(c).unwrap(), SnapshotName::new(n).unwrap())
}

pub async fn round_trip_is_byte_identical(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf-rt", "big");
    // Larger than one multipart part, not a multiple of it.
    let (path, sidecar, metadata) = bundle(scratch, "big", (8 << 20) * 2 + 12345);
    let sent = std::sync::atomic::AtomicU64::new(0);
    let upload = Upload {
        bundle: &path,
        sidecar: &sidecar,
        metadata: &metadata,
        index: None,
    };
    store
        .put(&c, &n, upload, &|b| {
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
    let fetched = get(store, &c, &n, &dest).await.expect("get");
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
        put(store, &c, &SnapshotName::new(n).unwrap(), &path, &sidecar, &metadata)
            .await
            .expect("put");
    }
    let (path, sidecar, metadata) = bundle(scratch, "x", 10);
    put(
        store,
        &other,
        &SnapshotName::new("x").unwrap(),
        &path,
        &sidecar,
        &metadata,
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
            get(store, &c, &n, &scratch.join("half.out")).await,
            Err(Error::NotFound { .. })
        ),
        "get returns an incomplete upload"
    );
    // A new push of the same name completes it.
    let (path, sidecar, metadata) = bundle(scratch, "half", 4096);
    put(store, &c, &n, &path, &sidecar, &metadata)
        .await
        .expect("re-push after an interrupted upload");
    assert!(store.list(&c).await.unwrap().iter().all(|s| s.complete));
    get(store, &c, &n, &scratch.join("half.out"))
        .await
        .expect("get after re-push");
    store.delete(&c, &n).await.expect("delete");
}

pub async fn not_found_errors(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf-nf", "nothing");
    assert!(store.list(&c).await.expect("list of an empty cluster").is_empty());
    assert!(matches!(store.head(&c, &n).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        get(store, &c, &n, &scratch.join("nf.out")).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(store.delete(&c, &n).await, Err(Error::NotFound { .. })));
}

pub async fn names_with_every_allowed_character(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf.names_x-1", "A_z.0-9_snap-2026.11.22");
    let (path, sidecar, metadata) = bundle(scratch, "names", 100);
    put(store, &c, &n, &path, &sidecar, &metadata).await.expect("put");
    assert_eq!(store.list(&c).await.unwrap()[0].name, n);
    get(store, &c, &n, &scratch.join("names.out")).await.expect("get");
    store.delete(&c, &n).await.expect("delete");
}

pub async fn tampered_bundles_are_refused(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    let (c, n) = names("conf-tamper", "t");
    let (path, sidecar, metadata) = bundle(scratch, "t", 5000);
    put(store, &c, &n, &path, &sidecar, &metadata).await.expect("put");
    raw.tamper(&c, &n).await;
    let err = get(store, &c, &n, &scratch.join("t.out"))
        .await
        .expect_err("a tampered bundle was accepted");
    assert!(matches!(err, Error::Integrity { .. }), "{err}");
    store.delete(&c, &n).await.expect("delete");
}

pub async fn existing_snapshots_are_not_replaced(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf-exists", "e");
    let (path, sidecar, metadata) = bundle(scratch, "e", 300);
    put(store, &c, &n, &path, &sidecar, &metadata).await.expect("put");
    let (path2, sidecar2, metadata2) = bundle(scratch, "e2", 301);
    assert!(matches!(
        put(store, &c, &n, &path2, &sidecar2, &metadata2).await,
        Err(Error::AlreadyExists { .. })
    ));
    let out = scratch.join("e.out");
    get(store, &c, &n, &out).await.expect("get");
    assert_eq!(std::fs::read(out).unwrap(), std::fs::read(path).unwrap());
    store.delete(&c, &n).await.expect("delete");
}

pub async fn corrupt_local_bundles_are_not_published(store: &dyn SnapshotStore, scratch: &Path) {
    let (c, n) = names("conf-corrupt", "bad");
    let (path, _, metadata) = bundle(scratch, "bad", 3000);
    let wrong = format!("{}  bad.tar.gz\n", "ab".repeat(32));
    let err = put(store, &c, &n, &path, &wrong, &metadata)
        .await
        .expect_err("a bundle not matching its sidecar was pushed");
    assert!(matches!(err, Error::Integrity { .. }), "{err}");
    assert!(
        store.list(&c).await.unwrap().iter().all(|s| !s.complete),
        "a corrupt bundle was published"
    );
    assert!(matches!(store.head(&c, &n).await, Err(Error::NotFound { .. })));
}

/// A second snapshot sharing members with the first sends only the new ones; a pull copies the members a
/// local bundle holds and downloads the rest, and the result is byte-identical.
pub async fn members_move_once(store: &dyn SnapshotStore, _raw: &dyn Raw, scratch: &Path) {
    let c = ClusterName::new("conf-dedup").unwrap();
    let other = ClusterName::new("conf-dedup-other").unwrap();
    let (a1, big, a3, b4) = (part(1, 70_000), part(2, (5 << 20) + 333), part(3, 4000), part(4, 9000));
    let a = member_bundle(scratch, "dedup-a", &[&a1, &big, &a3, &a1]);
    let b = member_bundle(scratch, "dedup-b", &[&a1, &big, &b4]);
    let (na, nb) = (SnapshotName::new("a").unwrap(), SnapshotName::new("b").unwrap());
    let first = put_members(store, &c, &na, &a).await.expect("first push");
    assert_eq!(first.transferred + first.reused, a.index.size, "{first:?}");
    assert_eq!(
        first.transferred,
        (a1.len() + big.len() + a3.len()) as u64,
        "a repeated member is sent once: {first:?}"
    );
    // Another cluster's snapshot shares the members too.
    let second = put_members(store, &other, &nb, &b).await.expect("second push");
    assert_eq!(
        second.transferred,
        b4.len() as u64,
        "only the new member is sent: {second:?}"
    );
    assert_eq!(second.reused, (a1.len() + big.len()) as u64);
    assert_eq!(store.head(&other, &nb).await.expect("head").size, b.index.size);
    assert_eq!(store.list(&other).await.expect("list")[0].size, b.index.size);

    // Pull with a's bundle local: only b4 comes over the network.
    let mut local = LocalMembers::new();
    local.add(&a.path, &a.index);
    let dest = scratch.join("dedup-b.out");
    let fetched = store.get(&other, &nb, &dest, &local, NOOP).await.expect("get");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&b.path).unwrap(),
        "pulled bundle differs"
    );
    assert_eq!(fetched.moved.transferred, b4.len() as u64, "{:?}", fetched.moved);
    assert_eq!(fetched.moved.reused, (a1.len() + big.len()) as u64);
    assert_eq!(format!("{}  dedup-b.tar.gz\n", fetched.sha256), b.sidecar);
    assert_eq!(fetched.index.as_ref().map(|i| i.members.len()), Some(3));
    // A local copy that no longer matches its digest is not used: the member is downloaded.
    // Both a small member (fetched whole) and a large one (streamed) are taken from the remote instead.
    let mut bytes = std::fs::read(&a.path).unwrap();
    bytes[10] ^= 1;
    bytes[a1.len() + 100] ^= 1;
    let changed = scratch.join("dedup-a-changed.tar.gz");
    std::fs::write(&changed, bytes).unwrap();
    let mut stale = LocalMembers::new();
    stale.add(&changed, &a.index);
    let dest2 = scratch.join("dedup-b2.out");
    let fetched = store
        .get(&other, &nb, &dest2, &stale, NOOP)
        .await
        .expect("get with a stale local copy");
    assert_eq!(std::fs::read(&dest2).unwrap(), std::fs::read(&b.path).unwrap());
    assert_eq!(
        fetched.moved.transferred,
        (a1.len() + big.len() + b4.len()) as u64,
        "{:?}",
        fetched.moved
    );
    for (cl, n) in [(&c, &na), (&other, &nb)] {
        store.delete(cl, n).await.expect("cleanup");
    }
    store.collect_garbage(&[], false).await.expect("collect");
}

/// Deleting one of two snapshots that share members, then collecting, removes only what the other does not
/// use; the other still pulls byte-identical. A snapshot being pushed (index, no commit) keeps its members.
pub async fn collection_keeps_what_snapshots_share(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    let c = ClusterName::new("conf-gc").unwrap();
    let (shared, only_a, only_b) = (part(11, 50_000), part(12, 6000), part(13, 7000));
    let a = member_bundle(scratch, "gc-a", &[&shared, &only_a]);
    let b = member_bundle(scratch, "gc-b", &[&shared, &only_b]);
    let (na, nb) = (SnapshotName::new("a").unwrap(), SnapshotName::new("b").unwrap());
    put_members(store, &c, &na, &a).await.expect("push a");
    put_members(store, &c, &nb, &b).await.expect("push b");
    let plan = store
        .collect_garbage(&[(c.clone(), na.clone())], true)
        .await
        .expect("plan");
    let own = |b: &[u8]| sha256_hex(b);
    if plan.note.is_none() {
        assert_eq!(
            plan.blobs.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
            [own(&only_a).as_str()],
            "the plan removes only what a alone uses"
        );
        assert!(raw.has_member(&own(&only_a)).await, "a dry run removed something");
    }
    store.delete(&c, &na).await.expect("delete a");
    let collected = store.collect_garbage(&[], false).await.expect("collect");
    if collected.note.is_none() {
        assert_eq!(collected.blobs.len(), 1, "{collected:?}");
        assert!(!raw.has_member(&own(&only_a)).await, "an unreferenced member survived");
        assert!(raw.has_member(&own(&shared)).await, "a shared member was removed");
    }
    let dest = scratch.join("gc-b.out");
    get(store, &c, &nb, &dest).await.expect("b after a's collection");
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&b.path).unwrap());

    store.delete(&c, &nb).await.expect("delete b");
    let collected = store.collect_garbage(&[], false).await.expect("collect");
    if collected.note.is_none() {
        assert!(!raw.has_member(&own(&shared)).await, "nothing references it any more");
        assert!(!raw.has_member(&own(&only_b)).await);
    }
}

/// A push that starts while a collection runs waits for it to end, then publishes a complete snapshot.
pub async fn a_push_waits_for_a_running_collection(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    if !raw.plant_collection_mark().await {
        return;
    }
    let c = ClusterName::new("conf-gc-wait").unwrap();
    let n = SnapshotName::new("w").unwrap();
    let x = part(21, 10_000);
    let bundle = member_bundle(scratch, "gc-wait", &[&x]);
    let push = put_members(store, &c, &n, &bundle);
    tokio::pin!(push);
    let early = tokio::time::timeout(std::time::Duration::from_millis(1500), &mut push).await;
    assert!(early.is_err(), "a push went ahead during a collection");
    // Meanwhile its index keeps its member safe from the collection.
    raw.remove_collection_marks().await;
    tokio::time::timeout(std::time::Duration::from_secs(30), push)
        .await
        .expect("the push ended once the collection had")
        .expect("push");
    let dest = scratch.join("gc-wait.out");
    get(store, &c, &n, &dest).await.expect("get");
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&bundle.path).unwrap());
    store.delete(&c, &n).await.expect("delete");
    store.collect_garbage(&[], false).await.expect("collect");
}

/// A shared member changed in storage is refused on pull, naming the snapshot.
pub async fn a_corrupt_shared_member_is_refused(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    let c = ClusterName::new("conf-corrupt-member").unwrap();
    let n = SnapshotName::new("m").unwrap();
    let (x, y) = (part(31, 20_000), part(32, 30_000));
    let bundle = member_bundle(scratch, "corrupt-member", &[&x, &y]);
    put_members(store, &c, &n, &bundle).await.expect("push");
    raw.tamper_member(&sha256_hex(&y)).await;
    let err = get(store, &c, &n, &scratch.join("corrupt-member.out"))
        .await
        .expect_err("a corrupt member was accepted");
    assert!(matches!(err, Error::Integrity { .. } | Error::Io { .. }), "{err}");
    store.delete(&c, &n).await.expect("delete");
    store.collect_garbage(&[], false).await.expect("collect");
}

/// A push whose index does not describe its bundle publishes nothing.
pub async fn hostile_member_indexes_are_refused(store: &dyn SnapshotStore, scratch: &Path) {
    let c = ClusterName::new("conf-bad-index").unwrap();
    let n = SnapshotName::new("i").unwrap();
    let (x, y) = (part(41, 5000), part(42, 6000));
    let mut bundle = member_bundle(scratch, "bad-index", &[&x, &y]);
    // The second member's digest is another's: its bytes would be stored under a wrong name.
    bundle.index.members[1].sha256 = sha256_hex(&x);
    let err = put_members(store, &c, &n, &bundle)
        .await
        .expect_err("a member stored under a digest that is not its own");
    assert!(matches!(err, Error::Integrity { .. }), "{err}");
    assert!(matches!(store.head(&c, &n).await, Err(Error::NotFound { .. })));
    // A local bundle changed since it was indexed: the member that must be sent does not match its digest.
    let mut changed = member_bundle(scratch, "changed", &[&x, &part(43, 7000)]);
    let mut bytes = std::fs::read(&changed.path).unwrap();
    bytes[5000 + 10] ^= 1;
    std::fs::write(&changed.path, bytes).unwrap();
    changed.metadata = br#"{"schemaVersion":2,"name":"changed"}"#.to_vec();
    let err = put_members(store, &c, &n, &changed)
        .await
        .expect_err("a member that does not match its digest was sent");
    assert!(matches!(err, Error::Integrity { .. }), "{err}");
    assert!(matches!(store.head(&c, &n).await, Err(Error::NotFound { .. })));
    let _ = store.delete(&c, &n).await;
    store.collect_garbage(&[], false).await.expect("collect");
}

/// A push that stopped after uploading its members (index written, no commit) is listed as incomplete and keeps
/// its members through a collection, until it is deleted.
pub async fn an_interrupted_push_keeps_its_members(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    let c = ClusterName::new("conf-gc-pending").unwrap();
    let n = SnapshotName::new("p").unwrap();
    let x = part(51, 12_000);
    let bundle = member_bundle(scratch, "gc-pending", &[&x]);
    put_members(store, &c, &n, &bundle).await.expect("push");
    if !raw.uncommit(&c, &n).await {
        store.delete(&c, &n).await.expect("delete");
        return;
    }
    assert!(store.list(&c).await.unwrap().iter().all(|s| !s.complete));
    let collected = store.collect_garbage(&[], false).await.expect("collect");
    assert!(collected.blobs.is_empty(), "{collected:?}");
    assert!(raw.has_member(&sha256_hex(&x)).await, "a pending push lost its member");
    store.delete(&c, &n).await.expect("delete the incomplete snapshot");
    store.collect_garbage(&[], false).await.expect("collect");
    assert!(!raw.has_member(&sha256_hex(&x)).await);
}

/// One object a store does not understand never breaks list, delete or collection for everyone: objects outside
/// the layout are skipped, a snapshot that cannot be read is listed with the reason, and nothing that a good
/// snapshot uses is collected.
pub async fn odd_objects_do_not_break_a_shared_remote(store: &dyn SnapshotStore, raw: &dyn Raw, scratch: &Path) {
    let (c, good) = names("conf-odd", "good");
    let broken = SnapshotName::new("broken").unwrap();
    let (x, y) = (part(61, 7000), part(62, 9000));
    put_members(store, &c, &good, &member_bundle(scratch, "odd-good", &[&x, &y]))
        .await
        .expect("push");
    raw.plant_odd_objects(&c, &broken).await;
    let listed = store.list(&c).await.expect("list with odd objects in the remote");
    let by_name = |n: &str| listed.iter().find(|s| s.name.as_str() == n);
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["broken", "good"],
        "objects outside the layout are skipped, a broken snapshot is listed"
    );
    let ok = by_name("good").unwrap();
    assert!(ok.complete && ok.problem.is_none(), "{ok:?}");
    let bad = by_name("broken").unwrap();
    let why = bad
        .problem
        .as_deref()
        .expect("a snapshot that cannot be read is listed with the reason");
    assert!(!why.chars().any(char::is_control), "raw control characters in {why:?}");
    assert!(
        store.head(&c, &broken).await.is_err(),
        "head reads a snapshot that cannot be read"
    );
    // Collection runs, and keeps what the good snapshot uses.
    store
        .collect_garbage(&[], false)
        .await
        .expect("collection with odd objects in the remote");
    for m in [&x, &y] {
        assert!(raw.has_member(&sha256_hex(m)).await, "a good snapshot lost a member");
    }
    store.delete(&c, &broken).await.expect("delete the broken snapshot");
    store.delete(&c, &good).await.expect("delete the good snapshot");
    assert!(store.list(&c).await.expect("list").is_empty());
    store.collect_garbage(&[], false).await.expect("collect");
}
