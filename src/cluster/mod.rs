//! How kind nodes are reached: a Docker-API runtime (Docker, or Podman's Docker-compatible socket) through
//! bollard. Lists clusters and nodes by kind's labels, runs commands in nodes, streams files out and in
//! through the archive API. What is done with the nodes lives in `capture` (and `restore`); nothing outside
//! this module talks to bollard.

pub mod addons;
pub mod journal;
pub mod node;
pub mod quiesce;
mod resolve;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::{DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

pub use resolve::{resolve_live, resolve_stored};

pub const CLUSTER_LABEL: &str = "io.x-k8s.kind.cluster";
pub const ROLE_LABEL: &str = "io.x-k8s.kind.role";

/// How often a command that has not ended is checked for a lost exit, and how long its process must have
/// been gone before the exit is taken as lost.
const LOST_EXIT_POLL: std::time::Duration = std::time::Duration::from_secs(1);
const LOST_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Output kept from a failed command, per stream.
const OUTPUT_TAIL: usize = 8 * 1024;
/// The most a collected (non-streamed) command may print.
const COLLECT_MAX: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot reach the {provider} daemon ({host}): {cause}\nhint: is {provider} running? DOCKER_HOST and KIND_EXPERIMENTAL_PROVIDER select the daemon"
    )]
    Connect {
        provider: String,
        host: String,
        cause: bollard::errors::Error,
    },
    #[error("{context}: {cause}")]
    Runtime {
        context: String,
        cause: bollard::errors::Error,
    },
    #[error(
        "KIND_EXPERIMENTAL_PROVIDER={0} is not supported: kubectl-snapshot talks the Docker API (docker, or podman's socket)"
    )]
    UnsupportedProvider(String),
    #[error(
        "no kind clusters found\nhint: create one with `kind create cluster`, or check that the right Docker daemon is in use"
    )]
    NoClusters,
    #[error("several kind clusters found ({}); name one: kubectl snapshot <command> CLUSTER ... (or set KIND_CLUSTER_NAME)", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("kind cluster {name:?} not found{}", existing_hint(.existing))]
    NotFound { name: String, existing: Vec<String> },
    #[error("node {node} is {state}, not running; start the cluster first (`docker start {node}`)")]
    NodeNotRunning { node: String, state: String },
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The command's process ended but the runtime never reported its exit (see [`Runtime::lost_exit`]).
    #[error(
        "command `{}` on node {node} ended, but the container runtime still reports it running: its outcome is unknown\nhint: containerd's runc shim before 1.6.22 and 1.7.3 loses the exits of commands (containerd #8557); upgrade containerd (or Docker Engine), then run this again",
        .command.join(" ")
    )]
    LostExit { node: String, command: Vec<String> },
}

/// Runs a command that may safely run twice (a read, `mkdir -p`, `rm -rf`, an atomic rewrite) once more if
/// the runtime lost its exit the first time; anything else is returned as it is.
pub async fn idempotent<T, F, Fut>(run: F) -> Result<T, ClusterError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    match run().await {
        Err(ClusterError::LostExit { node, command }) => {
            crate::util::trace(std::time::Instant::now(), || {
                format!("{node}: running `{}` again", command.join(" "))
            });
            run().await
        }
        done => done,
    }
}

fn existing_hint(existing: &[String]) -> String {
    if existing.is_empty() {
        "; there are no kind clusters".into()
    } else {
        format!("; existing clusters: {}", existing.join(", "))
    }
}

/// A command that failed inside a node, with what it printed.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ExecError {
    pub node: String,
    pub command: Vec<String>,
    pub code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.map_or("unknown".to_string(), |c| c.to_string());
        write!(
            f,
            "command `{}` failed on node {} (exit code {code})",
            self.command.join(" "),
            self.node
        )?;
        let out = if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        };
        if !out.is_empty() {
            write!(f, "\n--- output ---\n{out}")?;
        }
        Ok(())
    }
}

/// Result of a finished command.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// A kind node container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub id: String,
    pub role: Role,
    pub image: String,
    pub state: NodeState,
}

/// A node container's state, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    Running,
    /// Frozen (`docker pause`): its files can be read, nothing runs in it.
    Paused,
    /// Anything else (`exited`, `created`, `restarting`, …), named as the runtime names it.
    Other(String),
}

