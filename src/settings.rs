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

use anyhow::{Context, Result, anyhow, bail};
use backends::SnapshotStore;
use backends::s3::{Credentials, Lookup, S3Options, Secret, Sourced};
use backends::url::RemoteUrl;
use serde::{Deserialize, Serialize};

use crate::util::Span;

/// S3 options, named as k3s names them (`k3s etcd-snapshot --s3-*`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "S3 options (as k3s etcd-snapshot)")]
pub struct S3Args {
    /// Use S3 (needs --s3-bucket) as the remote.
    #[arg(long)]
    pub s3: bool,
    #[command(flatten)]
    pub settings: RemoteSettings,
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
    /// Folder (key prefix) in the bucket.
    #[arg(long, value_name = "FOLDER")]
    pub s3_folder: Option<String>,
}

/// A remote's settings: the `--s3-*` flags every command that reaches S3 takes (and `remote add` stores), and,
/// the same fields, a remote's entry in config.toml. One type, so that a flag and its config key cannot drift.
/// Never credentials. The OCI backend reads `insecure` and `endpoint-ca` too: plain HTTP and a private CA mean
/// the same for a registry.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RemoteSettings {
    /// The remote's URL (config file only: on the command line it is `--remote` or `remote add NAME URL`).
    #[arg(skip)]
    #[serde(default)]
    pub url: String,
    /// S3 endpoint, host[:port] (default: AWS; env AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).
    #[arg(long = "s3-endpoint", value_name = "HOST[:PORT]")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// CA bundle for the endpoint: a PEM file or base64-encoded PEM (repeatable).
    #[arg(long = "s3-endpoint-ca", value_name = "FILE|BASE64")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_ca: Vec<String>,
    /// Do not verify the endpoint's TLS certificate.
    #[arg(long = "s3-skip-ssl-verify")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_ssl_verify: bool,
    /// Use plain HTTP.
    #[arg(long = "s3-insecure")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Region (default: AWS_REGION, the profile's region, else us-east-1).
    #[arg(long = "s3-region", value_name = "REGION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// AWS profile for credentials and region (default: AWS_PROFILE, else "default").
    #[arg(long = "s3-profile", value_name = "NAME")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Per-request timeout (default 5m).
    #[arg(long = "s3-timeout", value_name = "DUR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    /// Bucket addressing: auto (virtual-hosted on AWS, path style elsewhere), dns or path.
    #[arg(long = "s3-bucket-lookup-type", value_name = "auto|dns|path")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_lookup_type: Option<Lookup>,
    /// Proxy for S3 requests, overriding HTTP_PROXY/HTTPS_PROXY/NO_PROXY; `none` disables proxying.
    #[arg(long = "s3-proxy", value_name = "URL|none")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
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

/// A remote's entry in config.toml.
pub type RemoteConfig = RemoteSettings;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_remote: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteConfig>,
    /// `kubectl snapshot schedule add`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, crate::schedule::Schedule>,
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

/// Where a setting came from, named as the user would write it.
fn from_config(remote: &str, key: &str) -> String {
    format!("remote {remote:?} in config.toml ({key})")
}

/// The S3 settings that have a value of their own (not a switch): where each is looked for, in order. A new
/// setting is one entry here, its field in [`RemoteSettings`] (flag and config key in one) and its use; a test
/// checks the table against the command line and the config file's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S3Key {
    Endpoint,
    Region,
    Profile,
    Proxy,
    EndpointCa,
}

impl S3Key {
    #[cfg(test)]
    const ALL: [S3Key; 5] = [
        S3Key::Endpoint,
        S3Key::Region,
        S3Key::Profile,
        S3Key::Proxy,
        S3Key::EndpointCa,
    ];

