//! Remotes: S3 (a real s3s-fs server checking SigV4, on loopback) and directories. Push, pull, restore that
//! pulls first, and the failure behaviour users of shared buckets run into.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

pub const AK: &str = "kst-access-key";
pub const SECRET: &str = "kst-secret-value-never-printed";

/// An s3s-fs server on a free loopback port with bucket "snaps", killed when dropped.
pub struct S3 {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// `--domain` for virtual-hosted-style requests (`<bucket>.<domain>`).
    domain: Option<String>,
}

fn s3s_fs() -> String {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl S3 {
    pub fn start() -> Self {
        Self::start_serving(None)
    }
    /// A server that also takes virtual-hosted-style requests for `<bucket>.<domain>`.
    pub fn start_with_domain(domain: &str) -> Self {
        Self::start_serving(Some(domain.to_owned()))
    }
    fn start_serving(domain: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("snaps")).unwrap();
        let mut s = S3 {
            child: None,
            port: free_port(),
            dir,
            domain,
        };
        s.spawn();
        s
    }
    fn spawn(&mut self) {
        let child = Command::new(s3s_fs())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--access-key",
                AK,
                "--secret-key",
                SECRET,
            ])
            // s3s matches the Host header with its port against the domain.
            .args(
                self.domain
                    .iter()
                    .flat_map(|d| ["--domain".to_owned(), format!("{d}:{}", self.port)]),
            )
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        wait_port(self.port);
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// `--remote` and S3 flags for this server (credentials come from the environment, see [`env`]).
    fn args(&self) -> Vec<String> {
        vec![
            "--remote".into(),
            "s3://snaps/team".into(),
            "--s3-endpoint".into(),
            format!("127.0.0.1:{}", self.port),
            "--s3-insecure".into(),
        ]
    }
    fn bytes_stored(&self) -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                walk(&e.path())
                            } else {
                                e.metadata().map(|m| m.len()).unwrap_or(0)
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(self.dir.path())
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.kill();
    }
}

const ENV: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", AK), ("AWS_SECRET_ACCESS_KEY", SECRET)];

