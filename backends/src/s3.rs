//! S3 stores configured like k3s's `--s3-*` options.
//!
//! The store takes *resolved* settings ([`S3Options`]): which flag, environment variable, config entry or
//! default each value came from is decided by the caller (the binary's settings model), and each value carries
//! that source so that errors can name it. Nothing here reads the environment. [`profile`] reads an AWS shared
//! credentials/config file pair for the caller. Instance metadata is never queried. Where credentials came
//! from is part of every error message; the secret never is. No flexible-checksum headers are sent (they
//! break many S3-compatible stores).

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// A setting and where its value came from (`--s3-region`, `AWS_REGION`, `remote "team" in config.toml`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub from: String,
}

impl<T> Sourced<T> {
    pub fn new(value: T, from: impl Into<String>) -> Self {
        Self {
            value,
            from: from.into(),
        }
    }
}

/// Resolved settings of an S3 store.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub bucket: String,
    pub folder: String,
    /// host[:port] (k3s style), or a URL. `None`: AWS.
    pub endpoint: Option<Sourced<String>>,
    /// CA bundles to trust: file paths or base64-encoded PEM.
    pub endpoint_ca: Option<Sourced<Vec<String>>>,
    pub skip_ssl_verify: bool,
    /// Plain HTTP.
    pub insecure: bool,
    pub region: Sourced<String>,
    /// `None`: requests are unsigned.
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
    pub lookup: Lookup,
    /// A proxy URL, or `none` (no proxy, whatever the environment says). `None`: HTTP(S)_PROXY / NO_PROXY.
    pub proxy: Option<Sourced<String>>,
}

impl S3Options {
    /// Defaults: AWS, us-east-1, no credentials, 5 minutes, automatic bucket lookup.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            folder: String::new(),
            endpoint: None,
            endpoint_ca: None,
            skip_ssl_verify: false,
            insecure: false,
            region: Sourced::new("us-east-1".into(), "the default"),
            credentials: None,
            timeout: Duration::from_secs(300),
            lookup: Lookup::Auto,
            proxy: None,
        }
    }
}

/// Static credentials and where they were found.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub key: String,
    pub secret: Secret,
    pub token: Option<Secret>,
    pub from: String,
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