impl NodeState {
    fn from_runtime(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "paused" => Self::Paused,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Other(s) => s,
        })
    }
}

/// The container runtime behind the Docker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Docker,
    Podman,
}

impl Provider {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ControlPlane,
    Worker,
    LoadBalancer,
    Other,
}

impl Role {
    /// Whether nodes of this role run a kubelet (and systemd, crictl, containerd): every role but kind's
    /// external load balancer, an envoy or haproxy container with none of them.
    pub fn runs_kubelet(&self) -> bool {
        matches!(self, Role::ControlPlane | Role::Worker)
    }

    fn from_label(s: &str) -> Self {
        match s {
            "control-plane" => Role::ControlPlane,
            "worker" => Role::Worker,
            "external-load-balancer" => Role::LoadBalancer,
            _ => Role::Other,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::LoadBalancer => "external-load-balancer",
            Role::Other => "other",
        }
    }
}

/// The nodes that run a kubelet, in the order given.
pub fn kubelet_nodes(nodes: &[Node]) -> Vec<&Node> {
    nodes.iter().filter(|n| n.role.runs_kubelet()).collect()
}

/// A connection to the container runtime the kind nodes run on.
#[derive(Clone)]
pub struct Runtime {
    docker: Docker,
    provider: Provider,
}

impl Runtime {
    /// Connects as kind would: `KIND_EXPERIMENTAL_PROVIDER` (docker, podman) picks the runtime, `DOCKER_HOST`
    /// the socket. An explicit choice (either variable) means that daemon and no other: unreachable, it is an
    /// error naming it. With neither set, Docker's default socket is tried first and then Podman's, like kind.
    /// The provider recorded is what the daemon says it is.
    pub async fn connect() -> Result<Self, ClusterError> {
        let explicit = std::env::var("KIND_EXPERIMENTAL_PROVIDER")
            .ok()
            .filter(|s| !s.is_empty());
        let host_set = std::env::var_os("DOCKER_HOST").is_some_and(|h| !h.is_empty());
        match explicit.as_deref() {
            Some("docker") => Self::connect_as(Provider::Docker).await,
            Some("podman") => Self::connect_as(Provider::Podman).await,
            Some(other) => Err(ClusterError::UnsupportedProvider(other.to_owned())),
            None if host_set => Self::connect_as(Provider::Docker).await,
            None => match Self::connect_as(Provider::Docker).await {
                Ok(rt) => Ok(rt),
                Err(docker_err) => Self::connect_as(Provider::Podman).await.map_err(|_| docker_err),
            },
        }
    }

    async fn connect_as(provider: Provider) -> Result<Self, ClusterError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .map(|h| format!("DOCKER_HOST={h}"))
            .unwrap_or_else(|| "the default socket".into());
        let err = |cause| ClusterError::Connect {
            provider: provider.as_str().to_owned(),
            host: host.clone(),
            cause,
        };
        let docker = if provider == Provider::Podman && std::env::var_os("DOCKER_HOST").is_none() {
            #[cfg(unix)]
            {
                Docker::connect_with_podman_defaults().map_err(err)?
            }
            #[cfg(not(unix))]
            {
                Docker::connect_with_defaults().map_err(err)?
            }
        } else {
            Docker::connect_with_defaults().map_err(err)?
        };
        let docker = docker.negotiate_version().await.map_err(err)?;
        docker.ping().await.map_err(err)?;
        // What answered: Podman's Docker-compatible API names itself in its components.
        let podman = docker.version().await.ok().is_some_and(|v| {
            v.components
                .unwrap_or_default()
                .iter()
                .any(|c| c.name.to_ascii_lowercase().contains("podman"))
        });
        Ok(Self {
            docker,
            provider: if podman { Provider::Podman } else { Provider::Docker },
        })
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    fn rt_err(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> ClusterError {
        let context = context.into();
        move |cause| ClusterError::Runtime { context, cause }
    }

    /// Names of all kind clusters (any node state), sorted.
    pub async fn clusters(&self) -> Result<Vec<String>, ClusterError> {
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&std::collections::HashMap::from([("label", vec![CLUSTER_LABEL])]))
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(Self::rt_err("listing containers"))?;
        let names: BTreeSet<String> = list
            .into_iter()
            .filter_map(|c| c.labels.and_then(|l| l.get(CLUSTER_LABEL).cloned()))
            .collect();
        Ok(names.into_iter().collect())
    }

