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
    Ok(hash_file_and_members(path, None)?.0)
}

/// Checks `bundle` against `sidecar` and, when the store keeps a member index beside it (`index`: its path), the
/// index against both: its digest and size, and every member's bytes, in the same pass. An index that lies is
/// what a push would refuse and a pull would copy wrong members by: the snapshot is corrupt. The reason comes
/// with a status other than ok.
pub fn verify_with_index(bundle: &Path, sidecar: &Path, index: Option<&Path>) -> (Status, Option<String>) {
    let expected = match std::fs::read_to_string(sidecar) {
        Ok(text) => match parse_sidecar(&text) {
            Ok(hex) => hex,
            Err(e) => return (Status::Corrupt, Some(format!("its sidecar is malformed: {e}"))),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Status::Incomplete, Some("no sidecar".into())),
        Err(e) => return (Status::Corrupt, Some(format!("its sidecar cannot be read: {e}"))),
    };
    let index = match index.map(std::fs::read) {
        None => None,
        Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => None,
        Some(Err(e)) => return (Status::Corrupt, Some(format!("its member index cannot be read: {e}"))),
        Some(Ok(bytes)) => match backends::BundleIndex::parse(&bytes) {
            Ok(i) => Some(i),
            Err(e) => return (Status::Corrupt, Some(format!("its member index: {e}"))),
        },
    };
    let (actual, members) = match hash_file_and_members(bundle, index.as_ref()) {
        Ok(found) => found,
        Err(e) => return (Status::Corrupt, Some(format!("the archive cannot be read: {e}"))),
    };
    if actual != expected {
        return (
            Status::Corrupt,
            Some(format!("sha256 mismatch: sidecar={expected}, archive={actual}")),
        );
    }
    if let Some(index) = &index {
        if index.sha256 != expected {
            return (Status::Corrupt, Some("its member index names another archive".into()));
        }
        let lying = index.members.iter().zip(&members).position(|(m, got)| m.sha256 != *got);
        if members.len() != index.members.len() || lying.is_some() {
            return (
                Status::Corrupt,
                Some(format!(
                    "its member index does not describe the archive (member {} of {})",
                    lying.unwrap_or(members.len()),
                    index.members.len()
                )),
            );
        }
    }
    (Status::Ok, None)
}

/// sha256 of a file and of each member `index` declares in it, in one streamed pass. Members past the end of the
/// file are missing from the result.
fn hash_file_and_members(path: &Path, index: Option<&backends::BundleIndex>) -> io::Result<(String, Vec<String>)> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    if index.is_some_and(|i| i.size != size) {
        // The member boundaries would not fall where the index says: no member can match.
        return Ok((hash_file(path)?, Vec::new()));
    }
    let bounds: Vec<u64> = index.map_or_else(Vec::new, |i| i.members.iter().map(|m| m.offset + m.size).collect());
    let mut whole = Sha256::new();
    let mut member = Sha256::new();
    let mut members = Vec::with_capacity(bounds.len());
    let mut at = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let Some(end) = bounds.get(members.len()) else { break };
            let take = usize::try_from((end - at).min(chunk.len() as u64)).unwrap_or(chunk.len());
            member.update(&chunk[..take]);
            at += take as u64;
            chunk = &chunk[take..];
            if at == *end {
                members.push(hex::encode(std::mem::take(&mut member).finalize()));
            }
        }
    }
    Ok((hex::encode(whole.finalize()), members))
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