fn with(args: &[&str], extra: &[String]) -> Vec<String> {
    args.iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

fn run(store: &Store, args: Vec<String>, env: &[(&str, &str)]) -> Run {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = store.run_env(&a, env);
    assert!(
        !r.stdout.contains(SECRET) && !r.stderr.contains(SECRET),
        "the secret appeared in the output of {a:?}"
    );
    r
}

fn remote_names(store: &Store, s3: &S3, cluster: &str, status: &str) -> Vec<String> {
    let r = run(store, with(&["list", cluster, "-o", "json"], &s3.args()), ENV).ok();
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == status)
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn push_pull_and_restore_that_pulls_first() {
    let s3 = S3::start();
    let cluster = Cluster::up("s3", 1, 0);
    let c = cluster.name.as_str();
    let store = Store::new();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/remote", "at-snapshot"]);
    let mut create = vec![
        "create".to_string(),
        c.into(),
        "shared".into(),
        "--push".into(),
        "s3://snaps/team".into(),
    ];
    create.extend(s3.args()[2..].iter().cloned());
    run(&store, create, ENV).ok();
    assert_eq!(remote_names(&store, &s3, c, "ok"), ["shared"]);
    let shown = run(&store, with(&["show", c, "shared", "-o", "json"], &s3.args()), ENV)
        .ok()
        .json();
    assert_eq!(shown["k8sVersion"], "v1.33.1");
    let local_digest =
        std::fs::read_to_string(store.root().join(c).join("shared.tar.gz.sha256")).unwrap()[..64].to_owned();
    assert_eq!(shown["archiveDigest"], format!("sha256:{local_digest}"));
    // The bucket layout is documented (docs/backends.md): the snapshot's index, sidecar and metadata, and its
    // members content-addressed under <folder>/.blobs/sha256/.
    let objects = s3.dir.path().join("snaps/team").join(c).join("shared");
    for f in ["index.json", "bundle.tar.gz.sha256", "metadata.json"] {
        assert!(objects.join(f).exists(), "{f} not in the bucket");
    }
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(objects.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index,
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(store.root().join(c).join("shared.index.json")).unwrap()
        )
        .unwrap(),
        "the remote index is the local one"
    );
    let blobs = s3.dir.path().join("snaps/team/.blobs/sha256");
    let local = std::fs::read(store.bundle(c, "shared")).unwrap();
    for m in index["members"].as_array().unwrap() {
        let (at, size) = (
            m["offset"].as_u64().unwrap() as usize,
            m["size"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            std::fs::read(blobs.join(m["sha256"].as_str().unwrap())).unwrap(),
            local[at..at + size],
            "member {m} differs from the bundle's bytes"
        );
    }

    // A teammate without the snapshot: restore pulls it first (a fresh local store).
    let teammate = Store::new();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/remote", "changed"]);
    let r = run(&teammate, with(&["restore", c, "shared", "--json"], &s3.args()), ENV).ok();
    assert_eq!(r.json()["ok"], true);
    assert_eq!(
        cluster
            .etcdctl(&cluster.cp(1), &["get", "/registry/test/remote", "--print-value-only"])
            .trim(),
        "at-snapshot"
    );
    assert_eq!(
        std::fs::read(teammate.bundle(c, "shared")).unwrap(),
        std::fs::read(store.bundle(c, "shared")).unwrap(),
        "pulled bundle differs"
    );
    cluster.assert_running();

    // The remote metadata is checked against the live cluster before anything is downloaded.
    let third = Store::new();
    cluster.sh(&cluster.cp(1), "echo v1.34.0 > /kind/version");
    let r = run(&third, with(&["restore", c, "shared"], &s3.args()), ENV);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("k8s version mismatch: snapshot=v1.33.1, live=v1.34.0"),
        "{}",
        r.stderr
    );
    assert!(
        third.files(c).is_empty(),
        "downloaded despite the failed checks: {:?}",
        third.files(c)
    );
    cluster.sh(&cluster.cp(1), "echo v1.33.1 > /kind/version");

    // A member tampered with in the bucket is refused on pull, and nothing is restored.
    let etcd_member = index["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["holds"] == "etcd/snapshot.db")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let member = blobs.join(&etcd_member);
    let mut bytes = std::fs::read(&member).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&member, bytes).unwrap();
    cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/remote", "after-tamper"]);
    let r = run(&third, with(&["restore", c, "shared"], &s3.args()), ENV);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("failed verification") && r.stderr.contains(&etcd_member),
        "{}",
        r.stderr
    );
    assert!(
        third.files(c).is_empty(),
        "a tampered bundle was kept: {:?}",
        third.files(c)
    );
    assert_eq!(
        cluster
            .etcdctl(&cluster.cp(1), &["get", "/registry/test/remote", "--print-value-only"])
            .trim(),
        "after-tamper"
    );
}

/// `(transferred, reused)` bytes from a push or pull message: `uploaded 1.20 MiB of 40.00 MiB (38.80 MiB …)`.
fn moved(stdout: &str) -> (f64, f64) {
    let bytes = |s: &str| -> f64 {
        let mut it = s.split_whitespace();
        let n: f64 = it.next().unwrap().parse().unwrap();
        let unit = it.next().unwrap();
        let k = ["B", "KiB", "MiB", "GiB"].iter().position(|u| *u == unit).unwrap();
        n * 1024f64.powi(k as i32)
    };
    let tail = stdout.rsplit(": ").next().unwrap();
    let words: Vec<&str> = tail.split_whitespace().collect();
    // <verb> X U of Y U (Z U ...)
    let transferred = bytes(&words[1..3].join(" "));
    let reused = if words.len() > 3 {
        bytes(words[6..8].join(" ").trim_start_matches('('))
    } else {
        0.0
    };
    (transferred, reused)
}