    /// The nodes of `cluster` (including stopped ones), sorted by name.
    pub async fn nodes(&self, cluster: &str) -> Result<Vec<Node>, ClusterError> {
        let filter = format!("{CLUSTER_LABEL}={cluster}");
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&std::collections::HashMap::from([("label", vec![filter.as_str()])]))
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(Self::rt_err("listing containers"))?;
        let mut nodes: Vec<Node> = list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let name = c.names.and_then(|n| n.into_iter().next()).unwrap_or_default();
                Node {
                    name: name.trim_start_matches('/').to_owned(),
                    id: c.id.unwrap_or_default(),
                    role: Role::from_label(labels.get(ROLE_LABEL).map(String::as_str).unwrap_or("")),
                    image: c.image.unwrap_or_default(),
                    state: NodeState::from_runtime(&c.state.map(|s| s.to_string()).unwrap_or_default()),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// The platform nodes run, e.g. `linux/amd64`.
    pub async fn platform(&self) -> Result<String, ClusterError> {
        let info = self.docker.info().await.map_err(Self::rt_err("reading runtime info"))?;
        let arch = match info.architecture.as_deref().unwrap_or("") {
            "x86_64" | "amd64" => "amd64",
            "aarch64" | "arm64" => "arm64",
            other => other,
        };
        let os = info.os_type.unwrap_or_else(|| "linux".into());
        Ok(format!("{os}/{arch}"))
    }

    async fn start(&self, node: &str, argv: &[&str]) -> Result<(String, StartExecResults), ClusterError> {
        // A large read buffer: the default (8 KiB) frames bulk output such as image exports into tiny reads.
        self.start_with(node, argv, false, 1 << 20).await
    }

    async fn start_with(
        &self,
        node: &str,
        argv: &[&str],
        stdin: bool,
        capacity: usize,
    ) -> Result<(String, StartExecResults), ClusterError> {
        let cfg = ExecConfig {
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv_of(argv)),
            ..Default::default()
        };
        let ctx = || format!("running `{}` on node {node}", argv.join(" "));
        let created = self.docker.create_exec(node, cfg).await.map_err(Self::rt_err(ctx()))?;
        let opts = StartExecOptions {
            output_capacity: Some(capacity),
            ..Default::default()
        };
        let started = self
            .docker
            .start_exec(&created.id, Some(opts))
            .await
            .map_err(Self::rt_err(ctx()))?;
        Ok((created.id, started))
    }

