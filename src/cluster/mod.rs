//! How kind nodes are reached: a Docker-API runtime (Docker, or Podman's Docker-compatible socket) through
//! bollard. Lists clusters and nodes by kind's labels, runs commands in nodes, streams files out and in
//! through the archive API. What is done with the nodes lives in `capture` (and `restore`); nothing outside
//! this module talks to bollard.

pub mod addons;
mod docker;
#[cfg(test)]
pub mod fake;
pub mod journal;
pub mod node;
pub mod quiesce;
mod resolve;

use std::fmt;
use std::io;

use tokio::io::AsyncRead;

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
    #[error("kind cluster {cluster:?} has no control-plane node")]
    NoControlPlane { cluster: String },
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
    /// The command's process ended but the runtime never reported its exit (see `docker::DockerApi::lost_exit`).
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

/// A reader the runtime hands over or takes: a command's output, a tar stream, a command's standard input.
pub type Reader = std::pin::Pin<Box<dyn AsyncRead + Send>>;

/// What create and restore need from the runtime that runs the nodes: the seam between the steps and Docker.
/// [`docker::DockerApi`] is the real one (bollard); unit tests use an in-memory one (`fake`). The command
/// helpers the node layer uses ([`Runtime::run`], …) are built on these in [`Runtime`], once.
#[async_trait::async_trait]
pub trait NodeApi: Send + Sync {
    /// What the daemon says it is.
    fn provider(&self) -> Provider;
    /// Names of all kind clusters (any node state), sorted.
    async fn clusters(&self) -> Result<Vec<String>, ClusterError>;
    /// The nodes of `cluster` (including stopped ones), sorted by name.
    async fn nodes(&self, cluster: &str) -> Result<Vec<Node>, ClusterError>;
    /// The platform nodes run, e.g. `linux/amd64`.
    async fn platform(&self) -> Result<String, ClusterError>;
    /// Runs a command in a node: its exit code, stdout and stderr (a non-zero exit is not an error here).
    async fn exec(&self, node: &str, argv: &[&str]) -> Result<(i64, Vec<u8>, Vec<u8>), ClusterError>;
    /// Starts a command whose standard output is streamed, not collected.
    async fn exec_stream(&self, node: &str, argv: &[&str]) -> Result<ExecStream, ClusterError>;
    /// Runs a command with `stdin` as its standard input (closed at its end); a non-zero exit is an
    /// [`ExecError`]. Returns stdout.
    async fn exec_with_stdin(&self, node: &str, argv: &[&str], stdin: Reader) -> Result<String, ClusterError>;
    /// Streams `path` out of a node as a tar archive (works on any container state).
    fn copy_out(&self, node: &str, path: &str) -> Reader;
    /// Extracts the tar stream `tar` into directory `dir` of a node.
    async fn copy_in(&self, node: &str, dir: &str, tar: Reader) -> Result<(), ClusterError>;
    /// Freezes every process of a node (`docker pause`): its files can still be read, nothing runs.
    async fn pause(&self, node: &str) -> Result<(), ClusterError>;
    /// Whether a node is paused.
    async fn pause_state(&self, node: &str) -> Result<bool, ClusterError>;
    async fn unpause(&self, node: &str) -> Result<(), ClusterError>;
    /// Whether `path` exists in a node (works on any container state).
    async fn path_exists(&self, node: &str, path: &str) -> Result<bool, ClusterError>;
}

/// A connection to the runtime the kind nodes run on.
#[derive(Clone)]
pub struct Runtime {
    api: std::sync::Arc<dyn NodeApi>,
}

impl Runtime {
    /// Connects as kind would: `KIND_EXPERIMENTAL_PROVIDER` (docker, podman) picks the runtime, `DOCKER_HOST`
    /// the socket. An explicit choice (either variable) means that daemon and no other: unreachable, it is an
    /// error naming it. With neither set, Docker's default socket is tried first and then Podman's, like kind.
    /// The provider recorded is what the daemon says it is.
    pub async fn connect() -> Result<Self, ClusterError> {
        Ok(Self::with(docker::DockerApi::connect().await?))
    }

    /// A runtime over any [`NodeApi`] (an in-memory one in unit tests).
    pub fn with(api: impl NodeApi + 'static) -> Self {
        Self {
            api: std::sync::Arc::new(api),
        }
    }

    pub fn provider(&self) -> Provider {
        self.api.provider()
    }

    /// Names of all kind clusters (any node state), sorted.
    pub async fn clusters(&self) -> Result<Vec<String>, ClusterError> {
        self.api.clusters().await
    }

