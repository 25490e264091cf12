//! Reading bundles back: integrity against the sidecar, and metadata from inside the archive.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use super::metadata::Metadata;
use super::{BundleError, METADATA_ENTRY};

/// Integrity of a bundle against its `.sha256` sidecar.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The archive hashes to the sidecar's digest.
    Ok,
    /// Mismatch, or the archive or sidecar cannot be read.
    Corrupt,
    /// No sidecar: the bundle was never completed (or was copied without it).
    Incomplete,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Corrupt => "corrupt",
            Status::Incomplete => "incomplete",
        })
    }
}

/// Parses a sidecar in sha256sum format (`<64 hex>  <file name>`), returning the digest (hex).
pub fn parse_sidecar(text: &str) -> Result<String, BundleError> {
    backends::Sidecar::parse(text)
        .map(|s| s.sha256.to_string())
        .map_err(BundleError::BadSidecar)
}

/// The sidecar text for an archive named `file_name` whose sha256 (hex) is `sha256`.
pub fn sidecar_line(sha256: &str, file_name: &str) -> String {
    match backends::Sha256::parse(sha256) {
        Some(d) => backends::Sidecar::new(d, file_name).line(),
        // Only ever called with a digest this process computed.
        None => format!("{sha256}  {file_name}\n"),
    }
}

/// sha256 of a file, streamed.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks `bundle` against `sidecar`.
pub fn verify(bundle: &Path, sidecar: &Path) -> Status {
    let expected = match std::fs::read_to_string(sidecar) {
        Ok(text) => match parse_sidecar(&text) {
            Ok(hex) => hex,
            Err(_) => return Status::Corrupt,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Status::Incomplete,
        Err(_) => return Status::Corrupt,
    };
    match hash_file(bundle) {
        Ok(actual) if actual == expected => Status::Ok,
        _ => Status::Corrupt,
    }
}

/// The largest metadata.json accepted: it lists images and PV roots, never data.
const METADATA_MAX: u64 = backends::SMALL_FILE_MAX;

/// Reads `metadata.json` from inside a bundle (decompressing up to it). For bundles whose metadata copy is
/// missing; the store keeps one beside each bundle so listing does not decompress archives.
pub fn read_metadata(bundle: &Path) -> Result<Metadata, BundleError> {
    let f = File::open(bundle).map_err(|e| BundleError::io(format!("opening {}", bundle.display()), e))?;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::new(f)));
    let entries = archive.entries().map_err(BundleError::Source)?;
    for entry in entries {
        let mut entry = entry.map_err(BundleError::Source)?;
        let is_meta = entry
            .path()
            .map(|p| p.to_str() == Some(METADATA_ENTRY))
            .unwrap_or(false);
        if !is_meta {
            continue;
        }
        if entry.size() > METADATA_MAX {
            return Err(BundleError::BadMetadata(format!(
                "metadata.json is {} bytes",
                entry.size()
            )));
        }
        let mut buf = Vec::new();
        entry.read_to_end(&mut buf).map_err(BundleError::Source)?;
        return Metadata::from_json(&buf);
    }
    Err(BundleError::BadMetadata("the bundle has no metadata.json".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_parses_sha256sum_format() {
        let hex = "a".repeat(64);
        assert_eq!(parse_sidecar(&format!("{hex}  x.tar.gz\n")).unwrap(), hex);
        assert_eq!(parse_sidecar(&sidecar_line(&hex, "x.tar.gz")).unwrap(), hex);
        assert!(parse_sidecar("zz  x").is_err());
        assert!(parse_sidecar("").is_err());
    }
}