    /// Resolves only if the runtime lost a command's exit: its process is gone from this host while the
    /// runtime still reports it running, for [`LOST_EXIT_GRACE`]. containerd's runc shim before 1.6.22 and
    /// 1.7.3 can drop the exit of an exec when several execs of one container end at once (containerd #8557,
    /// fixed by #8617); Docker then never ends the command's output stream, nor reports it finished, and a
    /// client waiting for either waits forever. Never resolves where the runtime's processes are not visible
    /// (a daemon in a VM or elsewhere): nothing can be concluded there.
    async fn lost_exit(&self, node: &str, exec_id: &str) {
        let mut gone_since: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(LOST_EXIT_POLL).await;
            let pid = match self.docker.inspect_exec(exec_id).await {
                Ok(i) if i.running == Some(true) => i.pid.unwrap_or(0),
                _ => 0,
            };
            let gone = pid > 0 && !std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !gone {
                gone_since = None;
                continue;
            }
            let since = *gone_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= LOST_EXIT_GRACE && self.processes_visible(node).await {
                crate::util::trace(since, || {
                    format!("{node}: the runtime lost the exit of exec {exec_id} (pid {pid})")
                });
                return;
            }
        }
    }

    /// Whether this host sees the runtime's processes: the node's init process is in our /proc, in the
    /// node's cgroup.
    async fn processes_visible(&self, node: &str) -> bool {
        let Ok(info) = self.docker.inspect_container(node, None).await else {
            return false;
        };
        let (Some(id), Some(pid)) = (info.id, info.state.and_then(|s| s.pid)) else {
            return false;
        };
        pid > 0
            && std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| !id.is_empty() && c.contains(&id))
    }

    async fn exit_code(&self, exec_id: &str) -> Option<i64> {
        self.docker.inspect_exec(exec_id).await.ok().and_then(|i| i.exit_code)
    }

    /// Runs a command in a node and collects its output; a non-zero exit is not an error here.
    pub async fn exec(&self, node: &str, argv: &[&str]) -> Result<ExecOutput, ClusterError> {
        let t0 = std::time::Instant::now();
        let out = self.exec_inner(node, argv).await;
        crate::util::trace(t0, || match &out {
            Ok(o) => format!("{node}: {} -> exit {}", traced(argv), o.code),
            Err(e) => format!("{node}: {} -> {e}", traced(argv)),
        });
        out
    }

    async fn exec_inner(&self, node: &str, argv: &[&str]) -> Result<ExecOutput, ClusterError> {
        let (code, stdout, stderr) = self.exec_raw(node, argv).await?;
        Ok(ExecOutput {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Runs a command and returns its exit code, stdout and stderr as bytes.
    async fn exec_raw(&self, node: &str, argv: &[&str]) -> Result<(i64, Vec<u8>, Vec<u8>), ClusterError> {
        let (id, started) = self.start(node, argv).await?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Ok((-1, Vec::new(), Vec::new()));
        };
        let (stdout, stderr) = tokio::select! {
            got = collect(&mut output, node, argv) => got?,
            () = self.lost_exit(node, &id) => return Err(lost_exit_error(node, argv)),
        };
        let code = self.exit_code(&id).await.unwrap_or(-1);
        Ok((code, stdout, stderr))
    }

    /// Runs a command whose output is binary; a non-zero exit is an [`ExecError`]. Returns stdout.
    pub async fn run_bytes(&self, node: &str, argv: &[&str]) -> Result<Vec<u8>, ClusterError> {
        let t0 = std::time::Instant::now();
        let out = self.exec_raw(node, argv).await;
        crate::util::trace(t0, || match &out {
            Ok((code, stdout, _)) => format!("{node}: {} -> exit {code}, {} bytes", traced(argv), stdout.len()),
            Err(e) => format!("{node}: {} -> {e}", traced(argv)),
        });
        let (code, stdout, stderr) = out?;
        if code != 0 {
            return Err(ExecError {
                node: node.into(),
                command: argv_of(argv),
                code: Some(code),
                stdout: String::new(),
                stderr: tail(&String::from_utf8_lossy(&stderr)),
            }
            .into());
        }
        Ok(stdout)
    }

    /// Runs a command in a node; a non-zero exit is an [`ExecError`] carrying its output. Returns stdout.
    pub async fn run(&self, node: &str, argv: &[&str]) -> Result<String, ClusterError> {
        let out = self.exec(node, argv).await?;
        if out.code != 0 {
            return Err(ExecError {
                node: node.into(),
                command: argv_of(argv),
                code: Some(out.code),
                stdout: tail(&out.stdout),
                stderr: tail(&out.stderr),
            }
            .into());
        }
        Ok(out.stdout)
    }

    /// Starts a command whose standard output is streamed, not collected (a file too large to hold in memory).
    /// Read the [`ExecStream`] to its end, then [`ExecStream::finish`] it for the exit status.
    pub async fn exec_stream(&self, node: &str, argv: &[&str]) -> Result<ExecStream, ClusterError> {
        let t0 = std::time::Instant::now();
        let (id, started) = self.start(node, argv).await?;
        let StartExecResults::Attached { output, .. } = started else {
            return Err(ExecError {
                node: node.into(),
                command: argv_of(argv),
                code: None,
                stdout: String::new(),
                stderr: "the runtime started the command without attaching its output".into(),
            }
            .into());
        };
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (kept, context) = (
            std::sync::Arc::clone(&stderr),
            format!("reading output of `{}` on node {node}", argv.join(" ")),
        );
        // Standard error is kept aside (its tail), standard output is what is read; it ends early if the
        // runtime loses the command's exit (finish says so).
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watch = {
            let (rt, node, id, lost) = (self.clone(), node.to_owned(), id.clone(), std::sync::Arc::clone(&lost));
            async move {
                rt.lost_exit(&node, &id).await;
                lost.store(true, Ordering::SeqCst);
            }
        };
        let stdout = output.take_until(Box::pin(watch)).filter_map(move |item| {
            let out = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => Some(Ok(message)),
                Ok(LogOutput::StdErr { message }) => {
                    let mut kept = kept.lock().expect("stderr buffer");
                    kept.extend_from_slice(&message);
                    if kept.len() > 2 * OUTPUT_TAIL {
                        let cut = kept.len() - OUTPUT_TAIL;
                        kept.drain(..cut);
                    }
                    None
                }
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(io::Error::other(format!("{context}: {e}")))),
            };
            std::future::ready(out)
        });
        Ok(ExecStream {
            rt: self.clone(),
            node: node.to_owned(),
            argv: argv_of(argv),
            id,
            stdout: StreamReader::new(Box::pin(stdout)),
            stderr,
            lost,
            t0,
        })
    }

    /// Streams `path` out of a node as a tar archive (Docker's archive API; works on any container state).
    pub fn copy_out(&self, node: &str, path: &str) -> impl AsyncRead + Send + Unpin + 'static {
        let opts = DownloadFromContainerOptionsBuilder::new().path(path).build();
        let context = format!("copying {path} out of node {node}");
        let t0 = std::time::Instant::now();
        let (what, bytes) = (
            format!("{node}: archive read {path}"),
            std::sync::Arc::new(AtomicU64::new(0)),
        );
        let counted = std::sync::Arc::clone(&bytes);
        let stream = self
            .docker
            .download_from_container(node, Some(opts))
            .map_err(move |e| io::Error::other(format!("{context}: {e}")))
            .inspect_ok(move |b| {
                counted.fetch_add(b.len() as u64, Ordering::Relaxed);
            })
            .chain(futures_util::stream::poll_fn(move |_| {
                crate::util::trace(t0, || format!("{what}: {} bytes", bytes.load(Ordering::Relaxed)));
                std::task::Poll::Ready(None)
            }));
        StreamReader::new(Box::pin(stream) as std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>)
    }

    /// Extracts the tar stream `tar` into directory `dir` of a node (Docker's archive API, run by the
    /// runtime inside the container's filesystem).
    pub async fn copy_in(
        &self,
        node: &str,
        dir: &str,
        tar: impl AsyncRead + Send + 'static,
    ) -> Result<(), ClusterError> {
        let opts = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
            .path(dir)
            .build();
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::with_capacity(tar, 256 * 1024));
        self.docker
            .upload_to_container(node, Some(opts), body)
            .await
            .map_err(Self::rt_err(format!("copying into {dir} on node {node}")))
    }

    /// Runs a command with `stdin` as its standard input (closed at its end) and collects its output;
    /// a non-zero exit is an [`ExecError`].
    pub async fn run_with_stdin(
        &self,
        node: &str,
        argv: &[&str],
        stdin: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<String, ClusterError> {
        let t0 = std::time::Instant::now();
        let out = self.run_with_stdin_inner(node, argv, stdin).await;
        crate::util::trace(t0, || match &out {
            Ok(_) => format!("{node}: {} < (stream) -> exit 0", argv.join(" ")),
            Err(e) => format!("{node}: {} < (stream) -> {e}", argv.join(" ")),
        });
        out
    }

    async fn run_with_stdin_inner(
        &self,
        node: &str,
        argv: &[&str],
        stdin: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<String, ClusterError> {
        let ctx = || format!("running `{}` on node {node}", argv.join(" "));
        let (id, started) = self.start_with(node, argv, true, 64 * 1024).await?;
        let StartExecResults::Attached { mut output, mut input } = started else {
            return Err(ClusterError::Runtime {
                context: ctx(),
                cause: bollard::errors::Error::RequestTimeoutError,
            });
        };
        let feed = tokio::spawn(async move {
            let mut stdin = stdin;
            let copied = tokio::io::copy(&mut stdin, &mut input).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut input).await;
            copied
        });
        let (stdout, stderr) = tokio::select! {
            got = collect(&mut output, node, argv) => got?,
            () = self.lost_exit(node, &id) => {
                feed.abort();
                return Err(lost_exit_error(node, argv));
            }
        };
        let fed = feed.await;
        let code = self.exit_code(&id).await;
        let fail = |extra: String| ExecError {
            node: node.into(),
            command: argv_of(argv),
            code,
            stdout: tail(&String::from_utf8_lossy(&stdout)),
            stderr: tail(&format!("{}{extra}", String::from_utf8_lossy(&stderr))),
        };
        if code != Some(0) {
            return Err(fail(String::new()).into());
        }
        match fed {
            Ok(Ok(_)) => Ok(String::from_utf8_lossy(&stdout).into_owned()),
            Ok(Err(e)) => Err(fail(format!(
                "
feeding standard input: {e}"
            ))
            .into()),
            Err(e) => Err(fail(format!(
                "
feeding standard input: {e}"
            ))
            .into()),
        }
    }

    /// Freezes every process of a node (the cgroup freezer: `docker pause`). The archive API still reads
    /// its files; exec does not run until [`Runtime::unpause`].
    pub async fn pause(&self, node: &str) -> Result<(), ClusterError> {
        let t0 = std::time::Instant::now();
        let r = self
            .docker
            .pause_container(node)
            .await
            .map_err(Self::rt_err(format!("pausing node {node}")));
        crate::util::trace(t0, || format!("{node}: pause"));
        r
    }

    /// Whether a node is paused.
    pub async fn pause_state(&self, node: &str) -> Result<bool, ClusterError> {
        let info = self
            .docker
            .inspect_container(node, None)
            .await
            .map_err(Self::rt_err(format!("inspecting node {node}")))?;
        Ok(info.state.and_then(|s| s.paused).unwrap_or(false))
    }

    pub async fn unpause(&self, node: &str) -> Result<(), ClusterError> {
        let t0 = std::time::Instant::now();
        let r = self
            .docker
            .unpause_container(node)
            .await
            .map_err(Self::rt_err(format!("unpausing node {node}")));
        crate::util::trace(t0, || format!("{node}: unpause"));
        r
    }

    /// Whether `path` exists in a node (archive API HEAD; works on any container state).
    pub async fn path_exists(&self, node: &str, path: &str) -> Result<bool, ClusterError> {
        let opts = bollard::query_parameters::ContainerArchiveInfoOptionsBuilder::new()
            .path(path)
            .build();
        let t0 = std::time::Instant::now();
        let got = self.docker.get_container_archive_info(node, Some(opts)).await;
        crate::util::trace(t0, || format!("{node}: archive stat {path}"));
        match got {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => Err(ClusterError::Runtime {
                context: format!("checking {path} on node {node}"),
                cause: e,
            }),
        }
    }
}

type StdoutStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A running command's standard output, from [`Runtime::exec_stream`].
pub struct ExecStream {
    rt: Runtime,
    node: String,
    argv: Vec<String>,
    id: String,
    stdout: StreamReader<StdoutStream, Bytes>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Set when the runtime lost the command's exit (the output was cut there).
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    t0: std::time::Instant,
}

impl AsyncRead for ExecStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl ExecStream {
    /// Waits for the command to end (output not read yet is discarded) and fails, with its standard error,
    /// unless it exited 0.
    pub async fn finish(mut self) -> Result<(), ClusterError> {
        let drained = tokio::io::copy(&mut self.stdout, &mut tokio::io::sink()).await;
        if self.lost.load(Ordering::SeqCst) {
            let argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
            return Err(lost_exit_error(&self.node, &argv));
        }
        let code = self.rt.exit_code(&self.id).await;
        let (node, argv) = (self.node.clone(), self.argv.join(" "));
        crate::util::trace(self.t0, || {
            format!("{node}: {argv} -> (stream) exit {}", code.unwrap_or(-1))
        });
        let stderr = String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).into_owned();
        let fail = |extra: String| ExecError {
            node: self.node.clone(),
            command: self.argv.clone(),
            code,
            stdout: String::new(),
            stderr: tail(&format!("{stderr}{extra}")),
        };
        match drained {
            Err(e) => Err(fail(format!("\n{e}")).into()),
            Ok(_) if code != Some(0) => Err(fail(String::new()).into()),
            Ok(_) => Ok(()),
        }
    }
}