/// A second snapshot of an unchanged cluster uploads only what changed (etcd, metadata); a teammate who has the
/// first snapshot downloads only that, and gets a byte-identical bundle. Deleting the first snapshot keeps
/// every member the second uses.
#[test]
fn a_second_push_sends_only_what_changed() {
    let s3 = S3::start();
    let cluster = Cluster::up("dedup", 1, 0);
    let c = cluster.name.as_str();
    let store = Store::new();
    // Volume data that does not change between the snapshots (the fixture's images are few and small).
    let node = cluster.cp(1);
    cluster.sh(
        &node,
        "d=$(ls -d /var/local-path-provisioner/*/ | head -n1); head -c 3000000 /dev/urandom > $d/data.bin; \
         for i in $(seq 1 200); do echo line $i of a config file > $d/conf-$i.txt; done",
    );
    for name in ["first", "second"] {
        cluster.etcdctl(&cluster.cp(1), &["put", "/registry/test/dedup", name]);
        run(&store, vec!["create".into(), c.into(), name.into()], ENV).ok();
    }
    let first = run(&store, with(&["push", c, "first"], &s3.args()), ENV).ok();
    let (sent, reused) = moved(first.stdout.trim());
    assert!(sent > 0.0 && reused == 0.0, "{}", first.stdout);
    let before = s3.bytes_stored();
    let second = run(&store, with(&["push", c, "second"], &s3.args()), ENV).ok();
    let (sent2, reused2) = moved(second.stdout.trim());
    let size = std::fs::metadata(store.bundle(c, "second")).unwrap().len() as f64;
    assert!(
        sent2 < size * 0.1 && reused2 > size * 0.9,
        "the second push sent {sent2} of {size} bytes: {}",
        second.stdout
    );
    let grown = (s3.bytes_stored() - before) as f64;
    assert!(
        grown < size * 0.1,
        "the bucket grew by {grown} bytes for a {size}-byte bundle"
    );

    // A teammate with the first snapshot pulls the second: only the new members come over the network.
    let teammate = Store::new();
    run(&teammate, with(&["pull", c, "first"], &s3.args()), ENV).ok();
    let pulled = run(&teammate, with(&["pull", c, "second"], &s3.args()), ENV).ok();
    let (got, copied) = moved(pulled.stdout.trim());
    assert!(got < size * 0.1 && copied > size * 0.9, "{}", pulled.stdout);
    assert_eq!(
        std::fs::read(teammate.bundle(c, "second")).unwrap(),
        std::fs::read(store.bundle(c, "second")).unwrap(),
        "the assembled bundle differs from the one pushed"
    );
    teammate.sha256sum_check(c, "second");

    // Deleting the first on the remote removes only what the second does not use.
    let deleted = run(&store, with(&["delete", c, "first"], &s3.args()), ENV).ok();
    assert!(deleted.stdout.contains("Removed "), "{}", deleted.stdout);
    let third = Store::new();
    run(&third, with(&["pull", c, "second"], &s3.args()), ENV).ok();
    assert_eq!(
        std::fs::read(third.bundle(c, "second")).unwrap(),
        std::fs::read(store.bundle(c, "second")).unwrap()
    );
    run(&store, with(&["delete", c, "second"], &s3.args()), ENV).ok();
    let left: Vec<_> = std::fs::read_dir(s3.dir.path().join("snaps/team/.blobs/sha256"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "blobs left after every snapshot was deleted: {left:?}");
}

#[test]
fn server_killed_mid_upload_then_repush() {
    let mut s3 = S3::start();
    let store = Store::new();
    fake_snapshot(&store, "big", "huge", 160 << 20, 1);
    let args: Vec<String> = with(&["push", "big", "huge"], &s3.args());
    let mut cmd = store.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    cmd.envs(ENV.iter().copied()).args(["--s3-timeout", "5s"]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.bytes_stored() < (20 << 20) {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    s3.kill();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("push hung after the server died")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "push succeeded against a dead server");
    assert!(stderr.contains(&format!("127.0.0.1:{}", s3.port)), "{stderr}");
    assert!(!stderr.contains(SECRET));
    s3.spawn();
    assert!(
        remote_names(&store, &s3, "big", "ok").is_empty(),
        "a half-uploaded snapshot is listed ok"
    );
    run(&store, with(&["push", "big", "huge"], &s3.args()), ENV).ok();
    assert_eq!(remote_names(&store, &s3, "big", "ok"), ["huge"]);
    let other = Store::new();
    run(&other, with(&["pull", "big", "huge"], &s3.args()), ENV).ok();
    assert_eq!(
        std::fs::read(other.bundle("big", "huge")).unwrap(),
        std::fs::read(store.bundle("big", "huge")).unwrap()
    );
    // A pulled bundle holds the cluster's Secrets: private, like a created one.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(other.bundle("big", "huge"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "pulled bundle mode {mode:o}");
    assert!(
        other.files("big").iter().all(|f| !f.contains(".partial-")),
        "{:?}",
        other.files("big")
    );
}

#[test]
fn wrong_credentials_and_unreachable_endpoints() {
    let s3 = S3::start();
    let store = Store::new();
    fake_snapshot(&store, "cred", "s", 1000, 1);
    // Wrong secret from the environment.
    let r = run(
        &store,
        with(&["push", "cred", "s"], &s3.args()),
        &[
            ("AWS_ACCESS_KEY_ID", AK),
            ("AWS_SECRET_ACCESS_KEY", "kst-wrong-secret-also-never-printed"),
        ],
    );
    assert_eq!(r.code, Some(1));
    for w in [
        format!("127.0.0.1:{}", s3.port),
        "access denied".into(),
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables".into(),
    ] {
        assert!(r.stderr.contains(&w), "stderr lacks {w:?}:\n{}", r.stderr);
    }
    assert!(!r.stderr.contains("kst-wrong-secret-also-never-printed"));
    // Wrong secret from flags; --json output of a failing list too.
    let r = run(
        &store,
        with(
            &[
                "list",
                "cred",
                "-o",
                "json",
                "--s3-access-key",
                AK,
                "--s3-secret-key",
                "kst-flag-secret-never-printed",
            ],
            &s3.args(),
        ),
        &[],
    );
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("--s3-access-key/--s3-secret-key"), "{}", r.stderr);
    assert!(!r.stderr.contains("kst-flag-secret-never-printed") && !r.stdout.contains("kst-flag-secret-never-printed"));
    // A profile in a shared credentials file (as ~/.aws/credentials), chosen by AWS_PROFILE.
    let aws = tempfile::tempdir().unwrap();
    let creds = aws.path().join("credentials");
    std::fs::write(&creds, format!("[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[team]\naws_access_key_id = {AK}\naws_secret_access_key = {SECRET}\n")).unwrap();
    let creds_env = [
        ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_PROFILE", "team"),
    ];
    run(&store, with(&["push", "cred", "s"], &s3.args()), &creds_env).ok();
    let r = run(&store, with(&["list", "cred"], &s3.args()), &creds_env[..2]);
    assert_eq!(r.code, Some(1), "the default profile's wrong keys were accepted");
    assert!(r.stderr.contains("profile \"default\""), "{}", r.stderr);
    let r = run(
        &store,
        with(&["list", "cred", "--s3-profile", "missing"], &s3.args()),
        &creds_env[..2],
    );
    assert!(
        r.stderr
            .contains("AWS profile \"missing\" (from --s3-profile) has no static credentials"),
        "{}",
        r.stderr
    );
    // Nothing listens: the error names the endpoint and comes within the timeout.
    let dead = free_port();
    let started = Instant::now();
    let r = run(
        &store,
        vec![
            "list".into(),
            "cred".into(),
            "--remote".into(),
            "s3://snaps".into(),
            "--s3-endpoint".into(),
            format!("127.0.0.1:{dead}"),
            "--s3-insecure".into(),
            "--s3-timeout".into(),
            "2s".into(),
        ],
        ENV,
    );
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains(&format!("127.0.0.1:{dead}")), "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn tls_endpoint_with_a_test_ca() {
    let s3 = S3::start();
    let store = Store::new();
    fake_snapshot(&store, "tls", "s", 4096, 1);
    let tls = crate::distribution::Tls::new();
    let tls_port = free_port();
    let mut proxy = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            tls.cert(),
            tls.key()
        ))
        .arg(format!("TCP:127.0.0.1:{}", s3.port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (installed by tests/run) terminates TLS in front of the S3 server");
    wait_port(tls_port);
    let base = vec![
        "--remote".to_string(),
        "s3://snaps/tls".into(),
        "--s3-endpoint".into(),
        format!("127.0.0.1:{tls_port}"),
        "--s3-timeout".into(),
        "10s".into(),
    ];
    let ca_path = tls.ca();
    run(
        &store,
        with(&["push", "tls", "s", "--s3-endpoint-ca", &ca_path], &base),
        ENV,
    )
    .ok();
    let r = run(&store, with(&["list", "tls"], &base), ENV);
    assert_eq!(r.code, Some(1), "an untrusted certificate was accepted");
    assert!(
        r.stderr.to_lowercase().contains("certificate") || r.stderr.contains("tls") || r.stderr.contains("TLS"),
        "{}",
        r.stderr
    );
    let listed = run(
        &store,
        with(&["list", "tls", "-o", "json", "--s3-skip-ssl-verify"], &base),
        ENV,
    )
    .ok();
    assert_eq!(listed.json().as_array().unwrap().len(), 1);
    // The CA may also be given inline, base64-encoded (as k3s accepts it).
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(tls.ca()).unwrap());
    run(
        &store,
        with(&["show", "tls", "s", "--s3-endpoint-ca", &b64], &base),
        ENV,
    )
    .ok();
    let _ = proxy.kill();
    let _ = proxy.wait();
}

