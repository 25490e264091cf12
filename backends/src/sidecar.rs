//! The `.sha256` sidecar (sha256sum format: `<64 hex>  <file name>`) and the digest it holds: parsed and
//! written here only, for the local store, every remote and the bundle reader.

use std::fmt;

/// The most a small file of a snapshot may hold (sidecar, metadata, manifest, index): whatever claims more is
/// refused before it is read.
pub const SMALL_FILE_MAX: u64 = 16 << 20;

/// A sha256 digest: 64 lowercase hex digits (no `sha256:` prefix; [`Sha256::prefixed`] adds it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(String);

impl Sha256 {
    /// Accepts 64 hex digits, in either case, with or without `sha256:`.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(hex.to_ascii_lowercase()))
    }

    pub fn hex(&self) -> &str {
        &self.0
    }

    /// `sha256:<hex>`, as OCI and the metadata write digests.
    pub fn prefixed(&self) -> String {
        format!("sha256:{}", self.0)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    pub sha256: Sha256,
    pub file_name: String,
}

impl Sidecar {
    pub fn new(sha256: Sha256, file_name: impl Into<String>) -> Self {
        Self {
            sha256,
            file_name: file_name.into(),
        }
    }

    /// Parses the first line; `Err` holds that line (shortened) for the message.
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = text.lines().next().unwrap_or("");
        let mut parts = line.splitn(2, char::is_whitespace);
        let digest = parts.next().unwrap_or("");
        let name = parts.next().unwrap_or("").trim_start().trim_start_matches('*');
        Sha256::parse(digest)
            .filter(|_| !digest.starts_with("sha256:"))
            .map(|sha256| Self::new(sha256, name))
            .ok_or_else(|| line.chars().take(80).collect())
    }

    /// Parses bytes (a sidecar fetched from a remote).
    pub fn parse_bytes(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes).ok().and_then(|t| Self::parse(t).ok())
    }

    /// The file's text: `<hex>  <file name>\n`, what `sha256sum -c` reads.
    pub fn line(&self) -> String {
        format!("{}  {}\n", self.sha256, self.file_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let hex = "ab".repeat(32);
        let s = Sidecar::new(Sha256::parse(&hex).unwrap(), "x.tar.gz");
        assert_eq!(s.line(), format!("{hex}  x.tar.gz\n"));
        assert_eq!(Sidecar::parse(&s.line()).unwrap(), s);
        assert_eq!(Sidecar::parse(&format!("{}  x.tar.gz", hex.to_uppercase())).unwrap(), s);
        assert_eq!(
            Sidecar::parse(&format!("{hex} *x.tar.gz")).unwrap(),
            s,
            "binary-mode marker"
        );
        for bad in ["", "zz  x", &format!("sha256:{hex}  x"), &hex[..63]] {
            assert!(Sidecar::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Sha256::parse(&format!("sha256:{hex}")).unwrap().prefixed(),
            format!("sha256:{hex}")
        );
    }
}