    /// The nodes of `cluster` (including stopped ones), sorted by name.
    pub async fn nodes(&self, cluster: &str) -> Result<Vec<Node>, ClusterError> {
        self.api.nodes(cluster).await
    }

    /// The platform nodes run, e.g. `linux/amd64`.
    pub async fn platform(&self) -> Result<String, ClusterError> {
        self.api.platform().await
    }

    /// Runs a command in a node and collects its output; a non-zero exit is not an error here.
    pub async fn exec(&self, node: &str, argv: &[&str]) -> Result<ExecOutput, ClusterError> {
        let t0 = std::time::Instant::now();
        let out = self.api.exec(node, argv).await;
        crate::util::trace(t0, || match &out {
            Ok((code, _, _)) => format!("{node}: {} -> exit {code}", traced(argv)),
            Err(e) => format!("{node}: {} -> {e}", traced(argv)),
        });
        let (code, stdout, stderr) = out?;
        Ok(ExecOutput {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Runs a command whose output is binary; a non-zero exit is an [`ExecError`]. Returns stdout.
    pub async fn run_bytes(&self, node: &str, argv: &[&str]) -> Result<Vec<u8>, ClusterError> {
        let t0 = std::time::Instant::now();
        let out = self.api.exec(node, argv).await;
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
        self.api.exec_stream(node, argv).await
    }

    /// Streams `path` out of a node as a tar archive (Docker's archive API; works on any container state).
    pub fn copy_out(&self, node: &str, path: &str) -> Reader {
        self.api.copy_out(node, path)
    }

    /// Extracts the tar stream `tar` into directory `dir` of a node (Docker's archive API, run by the
    /// runtime inside the container's filesystem).
    pub async fn copy_in(
        &self,
        node: &str,
        dir: &str,
        tar: impl AsyncRead + Send + 'static,
    ) -> Result<(), ClusterError> {
        self.api.copy_in(node, dir, Box::pin(tar)).await
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
        let out = self.api.exec_with_stdin(node, argv, Box::pin(stdin)).await;
        crate::util::trace(t0, || match &out {
            Ok(_) => format!("{node}: {} < (stream) -> exit 0", argv.join(" ")),
            Err(e) => format!("{node}: {} < (stream) -> {e}", argv.join(" ")),
        });
        out
    }

    /// Freezes every process of a node (the cgroup freezer: `docker pause`). The archive API still reads
    /// its files; exec does not run until [`Runtime::unpause`].
    pub async fn pause(&self, node: &str) -> Result<(), ClusterError> {
        let t0 = std::time::Instant::now();
        let r = self.api.pause(node).await;
        crate::util::trace(t0, || format!("{node}: pause"));
        r
    }

    /// Whether a node is paused.
    pub async fn pause_state(&self, node: &str) -> Result<bool, ClusterError> {
        self.api.pause_state(node).await
    }

    pub async fn unpause(&self, node: &str) -> Result<(), ClusterError> {
        let t0 = std::time::Instant::now();
        let r = self.api.unpause(node).await;
        crate::util::trace(t0, || format!("{node}: unpause"));
        r
    }

    /// Whether `path` exists in a node (archive API HEAD; works on any container state).
    pub async fn path_exists(&self, node: &str, path: &str) -> Result<bool, ClusterError> {
        self.api.path_exists(node, path).await
    }
}

/// What finishes a streamed command, given how reading the rest of its output went.
type Finish =
    Box<dyn FnOnce(io::Result<u64>) -> futures_util::future::BoxFuture<'static, Result<(), ClusterError>> + Send>;

/// A running command's standard output, from [`Runtime::exec_stream`].
pub struct ExecStream {
    stdout: Reader,
    finish: Finish,
}

impl AsyncRead for ExecStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.stdout.as_mut().poll_read(cx, buf)
    }
}

impl ExecStream {
    /// `finish` gets how draining the output went and says how the command ended.
    pub fn new(
        stdout: Reader,
        finish: impl FnOnce(io::Result<u64>) -> futures_util::future::BoxFuture<'static, Result<(), ClusterError>>
        + Send
        + 'static,
    ) -> Self {
        Self {
            stdout,
            finish: Box::new(finish),
        }
    }

    /// Waits for the command to end (output not read yet is discarded) and fails, with its standard error,
    /// unless it exited 0.
    pub async fn finish(mut self) -> Result<(), ClusterError> {
        let drained = tokio::io::copy(&mut self.stdout, &mut tokio::io::sink()).await;
        (self.finish)(drained).await
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
    use std::sync::atomic::Ordering;

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