    /// Its flag, as `--name`.
    fn flag(self) -> &'static str {
        match self {
            S3Key::Endpoint => "--s3-endpoint",
            S3Key::Region => "--s3-region",
            S3Key::Profile => "--s3-profile",
            S3Key::Proxy => "--s3-proxy",
            S3Key::EndpointCa => "--s3-endpoint-ca",
        }
    }

    /// Environment variables, the first set one winning. Not the proxy: without a proxy setting the HTTP
    /// client honours HTTP(S)_PROXY itself.
    fn env(self) -> &'static [&'static str] {
        match self {
            S3Key::Endpoint => &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
            S3Key::Region => &["AWS_REGION", "AWS_DEFAULT_REGION"],
            S3Key::Profile => &["AWS_PROFILE"],
            S3Key::Proxy | S3Key::EndpointCa => &[],
        }
    }

    /// Its key in a remote's entry of config.toml.
    fn config_key(self) -> &'static str {
        &self.flag()["--s3-".len()..]
    }

    /// The value set in `s` for this key.
    fn value(self, s: &RemoteSettings) -> Option<String> {
        match self {
            S3Key::Endpoint => s.endpoint.clone(),
            S3Key::Region => s.region.clone(),
            S3Key::Profile => s.profile.clone(),
            S3Key::Proxy => s.proxy.clone(),
            S3Key::EndpointCa => None,
        }
    }

    /// The first value present, with its source: the flags, the environment, the remote's config entry.
    fn pick(
        self,
        flags: &RemoteSettings,
        env: &dyn Fn(&str) -> Option<String>,
        cfg: Option<(&str, &RemoteConfig)>,
    ) -> Option<Sourced<String>> {
        if let Some(v) = self.value(flags) {
            return Some(Sourced::new(v, self.flag()));
        }
        for var in self.env() {
            if let Some(v) = env(var) {
                return Some(Sourced::new(v, *var));
            }
        }
        let (name, c) = cfg?;
        self.value(c)
            .map(|v| Sourced::new(v, from_config(name, self.config_key())))
    }
}

