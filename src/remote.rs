//! Remotes: which store a command talks to, from `--remote NAME|URL`, the k3s-style `--s3-*` flags, the
//! environment and the user's config file. Precedence: flags > environment > config > defaults.
//!
//! Config file: `$XDG_CONFIG_HOME/kubectl-snapshot/config.toml` (or `KUBECTL_SNAPSHOT_CONFIG`):
//!
//! ```toml
//! default-remote = "team"
//! [remotes.team]
//! url = "s3://kind-snapshots/platform"
//! endpoint = "minio.lan:9000"       # k3s style: host[:port]
//! region = "eu-west-1"
//! bucket-lookup-type = "path"
//! endpoint-ca = ["/etc/ssl/lan-ca.pem"]
//! ```
//!
//! Unknown keys are errors, so no secret can be stored there by mistake: credentials come from flags, `AWS_*`
//! variables or AWS profiles only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use backends::SnapshotStore;
use backends::s3::{Lookup, S3Options, Secret};
use backends::url::RemoteUrl;
use serde::{Deserialize, Serialize};

use crate::util::parse_duration;

/// S3 options, named as k3s names them (`k3s etcd-snapshot --s3-*`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "S3 options (as k3s etcd-snapshot)")]
pub struct S3Args {
    /// Use S3 (needs --s3-bucket) as the remote.
    #[arg(long)]
    pub s3: bool,
    /// S3 endpoint, host[:port] (default: AWS; env AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub s3_endpoint: Option<String>,
    /// CA bundle for the endpoint: a PEM file or base64-encoded PEM (repeatable).
    #[arg(long, value_name = "FILE|BASE64")]
    pub s3_endpoint_ca: Vec<String>,
    /// Do not verify the endpoint's TLS certificate.
    #[arg(long)]
    pub s3_skip_ssl_verify: bool,
    /// Access key (default: AWS_ACCESS_KEY_ID, then the AWS profile).
    #[arg(long, value_name = "KEY")]
    pub s3_access_key: Option<String>,
    /// Secret key (default: AWS_SECRET_ACCESS_KEY, then the AWS profile). Flags show in `ps`: prefer
    /// --s3-secret-key-stdin, the environment or a profile.
    #[arg(long, value_name = "SECRET", conflicts_with = "s3_secret_key_stdin")]
    pub s3_secret_key: Option<String>,
    /// Read the secret key from standard input (with --s3-access-key), like --oci-password-stdin.
    #[arg(long)]
    pub s3_secret_key_stdin: bool,
    /// Session token (default: AWS_SESSION_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub s3_session_token: Option<String>,
    /// Bucket.
    #[arg(long, value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// Region (default: AWS_REGION, the profile's region, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Folder (key prefix) in the bucket.
    #[arg(long, value_name = "FOLDER")]
    pub s3_folder: Option<String>,
    /// Use plain HTTP.
    #[arg(long)]
    pub s3_insecure: bool,
    /// Per-request timeout (default 5m).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub s3_timeout: Option<Duration>,
    /// Bucket addressing: auto (virtual-hosted on AWS, path style elsewhere), dns or path.
    #[arg(long, value_name = "auto|dns|path")]
    pub s3_bucket_lookup_type: Option<Lookup>,
    /// AWS profile for credentials and region (default: AWS_PROFILE, else "default").
    #[arg(long, value_name = "NAME")]
    pub s3_profile: Option<String>,
}

impl S3Args {
    fn any(&self) -> bool {
        self.s3 || self.s3_bucket.is_some()
    }
}

/// Options for OCI registry remotes (`oci://REGISTRY/REPOSITORY`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "OCI registry options")]
pub struct OciArgs {
    /// Registry user (default: the Docker config and its credential helpers, then Podman's auth file).
    #[arg(long, value_name = "USER")]
    pub oci_username: Option<String>,
    /// Read the registry password from standard input (with --oci-username).
    #[arg(long)]
    pub oci_password_stdin: bool,
    /// Use plain HTTP for the registry.
    #[arg(long)]
    pub oci_insecure: bool,
    /// CA certificate (PEM file) for the registry (repeatable).
    #[arg(long, value_name = "FILE")]
    pub oci_ca: Vec<String>,
}

/// `--remote`, the S3 and the OCI flags, for every command that touches a remote.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RemoteArgs {
    /// Remote: a name from `kubectl snapshot remote list`, or s3://BUCKET/FOLDER, oci://REGISTRY/REPO, file:///PATH, a directory.
    #[arg(short, long, value_name = "NAME|URL")]
    pub remote: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub oci: OciArgs,
}

/// One line of standard input, without its line ending: a secret that never appears in `ps`.
fn read_secret_line(what: &str) -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .with_context(|| format!("reading {what} from standard input"))?;
    let line = line.trim_end_matches(['\n', '\r']).to_owned();
    if line.is_empty() {
        anyhow::bail!("{what} on standard input is empty");
    }
    Ok(line)
}

fn oci_options(rest: &str, cfg: Option<&RemoteConfig>, f: &OciArgs) -> Result<backends::oci::OciOptions> {
    let (registry, repository) = backends::oci::split_url(rest)?;
    let password = if f.oci_password_stdin {
        Some(Secret::new(read_secret_line("the registry password")?))
    } else {
        None
    };
    Ok(backends::oci::OciOptions {
        registry,
        repository,
        insecure: f.oci_insecure || cfg.is_some_and(|c| c.insecure),
        ca: if f.oci_ca.is_empty() {
            cfg.map(|c| c.endpoint_ca.clone()).unwrap_or_default()
        } else {
            f.oci_ca.clone()
        },
        username: f.oci_username.clone(),
        password,
    })
}