/// A command whose exit the runtime lost: its outcome is unknown, so it failed.
fn lost_exit_error(node: &str, argv: &[&str]) -> ClusterError {
    ClusterError::LostExit {
        node: node.into(),
        command: argv_of(argv),
    }
}

/// A command line as owned strings (for errors and the runtime's API).
fn argv_of(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|s| s.to_string()).collect()
}

/// Collects a command's stdout and stderr, up to [`COLLECT_MAX`].
async fn collect(
    output: &mut (impl Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin),
    node: &str,
    argv: &[&str],
) -> Result<(Vec<u8>, Vec<u8>), ClusterError> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(item) = output.next().await {
        match item.map_err(Runtime::rt_err(format!(
            "reading output of `{}` on node {node}",
            argv.join(" ")
        )))? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => stdout.extend_from_slice(&message),
            LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
            LogOutput::StdIn { .. } => {}
        }
        if stdout.len() + stderr.len() > COLLECT_MAX {
            return Err(ExecError {
                node: node.into(),
                command: argv_of(argv),
                code: None,
                stdout: String::new(),
                stderr: format!("output exceeded {} MiB", COLLECT_MAX >> 20),
            }
            .into());
        }
    }
    Ok((stdout, stderr))
}

/// A command as `-v` shows it: a script of several lines (`sh -c`) is shown by its first line only, its
/// arguments in full.
fn traced(argv: &[&str]) -> String {
    match argv {
        ["sh", "-c", script, rest @ ..] if script.contains('\n') => {
            let first = script.lines().next().unwrap_or_default();
            format!("sh -c '{first}; …' {}", rest.join(" "))
        }
        _ => argv.join(" "),
    }
}