#[test]
fn named_remotes_never_store_secrets_and_prune_stays_in_its_cluster() {
    let s3 = S3::start();
    let store = Store::new();
    let cfg = store.root().join("config.toml");
    let cfg_env = [("KUBECTL_SNAPSHOT_CONFIG", cfg.to_str().unwrap()), ENV[0], ENV[1]];
    let r = run(
        &store,
        vec![
            "remote".into(),
            "add".into(),
            "team".into(),
            "s3://snaps/team".into(),
            "--s3-secret-key".into(),
            SECRET.into(),
        ],
        &cfg_env,
    );
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("never stored"), "{}", r.stderr);
    assert!(!cfg.exists());
    run(
        &store,
        vec![
            "remote".into(),
            "add".into(),
            "team".into(),
            "s3://snaps/team".into(),
            "--s3-endpoint".into(),
            format!("127.0.0.1:{}", s3.port),
            "--s3-insecure".into(),
            "--default".into(),
        ],
        &cfg_env,
    )
    .ok();
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(!text.contains(SECRET) && !text.contains(AK), "{text}");
    let listed = run(
        &store,
        vec!["remote".into(), "list".into(), "-o".into(), "yaml".into()],
        &cfg_env,
    )
    .ok();
    assert!(listed.stdout.contains("s3://snaps/team"), "{}", listed.stdout);

    for (c, n, h) in [("a", "old", 30), ("a", "new", 1), ("b", "old", 30), ("b", "new", 1)] {
        fake_snapshot(&store, c, n, 2048, h);
        run(&store, vec!["push".into(), c.into(), n.into()], &cfg_env).ok(); // the default remote
    }
    run(
        &store,
        vec![
            "prune".into(),
            "a".into(),
            "--remote".into(),
            "team".into(),
            "--keep-last".into(),
            "1".into(),
            "--yes".into(),
        ],
        &cfg_env,
    )
    .ok();
    let names = |c: &str| -> Vec<String> {
        let r = run(
            &store,
            vec![
                "list".into(),
                c.into(),
                "--remote".into(),
                "team".into(),
                "-o".into(),
                "json".into(),
            ],
            &cfg_env,
        )
        .ok();
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("a"), ["new"]);
    assert_eq!(names("b"), ["new", "old"], "prune of cluster a touched cluster b");
    assert!(
        !s3.dir.path().join("snaps/team/a/old/bundle.tar.gz").exists(),
        "the remote object is not gone"
    );
    run(
        &store,
        vec![
            "delete".into(),
            "b".into(),
            "old".into(),
            "--remote".into(),
            "team".into(),
        ],
        &cfg_env,
    )
    .ok();
    assert_eq!(names("b"), ["new"]);
    run(&store, vec!["remote".into(), "remove".into(), "team".into()], &cfg_env).ok();
    let r = run(&store, vec!["push".into(), "a".into(), "new".into()], &cfg_env);
    assert!(r.stderr.contains("no default remote"), "{}", r.stderr);
}

