//! The plugin as kind's own tools and kind's other provider see it:
//! - kind's real binary (Debian's `kind` package) lists the fixture clusters and their nodes as the plugin
//!   does (`kind create cluster` cannot start a node in this sandbox: `--privileged` is refused);
//! - the create → restore round trip on Podman's Docker-compatible socket (`KIND_EXPERIMENTAL_PROVIDER=podman`),
//!   a rootful `podman system service` started for the test.

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::util::*;

fn kind_bin() -> String {
    let out = run_timeout(
        Command::new(repo().join("tests/fixtures/kind-bin")),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "tests/fixtures/kind-bin (kind from Debian unstable) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn lines(out: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn kind_sees_the_fixture_clusters_and_nodes_as_the_plugin_does() {
    let kind = kind_bin();
    let cluster = Cluster::up("kindbin", 2, 1);
    let store = Store::new();

    let out = Command::new(&kind).args(["get", "clusters"]).output().expect("kind");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lines(&out.stdout).contains(&cluster.name), "{:?}", lines(&out.stdout));

    let out = Command::new(&kind)
        .args(["get", "nodes", "--name", &cluster.name])
        .output()
        .expect("kind");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_kind = lines(&out.stdout);

    let v = store
        .run(&["create", &cluster.name, "snap", "--images", "none", "--json"])
        .ok()
        .json();
    let by_plugin: BTreeSet<String> = v["metadata"]["topology"]["nodes"]
        .as_array()
        .expect("topology.nodes")
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(by_kind, by_plugin);
    assert!(
        by_kind.contains(&format!("{}-external-load-balancer", cluster.name)),
        "{by_kind:?}"
    );
}

/// A rootful `podman system service` on a private socket, with its own containers.conf: Podman's default
/// ulimits (nofile and nproc at their maximum) are above what this sandbox grants without CAP_SYS_RESOURCE.
struct Podman {
    dir: tempfile::TempDir,
    service: Child,
}

impl Podman {
    fn start() -> Self {
        let found = Command::new("podman").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "podman is not installed: tests/run installs it (apt-get install podman)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n",
        )
        .expect("containers.conf");
        let socket = dir.path().join("podman.sock");
        let service = Command::new("podman")
            .args(["system", "service", "--time=0", &format!("unix://{}", socket.display())])
            .env("CONTAINERS_CONF", dir.path().join("containers.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("podman system service");
        let podman = Podman { dir, service };
        let t0 = Instant::now();
        while !podman.answers() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "podman system service did not answer on {} within 30 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        podman
    }

    fn answers(&self) -> bool {
        Command::new("podman")
            .args(["--url", &self.url(), "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn url(&self) -> String {
        format!("unix://{}", self.dir.path().join("podman.sock").display())
    }

    /// The environment of the fixture scripts and of the plugin on this Podman.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FIXTURE_RUNTIME", "podman".into()),
            ("KIND_EXPERIMENTAL_PROVIDER", "podman".into()),
            (
                "CONTAINERS_CONF",
                self.dir.path().join("containers.conf").display().to_string(),
            ),
            ("DOCKER_HOST", self.url()),
        ]
    }

    fn fixture(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(repo().join("tests/fixtures/cluster"));
        cmd.args(args).envs(self.env());
        let out = run_timeout(cmd, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "tests/fixtures/cluster {args:?} on Podman failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sh(&self, node: &str, script: &str) -> String {
        let out = Command::new("podman")
            .args(["exec", node, "sh", "-c", script])
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .output()
            .expect("podman exec");
        assert!(
            out.status.success(),
            "`{script}` on {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// Removes a Podman fixture cluster, also when the test fails.
struct PodmanCluster<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for PodmanCluster<'_> {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/fixtures/cluster"))
            .args(["down", &self.name])
            .envs(self.podman.env())
            .output();
    }
}

#[test]
fn create_and_restore_round_trip_on_podman() {
    let podman = Podman::start();
    let name = format!("kst-podman-{}", std::process::id() % 100_000);
    let cluster = PodmanCluster {
        podman: &podman,
        name: name.clone(),
    };
    podman.fixture(&["up", &name, "--workers", "1"]);
    let worker = format!("{name}-worker");
    let pv = "$(ls -d /var/local-path-provisioner/*/ | head -n 1)";
    podman.sh(&worker, &format!("echo at-snapshot > {pv}/podman.txt"));
    podman.fixture(&["etcdctl", &name, "--", "put", "/registry/test/podman", "at-snapshot"]);

    let store = Store::new();
    let env = podman.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let v = store
        .run_env(&["create", &name, "snap", "--images", "local", "--json"], &env)
        .ok()
        .json();
    assert_eq!(v["metadata"]["provider"], "podman", "{v}");
    assert!(v["frozenSeconds"].as_f64().is_some(), "{v}");

    podman.sh(
        &worker,
        &format!("echo later > {pv}/podman.txt; echo new > {pv}/new.txt"),
    );
    podman.fixture(&["etcdctl", &name, "--", "put", "/registry/test/podman", "later"]);
    store.run_env(&["restore", &name, "snap"], &env).ok();

    assert_eq!(
        podman.sh(&worker, &format!("cat {pv}/podman.txt")).trim(),
        "at-snapshot"
    );
    assert_eq!(podman.sh(&worker, &format!("ls {pv}")).matches("new.txt").count(), 0);
    let got = podman.fixture(&[
        "etcdctl",
        &name,
        "--",
        "get",
        "/registry/test/podman",
        "--print-value-only",
    ]);
    assert_eq!(got.trim(), "at-snapshot");
    drop(cluster);
}