pub(crate) fn tail(s: &str) -> String {
    if s.len() <= OUTPUT_TAIL {
        return s.to_owned();
    }
    let mut start = s.len() - OUTPUT_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// A tar stream produced by `build` on a blocking thread (bounded memory: a 1 MiB pipe).
pub fn tar_stream<F>(build: F) -> impl AsyncRead + Send + Unpin + 'static
where
    F: FnOnce(&mut tar::Builder<tokio_util::io::SyncIoBridge<tokio::io::DuplexStream>>) -> io::Result<()>
        + Send
        + 'static,
{
    let (reader, writer) = tokio::io::duplex(1 << 20);
    tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(tokio_util::io::SyncIoBridge::new(writer));
        let res = build(&mut b).and_then(|()| b.finish());
        if let Ok(mut w) = b.into_inner() {
            let _ = std::io::Write::flush(&mut w);
            let _ = w.shutdown();
        }
        res
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> ClusterError {
        lost_exit_error("n", &["cat", "/f"])
    }

    #[tokio::test]
    async fn a_lost_exit_is_run_once_more_and_nothing_else_is() {
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let got = idempotent(|| async {
            match runs.fetch_add(1, Ordering::SeqCst) {
                0 => Err(lost()),
                _ => Ok("read"),
            }
        })
        .await;
        assert_eq!((got.ok(), runs.load(Ordering::SeqCst)), (Some("read"), 2));

        // Lost twice: the second loss is the error, and there is no third run.
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let got: Result<(), _> = idempotent(|| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(lost())
        })
        .await;
        assert!(matches!(got, Err(ClusterError::LostExit { .. })));
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        // A command that failed is not run again.
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let got: Result<(), _> = idempotent(|| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(ClusterError::NodeNotRunning {
                node: "n".into(),
                state: "exited".into(),
            })
        })
        .await;
        assert!(matches!(got, Err(ClusterError::NodeNotRunning { .. })));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_lost_exit_names_the_command_the_node_and_what_to_do() {
        let msg = lost().to_string();
        for part in [
            "`cat /f`",
            "node n",
            "outcome is unknown",
            "containerd #8557",
            "upgrade containerd",
        ] {
            assert!(msg.contains(part), "{part:?} missing from {msg}");
        }
    }
}