/// The process environment, empty values unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Resolves every S3 setting once: flags > environment > the remote's config entry > defaults. Each value keeps
/// its source, so that errors name it. The backend reads no environment.
fn s3_options(
    bucket: String,
    folder: String,
    cfg: Option<(&str, &RemoteConfig)>,
    f: &S3Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<S3Options> {
    let mut o = S3Options::new(bucket);
    o.folder = folder;
    let (c, flags) = (cfg.map(|(_, c)| c), &f.settings);
    if let Some(b) = &f.s3_bucket {
        o.bucket = b.clone();
    }
    if let Some(v) = &f.s3_folder {
        o.folder = v.trim_matches('/').to_owned();
    }
    o.endpoint = S3Key::Endpoint.pick(flags, env, cfg);
    o.endpoint_ca = match (flags.endpoint_ca.is_empty(), cfg) {
        (false, _) => Some(Sourced::new(flags.endpoint_ca.clone(), S3Key::EndpointCa.flag())),
        (true, Some((name, c))) if !c.endpoint_ca.is_empty() => Some(Sourced::new(
            c.endpoint_ca.clone(),
            from_config(name, S3Key::EndpointCa.config_key()),
        )),
        _ => None,
    };
    o.skip_ssl_verify = flags.skip_ssl_verify || c.is_some_and(|c| c.skip_ssl_verify);
    o.insecure = flags.insecure || c.is_some_and(|c| c.insecure);
    o.timeout = flags.timeout.or(c.and_then(|c| c.timeout)).map_or(o.timeout, |t| t.0);
    o.lookup = (flags.bucket_lookup_type)
        .or(c.and_then(|c| c.bucket_lookup_type))
        .unwrap_or(o.lookup);
    o.proxy = S3Key::Proxy.pick(flags, env, cfg);
    let profile = AwsProfile::read(S3Key::Profile.pick(flags, env, cfg), env)?;
    o.credentials = s3_credentials(f, env, &profile)?;
    o.region = S3Key::Region
        .pick(flags, env, cfg)
        .or_else(|| {
            let from = format!("profile {:?}", profile.name());
            profile.region.clone().map(|r| Sourced::new(r, from))
        })
        .unwrap_or(o.region);
    Ok(o)
}

/// The AWS profile: named explicitly, or "default"; its files from AWS_SHARED_CREDENTIALS_FILE and
/// AWS_CONFIG_FILE, else ~/.aws.
struct AwsProfile {
    named: Option<Sourced<String>>,
    creds_file: Option<PathBuf>,
    config_file: Option<PathBuf>,
    credentials: Option<Credentials>,
    region: Option<String>,
}

impl AwsProfile {
    fn read(named: Option<Sourced<String>>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let home = env("HOME").map(PathBuf::from);
        let creds_file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let config_file = env("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        let name = named.as_ref().map_or("default", |p| p.value.as_str());
        let (credentials, region) = backends::s3::profile(name, creds_file.as_deref(), config_file.as_deref())?;
        Ok(AwsProfile {
            named,
            creds_file,
            config_file,
            credentials,
            region,
        })
    }

    fn name(&self) -> &str {
        self.named.as_ref().map_or("default", |p| p.value.as_str())
    }
}

/// Credentials: the flags (both or neither), else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else the profile's.
/// A profile named explicitly must have them.
fn s3_credentials(
    f: &S3Args,
    env: &dyn Fn(&str) -> Option<String>,
    profile: &AwsProfile,
) -> Result<Option<Credentials>> {
    let secret = if f.s3_secret_key_stdin {
        Some(read_secret_line("the S3 secret key")?)
    } else {
        f.s3_secret_key.clone()
    };
    let secret_flag = if f.s3_secret_key_stdin {
        "--s3-secret-key-stdin"
    } else {
        "--s3-secret-key"
    };
    match (&f.s3_access_key, secret) {
        (Some(key), Some(secret)) => {
            return Ok(Some(Credentials {
                key: key.clone(),
                secret: Secret::new(secret),
                token: f.s3_session_token.clone().map(Secret::new),
                from: format!("--s3-access-key/{secret_flag}"),
            }));
        }
        (Some(_), None) | (None, Some(_)) => bail!("--s3-access-key and {secret_flag} go together"),
        (None, None) => {}
    }
    if let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Some(Credentials {
            key,
            secret: Secret::new(secret),
            token: (f.s3_session_token.clone())
                .or_else(|| env("AWS_SESSION_TOKEN"))
                .map(Secret::new),
            from: "the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables".into(),
        }));
    }
    if profile.credentials.is_none()
        && let Some(p) = &profile.named
    {
        let shown = |f: &Option<PathBuf>, default: &str| f.as_ref().map_or(default.into(), |p| p.display().to_string());
        bail!(
            "AWS profile {:?} (from {}) has no static credentials in {} or {}",
            p.value,
            p.from,
            shown(&profile.creds_file, "~/.aws/credentials"),
            shown(&profile.config_file, "~/.aws/config")
        );
    }
    Ok(profile.credentials.clone())
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
            let o = s3_options(
                bucket,
                args.s3.s3_folder.clone().unwrap_or_default(),
                None,
                &args.s3,
                &process_env,
            )?;
            return Ok(Some(Box::new(backends::s3::open(&o)?)));
        }
        (None, false) if use_default => config.default_remote.clone(),
        (None, false) => None,
    };
    let Some(chosen) = chosen else { return Ok(None) };
    let (url, cfg) = match config.remotes.get_key_value(&chosen) {
        Some((name, c)) => (c.url.clone(), Some((name.as_str(), c))),
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
        RemoteUrl::S3 { bucket, folder } => Box::new(backends::s3::open(&s3_options(
            bucket,
            folder,
            cfg,
            &args.s3,
            &process_env,
        )?)?),
        RemoteUrl::Dir(p) => Box::new(backends::url::open_dir(&p)?),
        RemoteUrl::Oci(r) => Box::new(backends::oci::open(&oci_options(&r, cfg.map(|(_, c)| c), &args.oci)?)?),
    }))
}

