//! Every store runs the same conformance suite: a local directory, S3 against a real s3s-fs server (SigV4
//! checked), and OCI against Debian's docker-registry with Basic auth, and with Bearer tokens and paged tags
//! (see `registry/`), all on loopback.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kubectl_snapshot_backends::conformance::{self, Raw};
use kubectl_snapshot_backends::oci::{self, OciOptions};
use kubectl_snapshot_backends::remote::{BLOBS, BUNDLE, GC_MARKS, INDEX, METADATA, SIDECAR};
use kubectl_snapshot_backends::s3::{Credentials, S3Options, Secret, Sourced};
use kubectl_snapshot_backends::{ClusterName, Error, LocalMembers, SnapshotName, SnapshotStore, Upload, url};

fn upload<'a>(bundle: &'a std::path::Path, sidecar: &'a str) -> Upload<'a> {
    Upload {
        bundle,
        sidecar,
        metadata: b"{}",
        index: None,
    }
}
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use registry::front::Front;
use registry::token::TokenIssuer;
use registry::{PASS, Registry, Tls, USER, htpasswd, tokens};

mod registry;

struct ObjectRaw {
    store: Arc<dyn ObjectStore>,
    folder: Vec<String>,
    /// The directory the store keeps its objects in, one file per key (both test stores do): names that
    /// object_store cannot write are planted there.
    files: std::path::PathBuf,
}

impl ObjectRaw {
    fn path(&self, parts: &[&str]) -> Key {
        let mut all = self.folder.clone();
        all.extend(parts.iter().map(|p| p.to_string()));
        Key::from_iter(all)
    }

    fn key(&self, c: &ClusterName, n: &SnapshotName, file: &str) -> Key {
        let mut parts = self.folder.clone();
        parts.extend([c.to_string(), n.to_string(), file.to_owned()]);
        Key::from_iter(parts)
    }
}

#[async_trait]
impl Raw for ObjectRaw {
    async fn leave_incomplete(&self, c: &ClusterName, n: &SnapshotName) {
        self.store
            .put(&self.key(c, n, BUNDLE), PutPayload::from(vec![7u8; 2048]))
            .await
            .unwrap();
        self.store
            .put(
                &self.key(c, n, SIDECAR),
                PutPayload::from(format!("{}  x\n", "0".repeat(64)).into_bytes()),
            )
            .await
            .unwrap();
    }
    async fn tamper(&self, c: &ClusterName, n: &SnapshotName) {
        let key = self.key(c, n, BUNDLE);
        let mut bytes = self.store.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
        bytes[10] ^= 1;
        self.store.put(&key, PutPayload::from(bytes)).await.unwrap();
    }
    async fn tamper_member(&self, sha256: &str) {
        let key = self.path(&[BLOBS, "sha256", sha256]);
        let mut bytes = self.store.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
        bytes[10] ^= 1;
        self.store.put(&key, PutPayload::from(bytes)).await.unwrap();
    }
    async fn has_member(&self, sha256: &str) -> bool {
        self.store.head(&self.path(&[BLOBS, "sha256", sha256])).await.is_ok()
    }
    async fn plant_collection_mark(&self) -> bool {
        let key = self.path(&[GC_MARKS, "planted.json"]);
        self.store.put(&key, PutPayload::from(b"{}".to_vec())).await.unwrap();
        true
    }
    async fn remove_collection_marks(&self) {
        self.store
            .delete(&self.path(&[GC_MARKS, "planted.json"]))
            .await
            .unwrap();
    }
    async fn uncommit(&self, c: &ClusterName, n: &SnapshotName) -> bool {
        for file in [METADATA, SIDECAR] {
            self.store.delete(&self.key(c, n, file)).await.unwrap();
        }
        true
    }
    async fn plant_odd_objects(&self, c: &ClusterName, broken: &SnapshotName) {
        // Keys with a control character (a terminal escape), as another tool can write them: in a snapshot's
        // place under the cluster, and at the top, where collection lists.
        let folder = self.folder.iter().fold(self.files.clone(), |p, f| p.join(f));
        let odd = folder.join(c.as_str()).join("x\x1b]0;pwned\x07");
        std::fs::create_dir_all(&odd).unwrap();
        std::fs::write(odd.join(METADATA), b"{}").unwrap();
        std::fs::write(folder.join("notes\x1b[2J"), b"not a snapshot").unwrap();
        // A snapshot that looks complete, with an index that is not one.
        let put = |file: &str, body: &[u8]| {
            let key = self.key(c, broken, file);
            let body = PutPayload::from(body.to_vec());
            async move { self.store.put(&key, body).await.unwrap() }
        };
        put(INDEX, b"{\"indexVersion\": \"\x1b[31mnot an index").await;
        put(SIDECAR, format!("{}  bundle.tar.gz\n", "ab".repeat(32)).as_bytes()).await;
        put(METADATA, br#"{"schemaVersion":2,"name":"broken"}"#).await;
    }
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = url::open_dir(&dir.path().join("remote")).unwrap();
    let raw = ObjectRaw {
        store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path().join("remote")).unwrap()),
        folder: vec![],
        files: dir.path().join("remote"),
    };
    conformance::run_all(&store, &raw, scratch.path()).await;
}

