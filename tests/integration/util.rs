//! Fixture clusters, per-test stores and time-bounded commands.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kubectl-snapshot");
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command with a deadline; panics (with its output) if it does not finish.
pub fn run_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("waiting for command"),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("{desc} did not finish within {timeout:?}");
        }
    }
}

fn check_docker() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the Docker Engine is not reachable: start it (e.g. `service docker start`) and run the suite with tests/run"
    );
}

/// A fixture kind cluster, removed when dropped.
pub struct Cluster {
    pub name: String,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "kst-{prefix}-{}-{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

impl Cluster {
    pub fn up(prefix: &str, control_planes: u32, workers: u32) -> Self {
        Self::up_with(prefix, control_planes, workers, &[])
    }

    pub fn up_with(prefix: &str, control_planes: u32, workers: u32, extra: &[&str]) -> Self {
        check_docker();
        let name = unique(prefix);
        let mut cmd = Command::new(repo().join("tests/fixtures/cluster"));
        cmd.args([
            "up",
            &name,
            "--control-planes",
            &control_planes.to_string(),
            "--workers",
            &workers.to_string(),
        ]);
        cmd.args(extra);
        let cluster = Cluster { name };
        let out = run_timeout(cmd, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "fixture cluster up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    pub fn cp(&self, n: u32) -> String {
        if n <= 1 {
            format!("{}-control-plane", self.name)
        } else {
            format!("{}-control-plane{n}", self.name)
        }
    }

    pub fn worker(&self, n: u32) -> String {
        if n <= 1 {
            format!("{}-worker", self.name)
        } else {
            format!("{}-worker{n}", self.name)
        }
    }

    /// The nodes that run a kubelet (every container of the cluster but kind's external load balancer).
    pub fn nodes(&self) -> Vec<String> {
        self.containers().into_iter().filter(|n| *n != self.lb()).collect()
    }

    /// Every container of the cluster, the load balancer included.
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=io.x-k8s.kind.cluster={}", self.name),
                "--format",
                "{{.Names}}",
            ])
            .output()
            .expect("docker ps");
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    /// kind's external load balancer (present with two or more control planes).
    pub fn lb(&self) -> String {
        format!("{}-external-load-balancer", self.name)
    }