/// A profile's credentials and region from the AWS shared files (`credentials`, then `config`), if the profile
/// exists in either. A profile that needs SSO, a credential process or a role is refused with what to run.
pub fn profile(
    name: &str,
    credentials_file: Option<&std::path::Path>,
    config_file: Option<&std::path::Path>,
) -> Result<(Option<Credentials>, Option<String>), Error> {
    let mut creds = None;
    let mut region = None;
    let config_section = if name == "default" {
        "default".to_owned()
    } else {
        format!("profile {name}")
    };
    for (file, section) in [(credentials_file, name.to_owned()), (config_file, config_section)] {
        let Some(file) = file else { continue };
        let Some(s) = profile_section(file, &section)? else {
            continue;
        };
        if region.is_none() {
            region = get(&s, "region");
        }
        if creds.is_some() {
            continue;
        }
        if let (Some(key), Some(secret)) = (get(&s, "aws_access_key_id"), get(&s, "aws_secret_access_key")) {
            creds = Some(Credentials {
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

/// Reads CA bundles given as file paths or base64-encoded PEM (k3s accepts both).
fn certificates(ca: &Sourced<Vec<String>>) -> Result<Vec<Certificate>, Error> {
    let mut out = Vec::new();
    let from = &ca.from;
    for entry in ca.value.iter().flat_map(|e| e.split_whitespace()) {
        let pem = match std::fs::read(entry) {
            Ok(bytes) => bytes,
            Err(_) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(entry).map_err(|_| {
                    Error::Config(format!(
                        "{from}: {entry:?} is neither a readable file nor base64-encoded PEM"
                    ))
                })?
            }
        };
        let certs = Certificate::from_pem_bundle(&pem).map_err(|e| Error::Config(format!("{from}: {entry:?}: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config(format!("{from}: {entry:?} holds no certificate")));
        }
        out.extend(certs);
    }
    Ok(out)
}

/// The endpoint URL and whether it is AWS.
fn endpoint_url(o: &S3Options) -> Result<(String, bool), Error> {
    let scheme = if o.insecure { "http" } else { "https" };
    if let Some(e) = &o.endpoint {
        crate::url::refuse_credentials(&e.value, &format!("the S3 endpoint from {}", e.from))?;
    }
    match o.endpoint.as_ref().map(|e| (e.value.clone(), e.from.as_str())) {
        None => Ok((format!("{scheme}://s3.amazonaws.com"), true)),
        Some((e, from)) if e.starts_with("http://") || e.starts_with("https://") => {
            if e.starts_with("http://") && !o.insecure {
                return Err(Error::Config(format!(
                    "endpoint {e} (from {from}) is plain HTTP: add --s3-insecure to allow it"
                )));
            }
            let aws = e.contains("amazonaws.com");
            Ok((e.trim_end_matches('/').to_owned(), aws))
        }
        Some((host, _)) => {
            let aws = host.ends_with("amazonaws.com");
            Ok((format!("{scheme}://{}", host.trim_end_matches('/')), aws))
        }
    }
}

/// The HTTP client's options: timeouts, plain HTTP, certificate checks, the proxy (`none`: none at all, not
/// even the environment's), the endpoint's CA bundle.
fn client_options(o: &S3Options) -> Result<ClientOptions, Error> {
    let mut client = ClientOptions::new()
        .with_timeout(o.timeout)
        .with_connect_timeout(o.timeout.min(Duration::from_secs(30)))
        .with_allow_http(o.insecure)
        .with_allow_invalid_certificates(o.skip_ssl_verify);
    match &o.proxy {
        Some(p) if p.value == "none" => {
            // A proxy that excludes every host (names, IPv4, IPv6): setting any proxy turns off the environment's (reqwest).
            client = client
                .with_proxy_url("http://127.0.0.1:9")
                .with_proxy_excludes("*,0.0.0.0/0,::/0");
        }
        Some(p) => {
            crate::url::refuse_credentials(&p.value, &format!("the S3 proxy (from {})", p.from))?;
            if !(p.value.starts_with("http://") || p.value.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "the S3 proxy (from {}) must be an http:// or https:// URL, or none",
                    p.from
                )));
            }
            client = client.with_proxy_url(&p.value);
        }
        None => {}
    }
    for cert in o
        .endpoint_ca
        .as_ref()
        .map(certificates)
        .transpose()?
        .unwrap_or_default()
    {
        client = client.with_root_certificate(cert);
    }
    Ok(client)
}

/// Builds the store. The returned description names bucket, folder, endpoint and credential source.
pub fn open(o: &S3Options) -> Result<ObjectSnapshotStore, Error> {
    if o.bucket.is_empty() {
        return Err(Error::Config(
            "an S3 remote needs a bucket (--s3-bucket, or s3://BUCKET/FOLDER)".into(),
        ));
    }
    let creds = &o.credentials;
    let region = &o.region.value;
    let (endpoint, aws) = endpoint_url(o)?;
    let virtual_hosted = match o.lookup {
        Lookup::Dns => true,
        Lookup::Path => false,
        Lookup::Auto => aws,
    };
    let client = client_options(o)?;
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
        .with_region(region)
        .with_client_options(client)
        .with_allow_http(o.insecure)
        .with_retry(retry)
        // Listing pages without the keys object_store cannot name (src/listing.rs).
        .with_http_connector(crate::listing::Connector)
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
        o.credentials = Some(Credentials {
            key: "k".into(),
            secret: Secret::new("hunter2-very-secret"),
            token: None,
            from: "test".into(),
        });
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn ca_must_be_a_file_or_base64_pem_and_errors_name_the_source() {
        let e = certificates(&Sourced::new(
            vec!["/nonexistent/ca.pem".into()],
            "remote \"team\" in config.toml",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("remote \"team\" in config.toml: "), "{e}");
        assert!(
            certificates(&Sourced::new(vec!["aGVsbG8=".into()], "--s3-endpoint-ca")).is_err(),
            "base64 of something that is no PEM"
        );
    }

    #[test]
    fn endpoints() {
        let mut o = S3Options::new("b");
        o.endpoint = Some(Sourced::new("127.0.0.1:9000".into(), "--s3-endpoint"));
        assert_eq!(endpoint_url(&o).unwrap().0, "https://127.0.0.1:9000");
        o.insecure = true;
        assert_eq!(endpoint_url(&o).unwrap().0, "http://127.0.0.1:9000");
        o.insecure = false;
        o.endpoint = Some(Sourced::new("http://127.0.0.1:9000".into(), "AWS_ENDPOINT_URL"));
        let e = endpoint_url(&o).unwrap_err().to_string();
        assert!(
            e.contains("(from AWS_ENDPOINT_URL)"),
            "plain http needs --s3-insecure: {e}"
        );
    }
}
