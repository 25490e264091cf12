//! Every store runs the same conformance suite: a local directory, and S3 against a real s3s-fs server
//! (SigV4 checked) on loopback.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kubectl_snapshot_backends::conformance::{self, Raw};
use kubectl_snapshot_backends::remote::{BUNDLE, SIDECAR};
use kubectl_snapshot_backends::s3::{S3Options, Secret};
use kubectl_snapshot_backends::{ClusterName, Error, SnapshotName, SnapshotStore, url};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

struct ObjectRaw {
    store: Arc<dyn ObjectStore>,
    folder: Vec<String>,
}

impl ObjectRaw {
    fn key(&self, c: &ClusterName, n: &SnapshotName, file: &str) -> Key {
        let mut parts = self.folder.clone();
        parts.extend([c.to_string(), n.to_string(), file.to_owned()]);
        Key::from_iter(parts)
    }
}

#[async_trait]
impl Raw for ObjectRaw {
    async fn leave_incomplete(&self, c: &ClusterName, n: &SnapshotName) {
        self.store.put(&self.key(c, n, BUNDLE), PutPayload::from(vec![7u8; 2048])).await.unwrap();
        self.store.put(&self.key(c, n, SIDECAR), PutPayload::from(format!("{}  x\n", "0".repeat(64)).into_bytes())).await.unwrap();
    }
    async fn tamper(&self, c: &ClusterName, n: &SnapshotName) {
        let key = self.key(c, n, BUNDLE);
        let mut bytes = self.store.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
        bytes[10] ^= 1;
        self.store.put(&key, PutPayload::from(bytes)).await.unwrap();
    }
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store = url::open_dir(&dir.path().join("remote")).unwrap();
    let raw = ObjectRaw { store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path().join("remote")).unwrap()), folder: vec![] };
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
        if Command::new(&p).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok() {
            return p;
        }
    }
    panic!("the S3 test server s3s-fs is not installed: run tests/run (it installs it with `cargo install --locked s3s-fs@0.14.1 --features binary`)");
}

pub fn start_s3(bucket: &str) -> S3Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(bucket)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", AK, "--secret-key", SK])
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
    o.endpoint = Some(format!("127.0.0.1:{port}"));
    o.insecure = true;
    o.access_key = Some(AK.into());
    o.secret_key = Some(Secret::new(SK));
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
    let raw = ObjectRaw { store: Arc::new(raw_store), folder: vec!["team".into(), "a".into()] };
    conformance::run_all(&store, &raw, scratch.path()).await;
}

#[tokio::test]
async fn s3_wrong_credentials_name_the_endpoint_and_source_never_the_secret() {
    let server = start_s3("snapshots");
    let mut o = s3_options(server.port, "snapshots", "");
    o.secret_key = Some(Secret::new("wrong-secret-value-xyz"));
    let store = kubectl_snapshot_backends::s3::open(&o).unwrap();
    let err = store.list(&ClusterName::new("c").unwrap()).await.expect_err("wrong secret accepted");
    let msg = err.to_string();
    assert!(matches!(err, Error::Denied { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", server.port)), "{msg}");
    assert!(msg.contains("--s3-access-key/--s3-secret-key"), "{msg}");
    assert!(!msg.contains("wrong-secret-value-xyz") && !msg.contains(SK), "secret in error: {msg}");
}

/// Debian's docker-registry (distribution 2.8.2) with htpasswd auth and deletes enabled, on a free port.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const REG_USER: &str = "conformance";
pub const REG_PASS: &str = "registry-password-do-not-print";

pub fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let which = |b: &str| Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(which("docker-registry"), "the OCI test registry is not installed: run tests/run (it installs Debian's docker-registry and apache2-utils)");
    let hash = Command::new("htpasswd").args(["-Bbn", REG_USER, REG_PASS]).output().expect("htpasswd (apache2-utils, installed by tests/run)");
    std::fs::write(dir.path().join("htpasswd"), hash.stdout).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {root}/data}}, delete: {{enabled: true}}}}\n\
         http: {{addr: 127.0.0.1:{port}, secret: conformance}}\nauth: {{htpasswd: {{realm: test, path: {root}/htpasswd}}}}\n",
        root = dir.path().display()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry").arg("serve").arg(dir.path().join("config.yml")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start docker-registry");
    let registry = Registry { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    registry
}

fn oci_options(port: u16, password: &str) -> kubectl_snapshot_backends::oci::OciOptions {
    kubectl_snapshot_backends::oci::OciOptions {
        registry: format!("127.0.0.1:{port}"),
        repository: "team/snapshots".into(),
        insecure: true,
        ca: vec![],
        username: Some(REG_USER.into()),
        password: Some(Secret::new(password)),
    }
}

struct RegistryRaw {
    port: u16,
    data: std::path::PathBuf,
}

#[async_trait]
impl Raw for RegistryRaw {
    async fn leave_incomplete(&self, c: &ClusterName, n: &SnapshotName) {
        // A blob without a manifest: what an upload interrupted before its manifest leaves.
        let client = oci_client::Client::new(oci_client::client::ClientConfig { protocol: oci_client::client::ClientProtocol::Http, ..Default::default() });
        let r = oci_client::Reference::with_tag(format!("127.0.0.1:{}", self.port), format!("team/snapshots/{c}"), n.to_string());
        let auth = oci_client::secrets::RegistryAuth::Basic(REG_USER.into(), REG_PASS.into());
        client.auth(&r, &auth, oci_client::RegistryOperation::Push).await.unwrap();
        let data = vec![3u8; 4096];
        let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)));
        client.push_blob(&r, data, &digest).await.unwrap();
    }
    async fn tamper(&self, c: &ClusterName, n: &SnapshotName) {
        let store = kubectl_snapshot_backends::oci::open(&oci_options(self.port, REG_PASS)).unwrap();
        let hex = store.head(c, n).await.unwrap().sha256.unwrap();
        let blob = self.data.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&blob, bytes).unwrap();
    }
}

#[tokio::test]
async fn oci_registry() {
    let registry = start_registry();
    let scratch = tempfile::tempdir().unwrap();
    let store = kubectl_snapshot_backends::oci::open(&oci_options(registry.port, REG_PASS)).unwrap();
    let raw = RegistryRaw { port: registry.port, data: registry.dir.path().join("data") };
    conformance::run_all(&store, &raw, scratch.path()).await;
}

#[tokio::test]
async fn oci_wrong_password_is_denied_without_printing_it() {
    let registry = start_registry();
    let store = kubectl_snapshot_backends::oci::open(&oci_options(registry.port, "not-the-password-xyz")).unwrap();
    let err = store.head(&ClusterName::new("c").unwrap(), &SnapshotName::new("s").unwrap()).await.expect_err("wrong password accepted");
    let msg = err.to_string();
    assert!(matches!(err, Error::Denied { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", registry.port)) && msg.contains("--oci-username"), "{msg}");
    assert!(!msg.contains("not-the-password-xyz") && !msg.contains(REG_PASS), "password in error: {msg}");
}
