//! An in-memory [`NodeApi`] for unit tests of the steps: kind nodes whose filesystem is a map of paths, answering
//! the commands the node layer sends as a kindest/node answers them (the node layer's own scripts, recognised by
//! their text; tool output in the format of real samples), recording every command, and failing where a test
//! says. What only a real node shows (the scripts themselves, crictl, etcd) stays in the fixture tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::node::{CREATE_DIR_WITH_FILE_SCRIPT, KEPT_COPIES_SCRIPT, REMOVE_ALL_THEN_OWNED_SCRIPT, WRITE_FILE_SCRIPT};
use super::{ClusterError, ExecError, ExecStream, Node, NodeApi, NodeState, Provider, Reader, Role};

/// `crictl ps --name ^etcd$ --state running -q` on a kind control plane (a container ID).
const ETCD_ID: &str = "3f4c2b1a9e8d";

#[derive(Default)]
struct State {
    cluster: String,
    nodes: Vec<Node>,
    /// (node, path) -> contents. A directory exists while a path under it does; tests use whole directories
    /// as single entries holding a label ("old", "new").
    files: BTreeMap<(String, String), Vec<u8>>,
    kubelet: BTreeMap<String, bool>,
    paused: BTreeSet<String>,
    log: Vec<(String, Vec<String>)>,
    /// A command on `.0` whose words, joined by spaces, contain `.1` fails (exit 1).
    failing: Vec<(String, String)>,
}

/// A handle on the fake cluster: clone it into [`super::Runtime::with`] and keep one to set up and inspect.
#[derive(Clone, Default)]
pub struct Fake {
    state: Arc<Mutex<State>>,
}

type Outcome = Result<(i64, Vec<u8>, Vec<u8>), ClusterError>;

impl Fake {
    /// A running cluster of `nodes` (name, role), kubelet running on each.
    pub fn cluster(name: &str, nodes: &[(&str, Role)]) -> Self {
        let fake = Self::default();
        {
            let mut s = fake.state();
            s.cluster = name.to_owned();
            for (n, role) in nodes {
                s.nodes.push(Node {
                    name: (*n).to_owned(),
                    id: format!("id-{n}"),
                    role: *role,
                    image: "kindest/node:v1.33.1".into(),
                    state: NodeState::Running,
                });
                s.kubelet.insert((*n).to_owned(), true);
            }
        }
        fake
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake state")
    }

    pub fn write(&self, node: &str, path: &str, contents: &[u8]) {
        self.state().files.insert((node.into(), path.into()), contents.to_vec());
    }