/// An s3s-fs server (a real S3 API over HTTP, checking SigV4) on a free loopback port, killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const AK: &str = "conformance-access";
pub const SK: &str = "conformance-secret-do-not-print";

fn s3s_fs() -> String {
    if let Ok(p) = std::env::var("S3S_FS") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    for p in ["s3s-fs".to_owned(), format!("{home}/.cargo/bin/s3s-fs")] {
        if Command::new(&p)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return p;
        }
    }
    panic!(
        "the S3 test server s3s-fs is not installed: run tests/run (it installs it with `cargo install --locked s3s-fs@0.14.1 --features binary`)"
    );
}

pub fn start_s3(bucket: &str) -> S3Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(bucket)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(s3s_fs())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            AK,
            "--secret-key",
            SK,
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let server = S3Server { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn s3_options(port: u16, bucket: &str, folder: &str) -> S3Options {
    let mut o = S3Options::new(bucket);
    o.folder = folder.into();
    o.endpoint = Some(Sourced::new(format!("127.0.0.1:{port}"), "--s3-endpoint"));
    o.insecure = true;
    o.credentials = Some(Credentials {
        key: AK.into(),
        secret: Secret::new(SK),
        token: None,
        from: "--s3-access-key/--s3-secret-key".into(),
    });
    o.timeout = Duration::from_secs(20);
    o
}

#[tokio::test]
async fn s3() {
    let server = start_s3("snapshots");
    let scratch = tempfile::tempdir().unwrap();
    let store = kubectl_snapshot_backends::s3::open(&s3_options(server.port, "snapshots", "team/a")).unwrap();
    // Raw access goes through the same server, signed the same way.
    let raw_store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("snapshots")
        .with_region("us-east-1")
        .with_endpoint(format!("http://127.0.0.1:{}", server.port))
        .with_allow_http(true)
        .with_access_key_id(AK)
        .with_secret_access_key(SK)
        .build()
        .unwrap();
    let raw = ObjectRaw {
        store: Arc::new(raw_store),
        folder: vec!["team".into(), "a".into()],
        files: server.dir.path().join("snapshots"),
    };
    conformance::run_all(&store, &raw, scratch.path()).await;
}

#[tokio::test]
async fn s3_wrong_credentials_name_the_endpoint_and_source_never_the_secret() {
    let server = start_s3("snapshots");
    let mut o = s3_options(server.port, "snapshots", "");
    if let Some(c) = o.credentials.as_mut() {
        c.secret = Secret::new("wrong-secret-value-xyz");
    }
    let store = kubectl_snapshot_backends::s3::open(&o).unwrap();
    let err = store
        .list(&ClusterName::new("c").unwrap())
        .await
        .expect_err("wrong secret accepted");
    let msg = err.to_string();
    assert!(matches!(err, Error::Denied { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", server.port)), "{msg}");
    assert!(msg.contains("--s3-access-key/--s3-secret-key"), "{msg}");
    assert!(
        !msg.contains("wrong-secret-value-xyz") && !msg.contains(SK),
        "secret in error: {msg}"
    );
}

fn oci_options(addr: &str, password: &str) -> OciOptions {
    OciOptions {
        registry: addr.into(),
        repository: "team/snapshots".into(),
        insecure: true,
        ca: vec![],
        username: Some(USER.into()),
        password: Some(Secret::new(password)),
    }
}

/// Raw access to a registry reached at `addr` (directly or through a front) and to its storage directory.
struct RegistryRaw<'a> {
    addr: String,
    registry: &'a Registry,
}

#[async_trait]
impl Raw for RegistryRaw<'_> {
    async fn leave_incomplete(&self, c: &ClusterName, n: &SnapshotName) {
        // A blob without a manifest: what an upload interrupted before its manifest leaves.
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let r = oci_client::Reference::with_tag(self.addr.clone(), format!("team/snapshots/{c}"), n.to_string());
        let auth = oci_client::secrets::RegistryAuth::Basic(USER.into(), PASS.into());
        client
            .auth(&r, &auth, oci_client::RegistryOperation::Push)
            .await
            .unwrap();
        let data = vec![3u8; 4096];
        let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)));
        client.push_blob(&r, data, &digest).await.unwrap();
    }
    async fn tamper(&self, c: &ClusterName, n: &SnapshotName) {
        let store = oci::open(&oci_options(&self.addr, PASS)).unwrap();
        let hex = store.head(c, n).await.unwrap().sha256.unwrap();
        let blob = self.registry.blob(&hex);
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&blob, bytes).unwrap();
    }
    async fn tamper_member(&self, sha256: &str) {
        let blob = self.registry.blob(sha256);
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&blob, bytes).unwrap();
    }
    async fn has_member(&self, sha256: &str) -> bool {
        self.registry.blob(sha256).exists()
    }
    async fn plant_collection_mark(&self) -> bool {
        false
    }
    async fn remove_collection_marks(&self) {}
    async fn uncommit(&self, _: &ClusterName, _: &SnapshotName) -> bool {
        false
    }
    async fn plant_odd_objects(&self, c: &ClusterName, broken: &SnapshotName) {
        use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let repo = format!("team/snapshots/{c}");
        let auth = oci_client::secrets::RegistryAuth::Basic(USER.into(), PASS.into());
        let push = |tag: &str, artifact: Option<&'static str>, config_size: i64| {
            let r = oci_client::Reference::with_tag(self.addr.clone(), repo.clone(), tag.to_owned());
            let (client, auth) = (&client, &auth);
            async move {
                client
                    .auth(&r, auth, oci_client::RegistryOperation::Push)
                    .await
                    .unwrap();
                let blob =
                    |data: &[u8]| format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data)));
                let (config, layer) = (b"{}".to_vec(), vec![9u8; 2048]);
                client.push_blob(&r, config.clone(), &blob(&config)).await.unwrap();
                client.push_blob(&r, layer.clone(), &blob(&layer)).await.unwrap();
                let manifest = OciImageManifest {
                    schema_version: 2,
                    media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                    config: OciDescriptor {
                        media_type: oci::CONFIG_TYPE.into(),
                        digest: blob(&config),
                        size: config_size,
                        ..Default::default()
                    },
                    layers: vec![OciDescriptor {
                        media_type: oci::BUNDLE_TYPE.into(),
                        digest: blob(&layer),
                        size: layer.len() as i64,
                        ..Default::default()
                    }],
                    subject: None,
                    artifact_type: artifact.map(str::to_owned),
                    annotations: None,
                };
                client.push_manifest(&r, &OciManifest::Image(manifest)).await.unwrap();
            }
        };
        // A snapshot whose manifest declares a 1 GiB metadata blob, and an image that is not a snapshot.
        push(broken.as_str(), Some(oci::ARTIFACT_TYPE), 1 << 30).await;
        push("not-a-snapshot", None, 2).await;
    }
}

