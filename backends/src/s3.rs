//! S3 stores configured like k3s's `--s3-*` options, with AWS environment variables and shared profiles.
//!
//! Credentials, first found wins: explicit keys (flags), `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (+ `AWS_SESSION_TOKEN`), then a profile (`--s3-profile`/`AWS_PROFILE`, else `default`) in
//! `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`) or `~/.aws/config` (`AWS_CONFIG_FILE`). With none,
//! requests are unsigned. Instance metadata is never queried. Where credentials came from is part of every
//! error message; the secret never is. No flexible-checksum headers are sent (they break many S3-compatible
//! stores).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{Certificate, ClientOptions, RetryConfig};

use crate::Error;
use crate::remote::ObjectSnapshotStore;

/// A secret string: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lookup {
    /// Virtual-hosted style for AWS endpoints, path style for everything else.
    #[default]
    Auto,
    Dns,
    Path,
}

impl std::str::FromStr for Lookup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Lookup::Auto),
            "dns" => Ok(Lookup::Dns),
            "path" => Ok(Lookup::Path),
            _ => Err(format!("invalid bucket lookup type {s:?}: use auto, dns or path")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct S3Options {
    pub bucket: String,
    pub folder: String,
    /// host[:port] (k3s style), or a URL. Default: AWS.
    pub endpoint: Option<String>,
    /// CA bundles to trust: file paths or base64-encoded PEM.
    pub endpoint_ca: Vec<String>,
    pub skip_ssl_verify: bool,
    /// Plain HTTP.
    pub insecure: bool,
    pub region: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub profile: Option<String>,
    pub timeout: Duration,
    pub lookup: Lookup,
}

impl S3Options {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            folder: String::new(),
            endpoint: None,
            endpoint_ca: Vec::new(),
            skip_ssl_verify: false,
            insecure: false,
            region: None,
            access_key: None,
            secret_key: None,
            session_token: None,
            profile: None,
            timeout: Duration::from_secs(300),
            lookup: Lookup::Auto,
        }
    }
}

struct Creds {
    key: String,
    secret: Secret,
    token: Option<Secret>,
    from: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home() -> Option<std::path::PathBuf> {
    env("HOME").map(std::path::PathBuf::from)
}

/// A section of an AWS shared file, as key → value.
fn profile_section(path: &std::path::Path, section: &str) -> Result<Option<Vec<(String, String)>>, Error> {
    if !path.exists() {
        return Ok(None);
    }
    let ini =
        ini::Ini::load_from_file(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    Ok(ini
        .section(Some(section))
        .map(|s| s.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()))
}

fn get(section: &[(String, String)], key: &str) -> Option<String> {
    section.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// The profile's credentials and region, if the profile exists in either shared file.
fn from_profile(name: &str) -> Result<(Option<Creds>, Option<String>), Error> {
    let creds_file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(Into::into)
        .or_else(|| home().map(|h| h.join(".aws/credentials")));
    let config_file = env("AWS_CONFIG_FILE")
        .map(Into::into)
        .or_else(|| home().map(|h| h.join(".aws/config")));
    let mut creds = None;
    let mut region = None;
    let config_section = if name == "default" {
        "default".to_owned()
    } else {
        format!("profile {name}")
    };
    for (file, section) in [(creds_file, name.to_owned()), (config_file, config_section)] {
        let Some(file) = file else { continue };
        let Some(s) = profile_section(&file, &section)? else {
            continue;
        };
        if region.is_none() {
            region = get(&s, "region");
        }
        if creds.is_some() {
            continue;
        }
        if let (Some(key), Some(secret)) = (get(&s, "aws_access_key_id"), get(&s, "aws_secret_access_key")) {
            creds = Some(Creds {
                key,
                secret: Secret::new(secret),
                token: get(&s, "aws_session_token").map(Secret::new),
                from: format!("profile {name:?} in {}", file.display()),
            });
        } else if ["sso_session", "sso_start_url", "credential_process", "role_arn"]
            .iter()
            .any(|k| get(&s, k).is_some())
        {
            return Err(Error::Config(format!(
                "profile {name:?} in {} uses SSO, a credential process or a role, which kubectl-snapshot does not run itself; \
                 export its credentials first: eval \"$(aws configure export-credentials --profile {name} --format env)\"",
                file.display()
            )));
        }
    }
    Ok((creds, region))
}

fn credentials(o: &S3Options) -> Result<(Option<Creds>, Option<String>), Error> {
    match (&o.access_key, &o.secret_key) {
        (Some(key), Some(secret)) => {
            return Ok((
                Some(Creds {
                    key: key.clone(),
                    secret: secret.clone(),
                    token: o.session_token.clone(),
                    from: "--s3-access-key/--s3-secret-key".into(),
                }),
                None,
            ));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Config("--s3-access-key and --s3-secret-key go together".into()));
        }
        (None, None) => {}
    }
    if let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        let token = o
            .session_token
            .clone()
            .or_else(|| env("AWS_SESSION_TOKEN").map(Secret::new));
        return Ok((
            Some(Creds {
                key,
                secret: Secret::new(secret),
                token,
                from: "the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables".into(),
            }),
            None,
        ));
    }
    let profile = o
        .profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let explicit = o.profile.is_some() || env("AWS_PROFILE").is_some();
    let (creds, region) = from_profile(&profile)?;
    if creds.is_none() && explicit {
        return Err(Error::Config(format!(
            "AWS profile {profile:?} has no static credentials in ~/.aws/credentials or ~/.aws/config"
        )));
    }
    Ok((creds, region))
}

/// Reads CA bundles given as file paths or base64-encoded PEM (k3s accepts both).
fn certificates(entries: &[String]) -> Result<Vec<Certificate>, Error> {
    let mut out = Vec::new();
    for entry in entries.iter().flat_map(|e| e.split_whitespace()) {
        let pem = match std::fs::read(entry) {
            Ok(bytes) => bytes,
            Err(_) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(entry).map_err(|_| {
                    Error::Config(format!(
                        "--s3-endpoint-ca {entry:?} is neither a readable file nor base64-encoded PEM"
                    ))
                })?
            }
        };
        let certs = Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Config(format!("--s3-endpoint-ca {entry:?}: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config(format!(
                "--s3-endpoint-ca {entry:?} holds no certificate"
            )));
        }
        out.extend(certs);
    }
    Ok(out)
}