#[test]
fn the_s3_secret_key_can_come_from_stdin() {
    let s3 = S3::start();
    let store = Store::new();
    fake_snapshot(&store, "stdin", "one", 4096, 1);
    // No secret in the environment or on the command line: only on standard input.
    let args = with(
        &["push", "stdin", "one", "--s3-access-key", AK, "--s3-secret-key-stdin"],
        &s3.args(),
    );
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let wrong = store.run_stdin(&a, &[], "not-the-secret\n");
    assert_eq!(wrong.code, Some(1), "a wrong secret on stdin was accepted");
    let ok = store.run_stdin(&a, &[], &format!("{SECRET}\n"));
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert!(!ok.stderr.contains(SECRET) && !ok.stdout.contains(SECRET));
    assert_eq!(remote_names(&store, &s3, "stdin", "ok"), ["one"]);
}

/// A forward HTTP proxy on loopback, as a corporate one: it takes absolute-form requests, resolves the host
/// itself (names under `.kst.test` and 127.0.0.1 go to 127.0.0.1), and counts the connections it carried.
struct Proxy {
    port: u16,
    used: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The host:port of each connection's first request.
    hosts: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proxy {
    fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let used = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = used.clone();
        let hosts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = hosts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let count = count.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut client = client;
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
                        head.push(byte[0]);
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
                    // GET http://host:port/path HTTP/1.1
                    let Some(authority) = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|u| u.strip_prefix("http://"))
                        .and_then(|u| u.split('/').next())
                    else {
                        return;
                    };
                    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "80"));
                    if !(host == "127.0.0.1" || host.ends_with(".kst.test")) {
                        return;
                    }
                    let Ok(mut upstream) = std::net::TcpStream::connect(("127.0.0.1", port.parse().unwrap_or(80)))
                    else {
                        return;
                    };
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    seen.lock().unwrap().push(authority.to_owned());
                    upstream.write_all(&head).unwrap();
                    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut u2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut client, &mut upstream);
                    let _ = upstream.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { port, used, hosts }
    }
    fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `--s3-proxy URL` is used instead of HTTP_PROXY, `--s3-proxy none` ignores HTTP_PROXY, and
