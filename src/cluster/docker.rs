//! The runtime the nodes run on, through the Docker Engine API (Docker, or Podman's Docker-compatible socket)
//! with bollard: the real [`NodeApi`]. Nothing else in the crate talks to bollard.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::{DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio_util::io::StreamReader;

use super::{
    CLUSTER_LABEL, COLLECT_MAX, ClusterError, ExecError, ExecStream, LOST_EXIT_GRACE, LOST_EXIT_POLL, Node, NodeApi,
    NodeState, OUTPUT_TAIL, Provider, ROLE_LABEL, Reader, Role, argv_of, lost_exit_error, tail,
};

type StdoutStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// The Docker Engine API (Docker, or Podman's Docker-compatible socket) through bollard.
#[derive(Clone)]
pub(super) struct DockerApi {
    docker: Docker,
    provider: Provider,
}

impl DockerApi {
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

    fn rt_err(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> ClusterError {
        let context = context.into();
        move |cause| ClusterError::Runtime { context, cause }
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
}

#[async_trait::async_trait]
impl NodeApi for DockerApi {
    fn provider(&self) -> Provider {
        self.provider
    }

    /// Names of all kind clusters (any node state), sorted.
    async fn clusters(&self) -> Result<Vec<String>, ClusterError> {
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
    async fn nodes(&self, cluster: &str) -> Result<Vec<Node>, ClusterError> {
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
    async fn platform(&self) -> Result<String, ClusterError> {
        let info = self.docker.info().await.map_err(Self::rt_err("reading runtime info"))?;
        let arch = match info.architecture.as_deref().unwrap_or("") {
            "x86_64" | "amd64" => "amd64",
            "aarch64" | "arm64" => "arm64",
            other => other,
        };
        let os = info.os_type.unwrap_or_else(|| "linux".into());
        Ok(format!("{os}/{arch}"))
    }

    /// Runs a command and returns its exit code, stdout and stderr as bytes.
    async fn exec(&self, node: &str, argv: &[&str]) -> Result<(i64, Vec<u8>, Vec<u8>), ClusterError> {
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

    /// Starts a command whose standard output is streamed, not collected (a file too large to hold in memory).
    /// Read the [`ExecStream`] to its end, then [`ExecStream::finish`] it for the exit status.
    async fn exec_stream(&self, node: &str, argv: &[&str]) -> Result<ExecStream, ClusterError> {
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
        let (api, node, argv) = (self.clone(), node.to_owned(), argv_of(argv));
        let done =
            move |drained: io::Result<u64>| -> futures_util::future::BoxFuture<'static, Result<(), ClusterError>> {
                Box::pin(async move {
                    if lost.load(Ordering::SeqCst) {
                        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                        return Err(lost_exit_error(&node, &argv));
                    }
                    let code = api.exit_code(&id).await;
                    let line = argv.join(" ");
                    crate::util::trace(t0, || format!("{node}: {line} -> (stream) exit {}", code.unwrap_or(-1)));
                    let stderr = String::from_utf8_lossy(&stderr.lock().expect("stderr buffer")).into_owned();
                    let fail = |extra: String| ExecError {
                        node: node.clone(),
                        command: argv.clone(),
                        code,
                        stdout: String::new(),
                        stderr: tail(&format!("{stderr}{extra}")),
                    };
                    match drained {
                        Err(e) => Err(fail(format!("\n{e}")).into()),
                        Ok(_) if code != Some(0) => Err(fail(String::new()).into()),
                        Ok(_) => Ok(()),
                    }
                })
            };
        Ok(ExecStream::new(
            Box::pin(StreamReader::new(Box::pin(stdout) as StdoutStream)),
            done,
        ))
    }

    /// Streams `path` out of a node as a tar archive (Docker's archive API; works on any container state).
    fn copy_out(&self, node: &str, path: &str) -> Reader {
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
        Box::pin(StreamReader::new(
            Box::pin(stream) as std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>
        ))
    }

    /// Extracts the tar stream `tar` into directory `dir` of a node (Docker's archive API, run by the
    /// runtime inside the container's filesystem).
    async fn copy_in(&self, node: &str, dir: &str, tar: Reader) -> Result<(), ClusterError> {
        let opts = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
            .path(dir)
            .build();
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::with_capacity(tar, 256 * 1024));
        self.docker
            .upload_to_container(node, Some(opts), body)
            .await
            .map_err(Self::rt_err(format!("copying into {dir} on node {node}")))
    }

    async fn exec_with_stdin(&self, node: &str, argv: &[&str], stdin: Reader) -> Result<String, ClusterError> {
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
    async fn pause(&self, node: &str) -> Result<(), ClusterError> {
        self.docker
            .pause_container(node)
            .await
            .map_err(Self::rt_err(format!("pausing node {node}")))
    }

    /// Whether a node is paused.
    async fn pause_state(&self, node: &str) -> Result<bool, ClusterError> {
        let info = self
            .docker
            .inspect_container(node, None)
            .await
            .map_err(Self::rt_err(format!("inspecting node {node}")))?;
        Ok(info.state.and_then(|s| s.paused).unwrap_or(false))
    }

    async fn unpause(&self, node: &str) -> Result<(), ClusterError> {
        self.docker
            .unpause_container(node)
            .await
            .map_err(Self::rt_err(format!("unpausing node {node}")))
    }

    /// Whether `path` exists in a node (archive API HEAD; works on any container state).
    async fn path_exists(&self, node: &str, path: &str) -> Result<bool, ClusterError> {
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

/// Collects a command's stdout and stderr, up to [`COLLECT_MAX`].
async fn collect(
    output: &mut (impl Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin),
    node: &str,
    argv: &[&str],
) -> Result<(Vec<u8>, Vec<u8>), ClusterError> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(item) = output.next().await {
        match item.map_err(DockerApi::rt_err(format!(
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