/// Like [`resolve`], but a remote is required.
pub fn require(args: &RemoteArgs) -> Result<Box<dyn SnapshotStore>> {
    resolve(args, true)?.ok_or_else(|| {
        anyhow!("no remote given and no default remote: use --remote NAME|URL, or `kubectl snapshot remote add NAME URL --default`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    /// Every key of the table is a flag of `push` and a key of a remote's config entry, read back as its value.
    #[test]
    fn the_s3_key_table_matches_the_flags_and_the_config_file() {
        let cli = <crate::cli::Cli as clap::CommandFactory>::command();
        let push = cli.find_subcommand("push").expect("push");
        for key in S3Key::ALL {
            let long = &key.flag()[2..];
            assert!(
                push.get_arguments().any(|a| a.get_long() == Some(long)),
                "{} is not a flag",
                key.flag()
            );
            let value = if key == S3Key::EndpointCa { "[\"x\"]" } else { "\"x\"" };
            let text = format!("url = \"s3://b\"\n{} = {value}\n", key.config_key());
            let parsed: RemoteSettings = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", key.config_key()));
            if key != S3Key::EndpointCa {
                assert_eq!(key.value(&parsed).as_deref(), Some("x"), "{key:?}");
                let env = |_: &str| None;
                let picked = key
                    .pick(&RemoteSettings::default(), &env, Some(("team", &parsed)))
                    .unwrap();
                assert!(picked.from.contains(key.config_key()), "{}", picked.from);
            }
        }
    }

    fn team() -> RemoteConfig {
        RemoteConfig {
            url: "s3://bucket/folder".into(),
            endpoint: Some("config.lan:9000".into()),
            region: Some("config-region".into()),
            ..Default::default()
        }
    }

    fn resolve(flags: &S3Args, env: &dyn Fn(&str) -> Option<String>, cfg: Option<&RemoteConfig>) -> S3Options {
        s3_options("bucket".into(), String::new(), cfg.map(|c| ("team", c)), flags, env).unwrap()
    }

    const KEYS: &[(&str, &str)] = &[
        ("AWS_ACCESS_KEY_ID", "env-key"),
        ("AWS_SECRET_ACCESS_KEY", "env-secret"),
    ];

    #[test]
    fn endpoint_flag_beats_environment_beats_config() {
        let cfg = team();
        let mut flags = S3Args::default();
        flags.settings.endpoint = Some("flag.lan:9000".into());
        let env = env_of(&[
            ("AWS_ENDPOINT_URL_S3", "https://env-s3.lan"),
            ("AWS_ENDPOINT_URL", "https://env.lan"),
        ]);
        let got =
            |f: &S3Args, e: &dyn Fn(&str) -> Option<String>, c| resolve(f, e, c).endpoint.map(|s| (s.value, s.from));
        assert_eq!(
            got(&flags, &env, Some(&cfg)),
            Some(("flag.lan:9000".into(), "--s3-endpoint".into()))
        );
        let none = S3Args::default();
        assert_eq!(
            got(&none, &env, Some(&cfg)),
            Some(("https://env-s3.lan".into(), "AWS_ENDPOINT_URL_S3".into()))
        );
        let generic = env_of(&[("AWS_ENDPOINT_URL", "https://env.lan")]);
        assert_eq!(
            got(&none, &generic, Some(&cfg)),
            Some(("https://env.lan".into(), "AWS_ENDPOINT_URL".into()))
        );
        let empty = env_of(&[]);
        assert_eq!(
            got(&none, &empty, Some(&cfg)),
            Some((
                "config.lan:9000".into(),
                "remote \"team\" in config.toml (endpoint)".into()
            ))
        );
        assert_eq!(got(&none, &empty, None), None, "default: AWS");
    }

    #[test]
    fn region_flag_beats_environment_beats_config_beats_profile_beats_default() {
        let cfg = team();
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(&creds, "[default]\nregion = profile-region\n").unwrap();
        let path = creds.display().to_string();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", path.as_str()),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| [&files[..], extra].concat();
        let region = |f: &S3Args, e: &[(&str, &str)], c| {
            let r = resolve(f, &env_of(e), c).region;
            (r.value, r.from)
        };
        let mut flags = S3Args::default();
        flags.settings.region = Some("flag-region".into());
        let both = with(&[("AWS_REGION", "env-region"), ("AWS_DEFAULT_REGION", "env-default")]);
        assert_eq!(
            region(&flags, &both, Some(&cfg)),
            ("flag-region".into(), "--s3-region".into())
        );
        let none = S3Args::default();
        assert_eq!(
            region(&none, &both, Some(&cfg)),
            ("env-region".into(), "AWS_REGION".into())
        );
        let default_only = with(&[("AWS_DEFAULT_REGION", "env-default")]);
        assert_eq!(
            region(&none, &default_only, Some(&cfg)),
            ("env-default".into(), "AWS_DEFAULT_REGION".into())
        );
        assert_eq!(
            region(&none, &files, Some(&cfg)),
            ("config-region".into(), "remote \"team\" in config.toml (region)".into()),
            "the config file is beaten by the environment, and beats the profile"
        );
        assert_eq!(
            region(&none, &files, None),
            ("profile-region".into(), "profile \"default\"".into())
        );
        assert_eq!(region(&none, &[], None), ("us-east-1".into(), "the default".into()));
    }

    #[test]
    fn credentials_flags_beat_environment_beat_profile() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = profile-key\naws_secret_access_key = profile-secret\n",
        )
        .unwrap();
        let path = creds.display().to_string();
        let profile_only = [("AWS_SHARED_CREDENTIALS_FILE", path.as_str())];
        let env_and_profile = [&profile_only[..], KEYS].concat();
        let key = |f: &S3Args, e: &[(&str, &str)]| resolve(f, &env_of(e), None).credentials.map(|c| (c.key, c.from));
        let flags = S3Args {
            s3_access_key: Some("flag-key".into()),
            s3_secret_key: Some("flag-secret".into()),
            ..Default::default()
        };
        assert_eq!(key(&flags, &env_and_profile).unwrap().0, "flag-key");
        let none = S3Args::default();
        let (k, from) = key(&none, &env_and_profile).unwrap();
        assert_eq!(k, "env-key");
        assert!(from.contains("AWS_ACCESS_KEY_ID"), "{from}");
        let (k, from) = key(&none, &profile_only).unwrap();
        assert_eq!(k, "profile-key");
        assert!(from.contains("profile \"default\""), "{from}");
        assert!(key(&none, &[]).is_none(), "nothing found: unsigned");
        // A profile named anywhere must exist.
        let mut named = S3Args::default();
        named.settings.profile = Some("missing".into());
        let e = s3_options("b".into(), String::new(), None, &named, &env_of(&profile_only))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"missing\" (from --s3-profile) has no static credentials"),
            "{e}"
        );
    }

    #[test]
    fn a_remote_entry_round_trips_through_the_config_file_and_unknown_keys_are_refused() {
        let entry = RemoteConfig {
            url: "s3://bucket/folder".into(),
            endpoint: Some("minio.lan:9000".into()),
            insecure: true,
            timeout: Some(Span(std::time::Duration::from_secs(90))),
            bucket_lookup_type: Some(Lookup::Path),
            ..Default::default()
        };
        let config = Config {
            default_remote: Some("team".into()),
            remotes: BTreeMap::from([("team".to_owned(), entry.clone())]),
            ..Default::default()
        };
        let text = toml::to_string_pretty(&config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.remotes["team"], entry, "{text}");
        let secret = "[remotes.team]\nurl = \"s3://b\"\nsecret-key = \"hunter2\"\n";
        let e = toml::from_str::<Config>(secret).unwrap_err().to_string();
        assert!(e.contains("unknown field `secret-key`"), "{e}");
    }

    #[test]
    fn errors_name_where_a_value_came_from() {
        let mut cfg = team();
        cfg.endpoint = Some("http://config.lan:9000".into());
        let o = resolve(&S3Args::default(), &env_of(KEYS), Some(&cfg));
        let e = backends::s3::open(&o).err().expect("plain HTTP refused").to_string();
        assert!(e.contains("(from remote \"team\" in config.toml (endpoint))"), "{e}");
    }
}