    /// Upgrades an addon as a user would: the new image is in the node (here: a new tag of the same image,
    /// the old tag removed, so the CRI names the running image by the new tag only), its static pod manifest
    /// points at it, and the kubelet has restarted the pod.
    pub fn upgrade_addon(&self, node: &str, manifest: &str, pod: &str, old: &str, new: &str) {
        let before = self.sh(node, &format!("crictl ps --name '^{pod}$' -q"));
        self.sh(node, &format!(
            "ctr --namespace=k8s.io images tag {old} {new} >/dev/null && ctr --namespace=k8s.io images rm {old} >/dev/null \
             && sed -i 's#{old}#{new}#' /etc/kubernetes/manifests/{manifest}"
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.sh(node, &format!("crictl ps --name '^{pod}$' -q"));
            if !now.trim().is_empty() && now != before {
                break;
            }
            assert!(Instant::now() < deadline, "{pod} was not restarted with {new}");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            self.sh(node, "crictl images -o json").contains(new),
            "the CRI does not list {new}"
        );
    }

    /// `docker inspect -f FORMAT CONTAINER`.
    pub fn inspect(&self, container: &str, format: &str) -> String {
        let out = Command::new("docker")
            .args(["inspect", "-f", format, container])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `tests/fixtures/cluster ARGS…`, asserting success.
    pub fn fixture(&self, args: &[&str]) {
        let mut cmd = Command::new(repo().join("tests/fixtures/cluster"));
        cmd.args(args);
        let out = run_timeout(cmd, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "tests/fixtures/cluster {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The host's path to a node's containerd socket (through its init process's root: needs root).
    pub fn containerd_socket(&self, node: &str) -> String {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", node])
            .output()
            .expect("docker inspect");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        format!("/proc/{pid}/root/run/containerd/containerd.sock")
    }

    /// `docker exec NODE sh -c SCRIPT`, asserting success; returns stdout.
    pub fn sh(&self, node: &str, script: &str) -> String {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", node, "sh", "-c", script]);
        let out = run_timeout(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "`{script}` on {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn etcdctl(&self, node: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(repo().join("tests/fixtures/cluster"));
        cmd.args(["etcdctl", &self.name, node, "--"]).args(args);
        let out = run_timeout(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "etcdctl {args:?} on {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ip(&self, node: &str) -> String {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                node,
            ])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Every node container running, kubelet active, every static pod running, etcd healthy.
    pub fn assert_running(&self) {
        for node in self.nodes() {
            let state = Command::new("docker")
                .args(["inspect", "-f", "{{.State.Status}}", &node])
                .output()
                .expect("inspect");
            assert_eq!(
                String::from_utf8_lossy(&state.stdout).trim(),
                "running",
                "{node} is not running"
            );
            assert_eq!(
                self.sh(&node, "systemctl is-active kubelet").trim(),
                "active",
                "kubelet on {node}"
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let ok = self.sh(&node, r#"[ "$(crictl ps -q | wc -l)" -eq "$(ls /etc/kubernetes/manifests | wc -l)" ] && echo yes || echo no"#);
                if ok.trim() == "yes" {
                    break;
                }
                assert!(Instant::now() < deadline, "pods on {node} did not all run again");
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut cmd = Command::new(repo().join("tests/fixtures/cluster"));
            cmd.args(["etcdctl", &self.name, "--", "endpoint", "health", "--cluster"]);
            if run_timeout(cmd, Duration::from_secs(60)).status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "etcd of {} is not healthy", self.name);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/fixtures/cluster"))
            .args(["down", &self.name])
            .output();
    }
}

/// A private snapshot store and a way to run the binary against it.
pub struct Store {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "command failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
    pub fn fails(self) -> Self {
        assert_ne!(self.code, Some(0), "command unexpectedly succeeded:\n{}", self.stdout);
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

impl Store {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("KUBECTL_SNAPSHOT_DIR", self.dir.path())
            .env_remove("KIND_CLUSTER_NAME")
            .env("NO_COLOR", "1");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = run_timeout(cmd, CMD_TIMEOUT);
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs with `input` on standard input.
    pub fn run_stdin(&self, args: &[&str], env: &[(&str, &str)], input: &str) -> Run {
        use std::io::Write;
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().expect("wait");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every file under the cluster's store directory, hidden ones included.
    pub fn files(&self, cluster: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join(cluster))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn bundle(&self, cluster: &str, name: &str) -> PathBuf {
        self.dir.path().join(cluster).join(format!("{name}.tar.gz"))
    }

    /// `sha256sum -c` of a snapshot's sidecar, in its directory, as a user would run it.
    pub fn sha256sum_check(&self, cluster: &str, name: &str) {
        let out = std::process::Command::new("sha256sum")
            .args(["-c", &format!("{name}.tar.gz.sha256")])
            .current_dir(self.dir.path().join(cluster))
            .output()
            .expect("sha256sum");
        assert!(
            out.status.success(),
            "sha256sum -c failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Reads one entry of a bundle (`None` if absent).
pub fn bundle_entry(bundle: &Path, entry: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(bundle).expect("open bundle");
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.path().expect("path").to_str() == Some(entry) {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).expect("read entry");
            return Some(buf);
        }
    }
    None
}

pub fn bundle_names(bundle: &Path) -> Vec<String> {
    let f = std::fs::File::open(bundle).expect("open bundle");
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    ar.entries()
        .expect("entries")
        .map(|e| e.expect("entry").path().expect("path").to_string_lossy().into_owned())
        .collect()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A snapshot made by hand in the local store (push only needs a bundle, its sidecar and metadata).
pub fn fake_snapshot(store: &Store, cluster: &str, name: &str, size: usize, hours_ago: i64) {
    let dir = store.root().join(cluster);
    std::fs::create_dir_all(&dir).unwrap();
    let mut data = vec![0u8; size];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    std::fs::write(dir.join(format!("{name}.tar.gz")), &data).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    std::fs::write(
        dir.join(format!("{name}.tar.gz.sha256")),
        format!("{digest}  {name}.tar.gz\n"),
    )
    .unwrap();
    let created = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - hours_ago * 3600).unwrap();
    let meta = serde_json::json!({
        "schemaVersion": 1, "name": name, "cluster": cluster, "created": created.to_string(), "toolVersion": "test",
        "k8sVersion": "v1.33.1", "nodeImage": "x", "provider": "docker", "platform": "linux/amd64",
        "topology": {"controlPlanes": 1, "workers": 0, "loadBalancer": false, "nodes": []},
        "addons": {}, "etcd": {"node": "n", "image": "i", "size": 0, "digest": "sha256:0"},
        "images": {"digest": "sha256:0", "size": 0, "blobs": 0, "nodes": {}},
        "pvs": {"digest": "sha256:0", "size": 0, "files": 0, "nodes": {}}
    });
    std::fs::write(
        dir.join(format!("{name}.metadata.json")),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
}

/// A command running in the background, stopped at a pause point (`KUBECTL_SNAPSHOT_PAUSE_AT`), so that a
/// test can signal or kill it at a known phase. Its stderr is collected as it arrives.
pub struct Spawned {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Store {
    /// Starts `args` and returns once it printed `paused at <phase>` (panics after 3 minutes).
    pub fn spawn_paused(&self, args: &[&str], phase: &str) -> Spawned {
        use std::io::{BufRead, Read};
        let mut cmd = self.command(args);
        let mut child = cmd
            .env("KUBECTL_SNAPSHOT_PAUSE_AT", phase)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let mut spawned = Spawned {
            child,
            stderr,
            stdout: Some(stdout),
        };
        let want = format!("paused at {phase}");
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while !spawned.stderr().contains(&want) {
            if let Ok(Some(status)) = spawned.child.try_wait() {
                panic!("exited ({status}) before {phase}:\n{}", spawned.stderr());
            }
            if std::time::Instant::now() > deadline {
                let _ = spawned.child.kill();
                panic!("never reached {phase}:\n{}", spawned.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        spawned
    }
}

impl Spawned {
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (INT, TERM, KILL) and waits for the exit (panics after 3 minutes).
    pub fn signal(mut self, signal: &str) -> Run {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit after SIG{signal}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = self.stdout.take().and_then(|h| h.join().ok()).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(100)); // the last stderr lines
        Run {
            code: status.code(),
            stdout,
            stderr: self.stderr(),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
