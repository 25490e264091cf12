//! Remote URLs: where a remote is, in exactly one place.
//!
//! | form | remote |
//! |---|---|
//! | `s3://BUCKET[/FOLDER]` | S3 (options from flags, environment and the remote's config) |
//! | `file:///PATH`, `/PATH`, `./PATH` | a directory (e.g. a shared mount) |
//! | `oci://REGISTRY/REPOSITORY` | an OCI registry |

use std::path::PathBuf;

use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    S3 { bucket: String, folder: String },
    Dir(PathBuf),
    Oci(String),
}

/// Refuses a URL or host that carries credentials (`user:password@host`): they would be stored in the config
/// file, shown in `ps`, logs and errors. The error shows the value with the credentials removed.
pub fn refuse_credentials(value: &str, what: &str) -> Result<(), Error> {
    let after_scheme = value.split_once("://").map_or(value, |(_, r)| r);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((_, host)) = authority.rsplit_once('@') {
        let shown = value.replacen(&authority[..authority.len() - host.len()], "", 1);
        return Err(Error::Config(format!(
            "{what} {shown:?} had credentials before '@': they are never stored or printed; pass them with \
             the credential flags (--s3-access-key with --s3-secret-key-stdin, --oci-username with \
             --oci-password-stdin) or the environment"
        )));
    }
    Ok(())
}

impl RemoteUrl {
    pub fn parse(s: &str) -> Result<Self, Error> {
        refuse_credentials(s, "remote URL")?;
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, folder) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Config(format!(
                    "{s:?}: an s3:// URL needs a bucket: s3://BUCKET/FOLDER"
                )));
            }
            return Ok(RemoteUrl::S3 {
                bucket: bucket.to_owned(),
                folder: folder.trim_matches('/').to_owned(),
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::Config(format!(
                    "{s:?}: a file:// URL needs an absolute path (file:///PATH)"
                )));
            }
            return Ok(RemoteUrl::Dir(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("oci://") {
            return Ok(RemoteUrl::Oci(rest.to_owned()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(Error::Config(format!(
                "unsupported remote scheme {scheme:?} in {s:?}: use s3://, oci://, file:// or a path"
            )));
        }
        if s.is_empty() {
            return Err(Error::Config("empty remote URL".into()));
        }
        Ok(RemoteUrl::Dir(PathBuf::from(s)))
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteUrl::S3 { bucket, folder } if folder.is_empty() => write!(f, "s3://{bucket}"),
            RemoteUrl::S3 { bucket, folder } => write!(f, "s3://{bucket}/{folder}"),
            RemoteUrl::Dir(p) => write!(f, "{}", p.display()),
            RemoteUrl::Oci(r) => write!(f, "oci://{r}"),
        }
    }
}

/// A directory remote.
pub fn open_dir(path: &std::path::Path) -> Result<crate::ObjectSnapshotStore, Error> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(crate::ObjectSnapshotStore::new(
        std::sync::Arc::new(fs),
        "",
        path.display().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_urls_are_refused_without_being_echoed() {
        for u in [
            "oci://bob:hunter2@registry.lan/team",
            "s3://key:hunter2@bucket/x",
            "https://bob:hunter2@minio:9000",
        ] {
            let e = super::refuse_credentials(u, "remote URL").unwrap_err().to_string();
            assert!(!e.contains("hunter2") && !e.contains("bob"), "{e}");
        }
        assert!(super::refuse_credentials("oci://registry.lan/team@sha256:abc", "remote URL").is_ok());
        assert!(super::refuse_credentials("minio.lan:9000", "endpoint").is_ok());
    }

    use super::*;

    #[test]
    fn parses_each_form() {
        assert_eq!(
            RemoteUrl::parse("s3://b/team/x/").unwrap(),
            RemoteUrl::S3 {
                bucket: "b".into(),
                folder: "team/x".into()
            }
        );
        assert_eq!(
            RemoteUrl::parse("s3://b").unwrap(),
            RemoteUrl::S3 {
                bucket: "b".into(),
                folder: "".into()
            }
        );
        assert_eq!(
            RemoteUrl::parse("file:///mnt/share").unwrap(),
            RemoteUrl::Dir("/mnt/share".into())
        );
        assert_eq!(RemoteUrl::parse("./rel").unwrap(), RemoteUrl::Dir("./rel".into()));
        assert_eq!(
            RemoteUrl::parse("oci://ghcr.io/a/b").unwrap(),
            RemoteUrl::Oci("ghcr.io/a/b".into())
        );
        for bad in ["s3://", "file://rel", "ftp://x", ""] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