/// The endpoint URL and whether it is AWS.
fn endpoint_url(o: &S3Options) -> Result<(String, bool), Error> {
    let scheme = if o.insecure { "http" } else { "https" };
    let raw = o
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"));
    if let Some(e) = &raw {
        crate::url::refuse_credentials(e, "S3 endpoint")?;
    }
    match raw {
        None => Ok((format!("{scheme}://s3.amazonaws.com"), true)),
        Some(e) if e.starts_with("http://") || e.starts_with("https://") => {
            if e.starts_with("http://") && !o.insecure {
                return Err(Error::Config(format!(
                    "endpoint {e} is plain HTTP: add --s3-insecure to allow it"
                )));
            }
            let aws = e.contains("amazonaws.com");
            Ok((e.trim_end_matches('/').to_owned(), aws))
        }
        Some(host) => {
            let aws = host.ends_with("amazonaws.com");
            Ok((format!("{scheme}://{}", host.trim_end_matches('/')), aws))
        }
    }
}

/// Builds the store. The returned description names bucket, folder, endpoint and credential source.
pub fn open(o: &S3Options) -> Result<ObjectSnapshotStore, Error> {
    if o.bucket.is_empty() {
        return Err(Error::Config(
            "an S3 remote needs a bucket (--s3-bucket, or s3://BUCKET/FOLDER)".into(),
        ));
    }
    let (creds, profile_region) = credentials(o)?;
    let region = o
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or(profile_region)
        .unwrap_or_else(|| "us-east-1".into());
    let (endpoint, aws) = endpoint_url(o)?;
    let virtual_hosted = match o.lookup {
        Lookup::Dns => true,
        Lookup::Path => false,
        Lookup::Auto => aws,
    };
    let mut client = ClientOptions::new()
        .with_timeout(o.timeout)
        .with_connect_timeout(o.timeout.min(Duration::from_secs(30)))
        .with_allow_http(o.insecure)
        .with_allow_invalid_certificates(o.skip_ssl_verify);
    for cert in certificates(&o.endpoint_ca)? {
        client = client.with_root_certificate(cert);
    }
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: o.timeout,
        ..Default::default()
    };
    let store_endpoint = if virtual_hosted && !aws {
        // With a custom endpoint, virtual-hosted style needs the bucket in the host name.
        let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", &endpoint));
        format!("{scheme}://{}.{host}", o.bucket)
    } else {
        endpoint.clone()
    };
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&o.bucket)
        .with_region(&region)
        .with_client_options(client)
        .with_allow_http(o.insecure)
        .with_retry(retry)
        .with_virtual_hosted_style_request(virtual_hosted);
    if !aws || o.endpoint.is_some() {
        b = b.with_endpoint(&store_endpoint);
    }
    let from = match &creds {
        Some(c) => {
            b = b.with_access_key_id(&c.key).with_secret_access_key(c.secret.expose());
            if let Some(t) = &c.token {
                b = b.with_token(t.expose());
            }
            c.from.clone()
        }
        None => {
            b = b.with_skip_signature(true);
            "none found: requests are unsigned".into()
        }
    };
    let store = b.build().map_err(|e| Error::Config(format!("S3 configuration: {e}")))?;
    let folder = o.folder.trim_matches('/');
    let description = format!(
        "s3://{}{}{} at {endpoint} (credentials: {from})",
        o.bucket,
        if folder.is_empty() { "" } else { "/" },
        folder
    );
    Ok(ObjectSnapshotStore::new(Arc::new(store), folder, description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_debug() {
        let mut o = S3Options::new("b");
        o.secret_key = Some(Secret::new("hunter2-very-secret"));
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn ca_must_be_a_file_or_base64_pem() {
        assert!(certificates(&["/nonexistent/ca.pem".into()]).is_err());
        assert!(
            certificates(&["aGVsbG8=".into()]).is_err(),
            "base64 of something that is no PEM"
        );
    }

    #[test]
    fn endpoints() {
        let mut o = S3Options::new("b");
        o.endpoint = Some("127.0.0.1:9000".into());
        assert_eq!(endpoint_url(&o).unwrap().0, "https://127.0.0.1:9000");
        o.insecure = true;
        assert_eq!(endpoint_url(&o).unwrap().0, "http://127.0.0.1:9000");
        o.insecure = false;
        o.endpoint = Some("http://127.0.0.1:9000".into());
        assert!(endpoint_url(&o).is_err(), "plain http needs --s3-insecure");
    }
}