/// A remote as stored in the config file. Settings only: never credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RemoteConfig {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_ca: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_ssl_verify: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_lookup_type: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_remote: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteConfig>,
}

pub fn config_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KUBECTL_SNAPSHOT_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    use etcetera::AppStrategy;
    let dirs = crate::util::app_dirs().context("cannot determine the config directory; set KUBECTL_SNAPSHOT_CONFIG")?;
    Ok(dirs.config_dir().join("config.toml"))
}

impl Config {
    pub fn load() -> Result<Self> {
        let path = config_path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<PathBuf> {
        let path = config_path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string_pretty(self).context("writing the config")?;
        backends::local::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }
}

/// Builds S3 options: flags over environment (read by the backend) over the remote's config.
fn s3_options(bucket: String, folder: String, cfg: Option<&RemoteConfig>, f: &S3Args) -> Result<S3Options> {
    let mut o = S3Options::new(bucket);
    o.folder = folder;
    if let Some(c) = cfg {
        o.endpoint = c.endpoint.clone();
        o.endpoint_ca = c.endpoint_ca.clone();
        o.skip_ssl_verify = c.skip_ssl_verify;
        o.insecure = c.insecure;
        o.region = c.region.clone();
        o.profile = c.profile.clone();
        if let Some(t) = &c.timeout {
            o.timeout = parse_duration(t).map_err(|e| anyhow!("remote setting timeout: {e}"))?;
        }
        if let Some(l) = &c.bucket_lookup_type {
            o.lookup = l.parse().map_err(|e: String| anyhow!(e))?;
        }
    }
    if let Some(b) = &f.s3_bucket {
        o.bucket = b.clone();
    }
    if let Some(v) = &f.s3_folder {
        o.folder = v.trim_matches('/').to_owned();
    }
    if f.s3_endpoint.is_some() {
        o.endpoint = f.s3_endpoint.clone();
    }
    if !f.s3_endpoint_ca.is_empty() {
        o.endpoint_ca = f.s3_endpoint_ca.clone();
    }
    o.skip_ssl_verify |= f.s3_skip_ssl_verify;
    o.insecure |= f.s3_insecure;
    if f.s3_region.is_some() {
        o.region = f.s3_region.clone();
    }
    if f.s3_profile.is_some() {
        o.profile = f.s3_profile.clone();
    }
    if let Some(t) = f.s3_timeout {
        o.timeout = t;
    }
    if let Some(l) = f.s3_bucket_lookup_type {
        o.lookup = l;
    }
    o.access_key = f.s3_access_key.clone();
    o.secret_key = if f.s3_secret_key_stdin {
        Some(Secret::new(read_secret_line("the S3 secret key")?))
    } else {
        f.s3_secret_key.clone().map(Secret::new)
    };
    o.session_token = f.s3_session_token.clone().map(Secret::new);
    Ok(o)
}

/// The remote a command means, if any: `--remote`, else the S3 flags, else (when `use_default`) the default
/// remote from the config.
pub fn resolve(args: &RemoteArgs, use_default: bool) -> Result<Option<Box<dyn SnapshotStore>>> {
    let config = Config::load()?;
    let chosen = match (&args.remote, args.s3.any()) {
        (Some(r), _) => Some(r.clone()),
        (None, true) => {
            let bucket = args
                .s3
                .s3_bucket
                .clone()
                .ok_or_else(|| anyhow!("--s3 needs --s3-bucket"))?;
            let o = s3_options(bucket, args.s3.s3_folder.clone().unwrap_or_default(), None, &args.s3)?;
            return Ok(Some(Box::new(backends::s3::open(&o)?)));
        }
        (None, false) if use_default => config.default_remote.clone(),
        (None, false) => None,
    };
    let Some(chosen) = chosen else { return Ok(None) };
    let (url, cfg) = match config.remotes.get(&chosen) {
        Some(c) => (c.url.clone(), Some(c)),
        None => (chosen.clone(), None),
    };
    let parsed = RemoteUrl::parse(&url).map_err(|e| {
        if cfg.is_none() && !url.contains("://") && !url.contains('/') && !url.starts_with('.') {
            anyhow!("no remote named {chosen:?} (see `kubectl snapshot remote list`), and it is not a URL or a path")
        } else {
            e.into()
        }
    })?;
    if cfg.is_none() && matches!(parsed, RemoteUrl::Dir(_)) && !url.contains('/') && !url.starts_with('.') {
        bail!(
            "no remote named {chosen:?}: see `kubectl snapshot remote list`, or give a URL (s3://BUCKET/FOLDER) or a path (./{chosen})"
        );
    }
    Ok(Some(match parsed {
        RemoteUrl::S3 { bucket, folder } => Box::new(backends::s3::open(&s3_options(bucket, folder, cfg, &args.s3)?)?),
        RemoteUrl::Dir(p) => Box::new(backends::url::open_dir(&p)?),
        RemoteUrl::Oci(r) => Box::new(backends::oci::open(&oci_options(&r, cfg, &args.oci)?)?),
    }))
}

/// Like [`resolve`], but a remote is required.
pub fn require(args: &RemoteArgs) -> Result<Box<dyn SnapshotStore>> {
    resolve(args, true)?.ok_or_else(|| {
        anyhow!("no remote given and no default remote: use --remote NAME|URL, or `kubectl snapshot remote add NAME URL --default`")
    })
}
