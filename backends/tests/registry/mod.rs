//! OCI test servers on loopback: Debian's docker-registry (distribution 2.8.2), and the two parts that
//! distribution 2.8.2 cannot play itself:
//! - [`token::TokenIssuer`]: the token endpoint of distribution's `auth: token` mode (no token server is packaged
//!   in Debian). The registry still does all the checking: signature, issuer, audience, expiry, scope.
//! - [`front::Front`]: a pass-through front that pages `tags/list` with `Link` headers, as distribution 3.x, GHCR
//!   and Harbor do (2.8.2 ignores `n`/`last`), and records every request it forwards.

pub mod front;
pub mod token;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};

pub const USER: &str = "conformance";
pub const PASS: &str = "registry-password-do-not-print";

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|e: Infallible| match e {}).boxed()
}

/// An HTTP/1.1 server on a free loopback port, on its own thread and runtime (so it keeps serving while a test
/// blocks its own thread). Stopped on drop.
pub struct Server {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start<F, Fut>(handler: F) -> Server
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let handler = handler.clone();
                            let service = hyper::service::service_fn(move |req| {
                                let handler = handler.clone();
                                async move { Ok::<_, Infallible>(handler(req).await) }
                            });
                            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service));
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
        });
        Server { port, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the registry authenticates.
pub enum Auth<'a> {
    /// htpasswd: Basic credentials on every request (no tokens).
    Htpasswd,
    /// `auth: token`: Bearer challenges answered by this issuer.
    Token(&'a token::TokenIssuer),
}

/// Debian's docker-registry with its own config on a free port, killed on drop.
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

/// A private CA and a server certificate for 127.0.0.1 it issued, as PEM files.
pub struct Tls {
    dir: tempfile::TempDir,
}

impl Tls {
    pub fn new() -> Tls {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Tls { dir }
    }

    pub fn ca(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }
}

impl Registry {
    pub fn start(auth: Auth<'_>, delete: bool) -> Registry {
        Self::start_with(auth, delete, None)
    }

    /// Serving HTTPS with `tls`'s server certificate when given.
    pub fn start_with(auth: Auth<'_>, delete: bool, tls: Option<&Tls>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let runs = |b: &str| Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
        assert!(runs("docker-registry"), "the OCI test registry is not installed: run tests/run (it installs Debian's docker-registry and apache2-utils)");
        let auth = match auth {
            Auth::Htpasswd => {
                let hash = Command::new("htpasswd").args(["-Bbn", USER, PASS]).output().expect("htpasswd (apache2-utils, installed by tests/run)");
                std::fs::write(dir.path().join("htpasswd"), hash.stdout).unwrap();
                format!("{{htpasswd: {{realm: test, path: {root}/htpasswd}}}}")
            }
            Auth::Token(t) => format!(
                "{{token: {{realm: \"{}\", service: {}, issuer: {}, rootcertbundle: {}}}}}",
                t.realm(),
                token::SERVICE,
                token::ISSUER,
                t.ca_pem().display()
            ),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tls = tls.map_or(String::new(), |t| format!(", tls: {{certificate: {0}/server.pem, key: {0}/server.key}}", t.dir.path().display()));
        let config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {root}/data}}, delete: {{enabled: {delete}}}}}\n\
             http: {{addr: 127.0.0.1:{port}, secret: conformance{tls}}}\nauth: {auth}\n"
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// Where the registry keeps a blob's bytes (filesystem driver layout).
    pub fn blob(&self, hex: &str) -> PathBuf {
        self.dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}