/// `--s3-bucket-lookup-type dns` addresses `<bucket>.<endpoint>`: here a name only the proxy resolves (to
/// loopback), as names behind a corporate proxy are.
#[test]
fn the_s3_proxy_overrides_the_environment_and_dns_lookup_reaches_the_bucket_host() {
    let s3 = S3::start_with_domain("s3.kst.test");
    let proxy = Proxy::start();
    let store = Store::new();
    fake_snapshot(&store, "c", "viaproxy", 100_000, 1);
    let dead = "http://127.0.0.1:9";
    let env: Vec<(&str, &str)> = ENV
        .iter()
        .copied()
        .chain([("HTTP_PROXY", dead), ("http_proxy", dead)])
        .collect();
    let direct = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--remote".to_owned(),
            "s3://snaps/team".into(),
            "--s3-endpoint".into(),
            format!("127.0.0.1:{}", s3.port),
            "--s3-insecure".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // The environment's proxy is used by default (and here it is dead) ...
    let r = run(&store, with(&["list", "c"], &direct(&["--s3-timeout", "5s"])), &env);
    assert_eq!(r.code, Some(1), "HTTP_PROXY was not used: {}", r.stdout);
    // ... `none` ignores it ...
    run(&store, with(&["list", "c"], &direct(&["--s3-proxy", "none"])), &env).ok();
    assert_eq!(proxy.used(), 0);
    // ... and a proxy given by flag replaces it, here with virtual-hosted-style requests to
    // snaps.s3.kst.test, a name that only the proxy resolves.
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let dns = [
        "--remote".to_owned(),
        "s3://snaps/team".into(),
        "--s3-endpoint".into(),
        format!("s3.kst.test:{}", s3.port),
        "--s3-insecure".into(),
        "--s3-bucket-lookup-type".into(),
        "dns".into(),
        "--s3-proxy".into(),
        proxy_url,
    ];
    let pushed = run(&store, with(&["push", "c", "viaproxy"], &dns), &env).ok();
    assert!(pushed.stdout.contains("Pushed"), "{}", pushed.stdout);
    assert!(proxy.used() > 0, "the proxy carried nothing");
    let hosts = proxy.hosts.lock().unwrap().clone();
    let bucket_host = format!("snaps.s3.kst.test:{}", s3.port);
    assert!(
        !hosts.is_empty() && hosts.iter().all(|h| *h == bucket_host),
        "not virtual-hosted-style requests: {hosts:?}"
    );
    assert!(
        s3.dir.path().join("snaps/team/c/viaproxy/metadata.json").exists(),
        "the upload did not reach the bucket"
    );
    let listed = run(&store, with(&["list", "c", "-o", "json"], &dns), &env).ok().json();
    assert_eq!(listed[0]["name"], "viaproxy");
}

