//! Debian's docker-registry (distribution 2.8.2) on a free loopback port with a config of its own, and TLS
//! material for test servers. Used by the backends' tests and the CLI tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the registry authenticates.
pub enum Auth<'a> {
    /// htpasswd: Basic credentials on every request (no tokens).
    Htpasswd { user: &'a str, password: &'a str },
    /// `auth: token`: Bearer challenges naming `realm`; tokens must be signed by a certificate `ca` issued.
    Token {
        realm: String,
        service: &'a str,
        issuer: &'a str,
        ca: PathBuf,
    },
}

/// The registry process, killed on drop; its storage is under `dir`.
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

impl Registry {
    pub fn start(auth: Auth<'_>, delete: bool) -> Registry {
        Self::start_with(auth, delete, None)
    }

    /// Serving HTTPS with `tls`'s server certificate when given.
    pub fn start_with(auth: Auth<'_>, delete: bool, tls: Option<&Tls>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let runs = |b: &str| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        assert!(
            runs("docker-registry"),
            "the OCI test registry is not installed: run tests/run (it installs Debian's docker-registry and apache2-utils)"
        );
        let auth = match auth {
            Auth::Htpasswd { user, password } => {
                let hash = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (apache2-utils, installed by tests/run)");
                std::fs::write(dir.path().join("htpasswd"), hash.stdout).unwrap();
                format!("{{htpasswd: {{realm: test, path: {root}/htpasswd}}}}")
            }
            Auth::Token {
                realm,
                service,
                issuer,
                ca,
            } => {
                format!(
                    "{{token: {{realm: \"{realm}\", service: {service}, issuer: {issuer}, rootcertbundle: {}}}}}",
                    ca.display()
                )
            }
        };
        let tls = tls.map_or(String::new(), |t| {
            format!(", tls: {{certificate: {}, key: {}}}", t.cert(), t.key())
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {root}/data}}, delete: {{enabled: {delete}}}}}\n\
             http: {{addr: 127.0.0.1:{port}, secret: test-only{tls}}}\nauth: {auth}\n"
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
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// Where the registry keeps a blob's bytes (filesystem driver layout).
    pub fn blob(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

/// A private CA and a server certificate it issued for 127.0.0.1 and localhost, as PEM files.
pub struct Tls {
    dir: tempfile::TempDir,
}

impl Default for Tls {
    fn default() -> Self {
        Self::new()
    }
}

impl Tls {
    pub fn new() -> Tls {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Tls { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn ca(&self) -> String {
        self.file("ca.pem")
    }

    pub fn cert(&self) -> String {
        self.file("server.pem")
    }

    pub fn key(&self) -> String {
        self.file("server.key")
    }
}