    /// The contents of `path` on `node`, as text, if it is there.
    pub fn read(&self, node: &str, path: &str) -> Option<String> {
        let s = self.state();
        s.files
            .get(&(node.to_owned(), path.to_owned()))
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Every path on `node` (entries, not the directories they imply), sorted.
    pub fn paths(&self, node: &str) -> Vec<String> {
        let s = self.state();
        s.files
            .keys()
            .filter(|(n, _)| n == node)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// kubelet stopped or started (`systemctl`), as a quiesced node has it.
    pub fn set_kubelet(&self, node: &str, running: bool) {
        self.state().kubelet.insert(node.into(), running);
    }

    pub fn kubelet_running(&self, node: &str) -> bool {
        self.state().kubelet.get(node).copied().unwrap_or(false)
    }

    /// Whether `node` is frozen.
    pub fn paused(&self, node: &str) -> bool {
        self.state().paused.contains(node)
    }

    /// Makes every command on `node` that mentions `needle` fail, until [`Self::heal`]; `pause` and `unpause`
    /// fail the runtime's call of that name.
    pub fn fail_on(&self, node: &str, needle: &str) {
        self.state().failing.push((node.into(), needle.into()));
    }

    pub fn heal(&self) {
        self.state().failing.clear();
    }

    /// The commands run, as `node: words`.
    pub fn log(&self) -> Vec<String> {
        self.state()
            .log
            .iter()
            .map(|(n, a)| format!("{n}: {}", a.join(" ")))
            .collect()
    }
}

fn exists(s: &State, node: &str, path: &str) -> bool {
    let under = format!("{}/", path.trim_end_matches('/'));
    s.files
        .keys()
        .any(|(n, p)| n == node && (p == path || p.starts_with(&under)))
}

/// The entries at or under `path`.
fn entries_at(s: &State, node: &str, path: &str) -> Vec<String> {
    let under = format!("{}/", path.trim_end_matches('/'));
    s.files
        .keys()
        .filter(|(n, p)| n == node && (p == path || p.starts_with(&under)))
        .map(|(_, p)| p.clone())
        .collect()
}

fn remove(s: &mut State, node: &str, path: &str) {
    for p in entries_at(s, node, path) {
        s.files.remove(&(node.to_owned(), p));
    }
}

fn ok(stdout: impl Into<Vec<u8>>) -> Outcome {
    Ok((0, stdout.into(), Vec::new()))
}

fn exit(code: i64, stderr: &str) -> Outcome {
    Ok((code, Vec::new(), stderr.as_bytes().to_vec()))
}

impl State {
    /// A runtime call (`pause`, `unpause`) on `node`: fails as Docker's API does when a test says so.
    fn runtime_call(&mut self, node: &str, call: &str) -> Result<(), ClusterError> {
        self.log.push((node.to_owned(), vec![format!("({call})")]));
        if self.failing.iter().any(|(n, needle)| n == node && needle == call) {
            return Err(ClusterError::Runtime {
                context: format!("{call} {node}"),
                cause: bollard::errors::Error::DockerResponseServerError {
                    status_code: 500,
                    message: format!("fake: {call} failing as the test asked"),
                },
            });
        }
        Ok(())
    }

    fn run(&mut self, node: &str, argv: &[&str], stdin: Option<Vec<u8>>) -> Outcome {
        self.log
            .push((node.to_owned(), argv.iter().map(|s| s.to_string()).collect()));
        let line = argv.join(" ");
        if self
            .failing
            .iter()
            .any(|(n, needle)| n == node && line.contains(needle.as_str()))
        {
            return exit(1, "fake: failing as the test asked");
        }
        let cps: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .map(|n| n.name.clone())
            .collect();
        match argv {
            ["mv", "-T", from, to] => {
                if !exists(self, node, from) {
                    return exit(1, &format!("mv: cannot stat '{from}': No such file or directory"));
                }
                if exists(self, node, to) {
                    return exit(1, &format!("mv: cannot overwrite '{to}': Directory not empty"));
                }
                for p in entries_at(self, node, from) {
                    let v = self.files.remove(&(node.to_owned(), p.clone())).unwrap_or_default();
                    self.files
                        .insert((node.to_owned(), format!("{to}{}", &p[from.len()..])), v);
                }
                ok("")
            }
            ["rm", "-rf", "--", paths @ ..] => {
                for p in paths {
                    remove(self, node, p);
                }
                ok("")
            }
            ["sh", "-c", script, "sh", _dir, _tmp, path] if *script == WRITE_FILE_SCRIPT => {
                self.files
                    .insert((node.to_owned(), (*path).to_owned()), stdin.unwrap_or_default());
                ok("")
            }
            ["sh", "-c", script, "sh", _parent, dir, _tmp, file] if *script == CREATE_DIR_WITH_FILE_SCRIPT => {
                if exists(self, node, dir) {
                    return exit(17, "");
                }
                self.files
                    .insert((node.to_owned(), (*file).to_owned()), stdin.unwrap_or_default());
                ok("")
            }
            ["sh", "-c", script, "sh", dir, file, token, paths @ ..] if *script == REMOVE_ALL_THEN_OWNED_SCRIPT => {
                for p in paths {
                    remove(self, node, p);
                }
                let owned = self
                    .files
                    .get(&(node.to_owned(), format!("{dir}/{file}")))
                    .is_some_and(|b| String::from_utf8_lossy(b).contains(token));
                if owned {
                    remove(self, node, dir);
                }
                ok("")
            }
            ["sh", "-c", script, "sh", lives @ ..] if *script == KEPT_COPIES_SCRIPT => {
                let mut out = String::new();
                for l in lives {
                    let copies: BTreeSet<String> = self
                        .files
                        .keys()
                        .filter(|(n, p)| n == node && p.starts_with(&format!("{l}.old-")))
                        .map(|(_, p)| p.split('/').take(l.split('/').count()).collect::<Vec<_>>().join("/"))
                        .collect();
                    for c in copies {
                        out.push_str(&format!("4 {c}\n"));
                    }
                }
                ok(out)
            }
            ["systemctl", verb @ ("start" | "stop"), "kubelet"] => {
                self.kubelet.insert(node.to_owned(), *verb == "start");
                ok("")
            }
            ["crictl", "ps", "-q"] => ok(""),
            ["crictl", "ps", "--name", "^etcd$", "--state", "running", "-q"] => {
                let running = cps.iter().any(|c| c == node) && self.kubelet.get(node).copied().unwrap_or(false);
                ok(if running { format!("{ETCD_ID}\n") } else { String::new() })
            }
            ["crictl", "exec", id, "etcdctl", rest @ ..] if *id == ETCD_ID => {
                match rest {
                    [.., "endpoint", "health"] => {
                        ok("https://127.0.0.1:2379 is healthy: successfully committed proposal: took = 1.2ms\n")
                    }
                    [.., "member", "list"] => {
                        // `etcdctl member list` (simple format) as kind's members print it: the same on every member.
                        let lines: String = cps
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            format!("{:016x}, started, {c}, https://172.18.0.{}:2380, https://172.18.0.{}:2379, false\n", 0x8e9e_05c5_2164_694d_u64 + i as u64, i + 2, i + 2)
                        })
                        .collect();
                        ok(lines)
                    }
                    _ => exit(127, &format!("fake: etcdctl {} is not answered", rest.join(" "))),
                }
            }
            _ => exit(127, &format!("fake: no answer for `{line}`")),
        }
    }
}