async fn oci_suite(addr: &str, registry: &Registry) {
    let scratch = tempfile::tempdir().unwrap();
    let store = oci::open(&oci_options(addr, PASS)).unwrap();
    let raw = RegistryRaw {
        addr: addr.to_owned(),
        registry,
    };
    conformance::run_all(&store, &raw, scratch.path()).await;
}

/// Pushes a small bundle (`fill` repeated) as `cluster/name`; returns its sha256.
async fn put_small(
    store: &dyn SnapshotStore,
    scratch: &std::path::Path,
    cluster: &str,
    name: &str,
    fill: u8,
) -> String {
    let data = vec![fill; 3000];
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    let path = scratch.join(format!("{name}-{fill}.tar.gz"));
    std::fs::write(&path, &data).unwrap();
    let metadata = format!(r#"{{"schemaVersion":1,"name":"{name}"}}"#);
    let (c, n) = (ClusterName::new(cluster).unwrap(), SnapshotName::new(name).unwrap());
    let sidecar = format!("{hex}  {name}.tar.gz\n");
    let upload = kubectl_snapshot_backends::Upload {
        bundle: &path,
        sidecar: &sidecar,
        metadata: metadata.as_bytes(),
        index: None,
    };
    store.put(&c, &n, upload, &|_| {}).await.expect("put");
    hex
}

fn names(listed: &[kubectl_snapshot_backends::RemoteSnapshot]) -> Vec<&str> {
    listed.iter().map(|s| s.name.as_str()).collect()
}

/// Debian's docker-registry (distribution 2.8.2) with htpasswd auth: Basic credentials on every request.
#[tokio::test]
async fn oci_registry() {
    let registry = Registry::start(htpasswd(), true);
    oci_suite(&format!("127.0.0.1:{}", registry.port), &registry).await;
}

/// The same suite against the registry in `auth: token` mode, where every request needs a Bearer token whose
/// scope covers it (pull, push, delete), and through a front that pages tag lists one tag at a time.
#[tokio::test]
async fn oci_registry_with_bearer_tokens_and_paged_tags() {
    let issuer = TokenIssuer::start(USER, PASS);
    let registry = Registry::start(tokens(&issuer), true);
    let front = Front::start(registry.port, 1);
    oci_suite(&front.addr(), &registry).await;
    let log = front.log();
    // The password goes to the token endpoint only; the registry sees tokens.
    assert!(
        log.iter().all(|l| l.auth.as_deref() != Some("Basic")),
        "Basic credentials were sent to a token registry: {log:#?}"
    );
    assert!(log.iter().any(|l| l.auth.as_deref() == Some("Bearer")), "{log:#?}");
    // Listing followed `Link` past the first page.
    assert!(
        log.iter()
            .any(|l| l.target.contains("/tags/list?") && l.target.contains("last=") && l.status == 200),
        "{log:#?}"
    );
    let asked = issuer.asked();
    for action in ["pull", "push", "delete"] {
        let asked_for = |(scope, ok): &(String, bool)| {
            *ok && scope.starts_with("repository:team/snapshots/")
                && scope.rsplit(':').next().unwrap().split(',').any(|a| a == action)
        };
        assert!(
            asked.iter().any(asked_for),
            "no token was asked for {action}: {asked:?}"
        );
    }
}

#[tokio::test]
async fn oci_list_follows_every_link_page() {
    let registry = Registry::start(htpasswd(), true);
    let front = Front::start(registry.port, 2);
    let store = oci::open(&oci_options(&front.addr(), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for (i, n) in ["e", "a", "d", "b", "c"].into_iter().enumerate() {
        put_small(&store, scratch.path(), "paged", n, i as u8).await;
    }
    let listed = store.list(&ClusterName::new("paged").unwrap()).await.expect("list");
    assert_eq!(names(&listed), ["a", "b", "c", "d", "e"]);
    assert!(listed.iter().all(|s| s.complete && s.size == 3000));
    let pages: Vec<_> = front
        .log()
        .into_iter()
        .filter(|l| l.target.starts_with("/v2/team/snapshots/paged/tags/list") && l.status == 200)
        .collect();
    assert_eq!(pages.len(), 3, "5 tags at 2 a page are 3 pages: {pages:#?}");
}

#[tokio::test]
async fn oci_tag_pages_that_loop_are_an_error_not_a_hang() {
    let registry = Registry::start(htpasswd(), true);
    let front = Front::looping(registry.port);
    let store = oci::open(&oci_options(&front.addr(), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for (i, n) in ["a", "b"].into_iter().enumerate() {
        put_small(&store, scratch.path(), "loop", n, i as u8).await;
    }
    let c = ClusterName::new("loop").unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), store.list(&c))
        .await
        .expect("list kept following a Link that loops")
        .expect_err("a looping tag list was accepted");
    assert!(
        matches!(err, Error::Remote { .. }) && err.to_string().contains("Link"),
        "{err}"
    );
}

#[tokio::test]
async fn oci_blobs_already_in_the_repository_are_not_uploaded_again() {
    let registry = Registry::start(htpasswd(), true);
    let front = Front::start(registry.port, 1000);
    let store = oci::open(&oci_options(&front.addr(), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let hex = put_small(&store, scratch.path(), "dedup", "first", 9).await;
    assert_eq!(put_small(&store, scratch.path(), "dedup", "second", 9).await, hex);
    let uploads: Vec<_> = front
        .log()
        .into_iter()
        .filter(|l| {
            l.method == "PUT"
                && (l.target.contains(&format!("digest=sha256:{hex}"))
                    || l.target.contains(&format!("digest=sha256%3A{hex}")))
        })
        .collect();
    assert_eq!(uploads.len(), 1, "the same bundle was uploaded twice: {uploads:#?}");
    let c = ClusterName::new("dedup").unwrap();
    assert_eq!(names(&store.list(&c).await.unwrap()), ["first", "second"]);
    let out = scratch.path().join("second.out");
    store
        .get(
            &c,
            &SnapshotName::new("second").unwrap(),
            &out,
            &LocalMembers::new(),
            &|_| {},
        )
        .await
        .expect("get");
    assert_eq!(std::fs::read(out).unwrap(), vec![9u8; 3000]);
}

#[tokio::test]
async fn oci_a_blob_longer_than_its_manifest_declares_is_refused_and_not_kept_growing() {
    let registry = Registry::start(htpasswd(), true);
    let store = oci::open(&oci_options(&format!("127.0.0.1:{}", registry.port), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let hex = put_small(&store, scratch.path(), "long", "s", 4).await;
    // The registry now serves 8 MiB more than the manifest's 3000 bytes.
    let blob = registry.blob(&hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes.extend(vec![0u8; 8 << 20]);
    std::fs::write(&blob, bytes).unwrap();
    let out = scratch.path().join("long.out");
    let err = store
        .get(
            &ClusterName::new("long").unwrap(),
            &SnapshotName::new("s").unwrap(),
            &out,
            &LocalMembers::new(),
            &|_| {},
        )
        .await
        .expect_err("an overlong blob was accepted");
    assert!(
        matches!(err, Error::Integrity { .. }) && err.to_string().contains("more than the 3000 bytes"),
        "{err}"
    );
    assert!(
        std::fs::metadata(&out).map_or(0, |m| m.len()) <= 3000,
        "the download went past the declared size"
    );
}

#[tokio::test]
async fn oci_a_failed_upload_is_retried_and_progress_ends_at_the_bundle_size() {
    let registry = Registry::start(htpasswd(), true);
    let front = Front::start(registry.port, 1000);
    front.fail_next_uploads(1);
    let store = oci::open(&oci_options(&front.addr(), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    let path = scratch.path().join("r.tar.gz");
    std::fs::write(&path, &data).unwrap();
    let (c, n) = (ClusterName::new("retry").unwrap(), SnapshotName::new("s").unwrap());
    let sent = std::sync::atomic::AtomicU64::new(0);
    store
        .put(&c, &n, upload(&path, &format!("{hex}  r.tar.gz\n")), &|b| {
            sent.fetch_add(b, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .expect("a push with one failed upload");
    assert_eq!(
        sent.into_inner(),
        data.len() as u64,
        "progress must count each byte once across attempts"
    );
    let puts: Vec<u16> = front
        .log()
        .iter()
        .filter(|l| l.method == "PUT" && l.target.contains(&hex))
        .map(|l| l.status)
        .collect();
    assert_eq!(puts, [503, 201], "{:#?}", front.log());
    let out = scratch.path().join("r.out");
    store
        .get(&c, &n, &out, &LocalMembers::new(), &|_| {})
        .await
        .expect("get");
    assert_eq!(std::fs::read(out).unwrap(), data);
}

#[tokio::test]
async fn oci_an_upload_failing_every_attempt_fails_and_publishes_nothing() {
    let registry = Registry::start(htpasswd(), true);
    let front = Front::start(registry.port, 1000);
    front.fail_next_uploads(3);
    let store = oci::open(&oci_options(&front.addr(), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("f.tar.gz");
    std::fs::write(&path, vec![1u8; 5000]).unwrap();
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(vec![1u8; 5000]));
    let (c, n) = (ClusterName::new("fails").unwrap(), SnapshotName::new("s").unwrap());
    let err = store
        .put(&c, &n, upload(&path, &format!("{hex}  f.tar.gz\n")), &|_| {})
        .await
        .expect_err("pushed through failing uploads");
    let msg = err.to_string();
    assert!(msg.contains("attempt 3 of 3") && msg.contains("503"), "{msg}");
    assert!(
        matches!(store.head(&c, &n).await, Err(Error::NotFound { .. })),
        "a failed push is visible"
    );
    assert!(store.list(&c).await.unwrap().is_empty());
}

#[tokio::test]
async fn oci_a_proxy_refusing_large_bodies_gets_an_actionable_error() {
    let registry = Registry::start(htpasswd(), true);
    let front = Front::start(registry.port, 1000);
    front.limit_body(1 << 20);
    let store = oci::open(&oci_options(&front.addr(), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let data = vec![7u8; 2 << 20];
    let path = scratch.path().join("big.tar.gz");
    std::fs::write(&path, &data).unwrap();
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    let (c, n) = (ClusterName::new("limited").unwrap(), SnapshotName::new("s").unwrap());
    let err = store
        .put(&c, &n, upload(&path, &format!("{hex}  big.tar.gz\n")), &|_| {})
        .await
        .expect_err("a body over the proxy's limit was accepted");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 413") && msg.contains("2097152 bytes") && msg.contains("client_max_body_size"),
        "{msg}"
    );
    assert!(!msg.contains("<html>"), "{msg}");
    let head = store.head(&c, &n).await;
    assert!(matches!(head, Err(Error::NotFound { .. })), "{head:?}");
}

#[tokio::test]
async fn oci_delete_without_delete_scope_is_denied_and_keeps_the_snapshot() {
    let issuer = TokenIssuer::start(USER, PASS);
    issuer.refuse("delete");
    let registry = Registry::start(tokens(&issuer), true);
    let store = oci::open(&oci_options(&format!("127.0.0.1:{}", registry.port), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    put_small(&store, scratch.path(), "keep", "s", 1).await;
    let (c, n) = (ClusterName::new("keep").unwrap(), SnapshotName::new("s").unwrap());
    let err = store
        .delete(&c, &n)
        .await
        .expect_err("deleted without a delete-scoped token");
    let msg = err.to_string();
    assert!(matches!(err, Error::Denied { .. }) && msg.contains("delete"), "{msg}");
    assert!(!msg.contains(PASS), "password in error: {msg}");
    store.head(&c, &n).await.expect("the snapshot is still there");
}

#[tokio::test]
async fn oci_registry_refusing_api_deletes_gets_a_clear_message() {
    let registry = Registry::start(htpasswd(), false);
    let store = oci::open(&oci_options(&format!("127.0.0.1:{}", registry.port), PASS)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    put_small(&store, scratch.path(), "nodelete", "s", 1).await;
    let (c, n) = (ClusterName::new("nodelete").unwrap(), SnapshotName::new("s").unwrap());
    let err = store
        .delete(&c, &n)
        .await
        .expect_err("delete succeeded on a registry with deletes disabled");
    assert!(err.to_string().contains("refuses deletes"), "{err}");
    store.head(&c, &n).await.expect("the snapshot is still there");
}

#[tokio::test]
async fn oci_registry_over_https_with_a_private_ca() {
    let tls = Tls::new();
    let registry = Registry::start_with(htpasswd(), true, Some(&tls));
    let addr = format!("127.0.0.1:{}", registry.port);
    let https = |ca: Vec<String>| {
        oci::open(&OciOptions {
            insecure: false,
            ca,
            ..oci_options(&addr, PASS)
        })
        .unwrap()
    };
    let scratch = tempfile::tempdir().unwrap();
    let c = ClusterName::new("tls").unwrap();
    // Without the CA the registry's certificate is not trusted, the error says so, and nothing is sent.
    let err = https(vec![])
        .list(&c)
        .await
        .expect_err("an untrusted certificate was accepted");
    assert!(err.to_string().contains("invalid peer certificate"), "{err}");
    // With it (--oci-ca), everything works over HTTPS.
    let store = https(vec![tls.ca()]);
    put_small(&store, scratch.path(), "tls", "s", 5).await;
    assert_eq!(names(&store.list(&c).await.unwrap()), ["s"]);
    let out = scratch.path().join("tls.out");
    store
        .get(
            &c,
            &SnapshotName::new("s").unwrap(),
            &out,
            &LocalMembers::new(),
            &|_| {},
        )
        .await
        .expect("get over https");
    assert_eq!(std::fs::read(out).unwrap(), vec![5u8; 3000]);
    store
        .delete(&c, &SnapshotName::new("s").unwrap())
        .await
        .expect("delete over https");
}

#[tokio::test]
async fn oci_https_registry_with_a_cleartext_token_realm_is_sent_no_credentials() {
    let tls = Tls::new();
    let issuer = TokenIssuer::start(USER, PASS);
    assert!(issuer.realm().starts_with("http://"));
    let registry = Registry::start_with(tokens(&issuer), true, Some(&tls));
    let addr = format!("127.0.0.1:{}", registry.port);
    let store = oci::open(&OciOptions {
        insecure: false,
        ca: vec![tls.ca()],
        ..oci_options(&addr, PASS)
    })
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = scratch.path().join("b.tar.gz");
    std::fs::write(&bundle, b"bundle").unwrap();
    let sidecar = format!(
        "{}  b.tar.gz\n",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"bundle"))
    );
    let (c, n) = (ClusterName::new("realm").unwrap(), SnapshotName::new("s").unwrap());
    for err in [
        store
            .put(&c, &n, upload(&bundle, &sidecar), &|_| {})
            .await
            .expect_err("pushed through a cleartext realm"),
        store.list(&c).await.expect_err("listed through a cleartext realm"),
        store
            .get(&c, &n, &scratch.path().join("out"), &LocalMembers::new(), &|_| {})
            .await
            .expect_err("pulled through a cleartext realm"),
    ] {
        assert!(
            err.to_string().contains("is not HTTPS; refusing to send credentials"),
            "{err}"
        );
    }
    assert!(
        issuer.asked().is_empty(),
        "credentials went to the cleartext realm: {:?}",
        issuer.asked()
    );
}

#[tokio::test]
async fn oci_wrong_password_is_denied_without_printing_it() {
    let registry = Registry::start(htpasswd(), true);
    let addr = format!("127.0.0.1:{}", registry.port);
    let store = oci::open(&oci_options(&addr, "not-the-password-xyz")).unwrap();
    let err = store
        .head(&ClusterName::new("c").unwrap(), &SnapshotName::new("s").unwrap())
        .await
        .expect_err("wrong password accepted");
    let msg = err.to_string();
    assert!(matches!(err, Error::Denied { .. }), "{msg}");
    assert!(msg.contains(&addr) && msg.contains("--oci-username"), "{msg}");
    assert!(
        !msg.contains("not-the-password-xyz") && !msg.contains(PASS),
        "password in error: {msg}"
    );
}

#[tokio::test]
async fn oci_wrong_password_at_the_token_endpoint_is_denied_without_printing_it() {
    let issuer = TokenIssuer::start(USER, PASS);
    let registry = Registry::start(tokens(&issuer), true);
    let addr = format!("127.0.0.1:{}", registry.port);
    let store = oci::open(&oci_options(&addr, "not-the-password-xyz")).unwrap();
    let c = ClusterName::new("c").unwrap();
    for err in [
        store
            .head(&c, &SnapshotName::new("s").unwrap())
            .await
            .expect_err("wrong password accepted"),
        store.list(&c).await.expect_err("wrong password accepted"),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, Error::Denied { .. }), "{msg}");
        assert!(msg.contains(&addr) && msg.contains("--oci-username"), "{msg}");
        assert!(
            !msg.contains("not-the-password-xyz") && !msg.contains(PASS),
            "password in error: {msg}"
        );
    }
    assert!(
        issuer.asked().iter().any(|(_, ok)| !ok),
        "the token endpoint was never asked"
    );
}