/// One odd object in a shared bucket (another tool's key with a terminal escape in it, a snapshot whose index is
/// not one, metadata written to attack a terminal) breaks nothing for the team: list, prune and delete work, the
/// unreadable snapshot is listed as corrupt with the reason, and no raw control character reaches the terminal.
#[test]
fn a_shared_bucket_with_odd_objects_still_lists_prunes_and_deletes() {
    let s3 = S3::start();
    let store = Store::new();
    fake_snapshot(&store, "a", "old", 2048, 30);
    fake_snapshot(&store, "a", "new", 2048, 1);
    fake_snapshot(&store, "a", "evil", 2048, 2);
    // A teammate's snapshot whose metadata was written to act on terminals.
    let meta_path = store.root().join("a/evil.metadata.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["k8sVersion"] = "v1.33.1\u{1b}]0;pwned\u{7}\u{1b}[2J\rall snapshots verified ok".into();
    meta["addons"] = serde_json::json!({"cni\u{1b}[31m": "kindnet\u{202e}"});
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    for n in ["old", "new", "evil"] {
        run(&store, with(&["push", "a", n], &s3.args()), ENV).ok();
    }
    let team = s3.dir.path().join("snaps/team");
    // Another tool's key, with a terminal escape in it, in a snapshot's place and at the top.
    let odd = team.join("a/x\u{1b}]0;pwned\u{7}");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::write(odd.join("metadata.json"), b"{}").unwrap();
    std::fs::write(team.join("notes\u{1b}[2J"), b"not a snapshot").unwrap();
    // A snapshot that looks complete, with an index that is not one (and an escape in it).
    let broken = team.join("a/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("index.json"), b"{\"indexVersion\": \"\x1b[31m").unwrap();
    std::fs::write(
        broken.join("bundle.tar.gz.sha256"),
        format!("{}  bundle.tar.gz\n", "ab".repeat(32)),
    )
    .unwrap();
    std::fs::copy(team.join("a/new/metadata.json"), broken.join("metadata.json")).unwrap();
    let clean = |r: &Run| {
        for text in [&r.stdout, &r.stderr] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
                "a raw control character reached the terminal: {text:?}"
            );
        }
    };

    let listed = run(&store, with(&["list", "a"], &s3.args()), ENV).ok();
    clean(&listed);
    let row = |name: &str| {
        listed
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{}", listed.stdout))
            .to_owned()
    };
    assert!(row("broken").ends_with("corrupt"), "{}", listed.stdout);
    assert!(row("new").ends_with("ok"), "{}", listed.stdout);
    assert!(row("evil").contains("v1.33.1\\x1b]0;pwned\\x07"), "{}", listed.stdout);
    assert!(
        !listed.stdout.contains("pwned\u{7}/"),
        "a key outside the layout is listed"
    );
    assert!(
        listed.stderr.contains("\"broken\" is corrupt") && listed.stderr.contains("index"),
        "the reason is not given: {}",
        listed.stderr
    );
    assert_eq!(
        remote_names(&store, &s3, "a", "ok"),
        ["new", "evil", "old"],
        "the broken snapshot is counted as ok"
    );
    let shown = run(&store, with(&["show", "a", "evil"], &s3.args()), ENV).ok();
    clean(&shown);

    let pruned = run(
        &store,
        with(&["prune", "a", "--older-than", "24h", "--yes"], &s3.args()),
        ENV,
    )
    .ok();
    clean(&pruned);
    assert!(
        !team.join("a/old").join("metadata.json").exists(),
        "prune did not delete"
    );
    let deleted = run(&store, with(&["delete", "a", "broken"], &s3.args()), ENV).ok();
    clean(&deleted);
    assert!(
        !broken.join("index.json").exists(),
        "the broken snapshot is still there"
    );
    assert_eq!(remote_names(&store, &s3, "a", "ok"), ["new", "evil"]);

    // Pulled, the hostile metadata is local: listed and shown escaped there too.
    store.run(&["delete", "a", "evil"]).ok();
    run(&store, with(&["pull", "a", "evil"], &s3.args()), ENV).ok();
    for args in [&["list", "a"][..], &["show", "a", "evil"]] {
        clean(&store.run(args));
    }
}