fn failed(node: &str, argv: &[&str], code: i64, stdout: &[u8], stderr: &[u8]) -> ClusterError {
    ExecError {
        node: node.into(),
        command: argv.iter().map(|s| s.to_string()).collect(),
        code: Some(code),
        stdout: String::from_utf8_lossy(stdout).into_owned(),
        stderr: String::from_utf8_lossy(stderr).into_owned(),
    }
    .into()
}

#[async_trait::async_trait]
impl NodeApi for Fake {
    fn provider(&self) -> Provider {
        Provider::Docker
    }

    async fn clusters(&self) -> Result<Vec<String>, ClusterError> {
        Ok(vec![self.state().cluster.clone()])
    }

    async fn nodes(&self, cluster: &str) -> Result<Vec<Node>, ClusterError> {
        let s = self.state();
        let mut nodes: Vec<Node> = if s.cluster == cluster {
            s.nodes.clone()
        } else {
            Vec::new()
        };
        for n in &mut nodes {
            if s.paused.contains(&n.name) {
                n.state = NodeState::Paused;
            }
        }
        Ok(nodes)
    }

    async fn platform(&self) -> Result<String, ClusterError> {
        Ok("linux/amd64".into())
    }

    async fn exec(&self, node: &str, argv: &[&str]) -> Result<(i64, Vec<u8>, Vec<u8>), ClusterError> {
        self.state().run(node, argv, None)
    }

    async fn exec_stream(&self, node: &str, argv: &[&str]) -> Result<ExecStream, ClusterError> {
        Err(failed(
            node,
            argv,
            127,
            b"",
            b"fake: streamed commands are not answered",
        ))
    }

    async fn exec_with_stdin(&self, node: &str, argv: &[&str], mut stdin: Reader) -> Result<String, ClusterError> {
        let mut input = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stdin, &mut input)
            .await
            .map_err(|e| failed(node, argv, -1, b"", e.to_string().as_bytes()))?;
        let (code, stdout, stderr) = self.state().run(node, argv, Some(input))?;
        if code != 0 {
            return Err(failed(node, argv, code, &stdout, &stderr));
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    fn copy_out(&self, node: &str, path: &str) -> Reader {
        // Docker's archive of a file: one entry named after it.
        let s = self.state();
        let mut tar = tar::Builder::new(Vec::new());
        if let Some(bytes) = s.files.get(&(node.to_owned(), path.to_owned())) {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
            let name = path.rsplit('/').next().unwrap_or(path);
            let _ = tar.append_data(&mut h, name, bytes.as_slice());
        }
        let bytes = tar.into_inner().unwrap_or_default();
        Box::pin(std::io::Cursor::new(bytes))
    }

    async fn copy_in(&self, node: &str, dir: &str, mut tar: Reader) -> Result<(), ClusterError> {
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tar, &mut bytes)
            .await
            .map_err(|e| failed(node, &["(archive API) put", dir], -1, b"", e.to_string().as_bytes()))?;
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut s = self.state();
        for entry in archive
            .entries()
            .map_err(|e| failed(node, &["(archive API) put", dir], -1, b"", e.to_string().as_bytes()))?
        {
            let mut entry =
                entry.map_err(|e| failed(node, &["(archive API) put", dir], -1, b"", e.to_string().as_bytes()))?;
            let name = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
            let mut content = Vec::new();
            let _ = std::io::Read::read_to_end(&mut entry, &mut content);
            s.files.insert((node.to_owned(), format!("{dir}/{name}")), content);
        }
        Ok(())
    }

    async fn pause(&self, node: &str) -> Result<(), ClusterError> {
        self.state().runtime_call(node, "pause")?;
        self.state().paused.insert(node.to_owned());
        Ok(())
    }

    async fn pause_state(&self, node: &str) -> Result<bool, ClusterError> {
        Ok(self.state().paused.contains(node))
    }

    async fn unpause(&self, node: &str) -> Result<(), ClusterError> {
        self.state().runtime_call(node, "unpause")?;
        self.state().paused.remove(node);
        Ok(())
    }

    async fn path_exists(&self, node: &str, path: &str) -> Result<bool, ClusterError> {
        Ok(exists(&self.state(), node, path))
    }
}