/// A pull that would leave less than `--min-free-space` free in the store is refused before anything is
/// downloaded, judged by the size the remote declares: a hostile index declaring 1 PiB is refused at once.
#[test]
fn pull_checks_free_space_against_the_declared_size_first() {
    let s3 = S3::start();
    let store = Store::new();
    fake_snapshot(&store, "a", "small", 2048, 1);
    run(&store, with(&["push", "a", "small"], &s3.args()), ENV).ok();
    store.run(&["delete", "a", "small"]).ok();
    let listing = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.root().join("a"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let before = listing();
    let refused = run(
        &store,
        with(&["pull", "a", "small", "--min-free-space", "100000T"], &s3.args()),
        ENV,
    )
    .fails();
    assert!(
        refused.stderr.contains("not enough free space") && refused.stderr.contains("--min-free-space"),
        "{}",
        refused.stderr
    );
    assert_eq!(listing(), before, "a refused pull wrote into the store");
    run(&store, with(&["pull", "a", "small"], &s3.args()), ENV).ok();

    // A snapshot whose index declares one member of 1 PiB.
    let huge = s3.dir.path().join("snaps/team/a/huge");
    std::fs::create_dir_all(&huge).unwrap();
    let digest = "cd".repeat(32);
    let index = serde_json::json!({
        "indexVersion": 1, "sha256": digest, "size": 1u64 << 50,
        "members": [{"offset": 0, "size": 1u64 << 50, "sha256": "ef".repeat(32), "holds": "etcd/snapshot.db", "entries": 1}]
    });
    std::fs::write(huge.join("index.json"), index.to_string()).unwrap();
    std::fs::write(huge.join("bundle.tar.gz.sha256"), format!("{digest}  bundle.tar.gz\n")).unwrap();
    std::fs::copy(
        s3.dir.path().join("snaps/team/a/small/metadata.json"),
        huge.join("metadata.json"),
    )
    .unwrap();
    let before = listing();
    let refused = run(&store, with(&["pull", "a", "huge"], &s3.args()), ENV).fails();
    assert!(
        refused.stderr.contains("not enough free space") && refused.stderr.contains("1.00 PiB"),
        "{}",
        refused.stderr
    );
    assert_eq!(listing(), before, "a refused pull wrote into the store");
}
