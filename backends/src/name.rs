//! Names that end up in paths, object keys and OCI tags.

use std::fmt;

use crate::Error;

/// A snapshot name: 1–128 characters of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
/// These are exactly the OCI tag rules, and such a name is safe as a file name and an S3 key segment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName(String);

/// A kind cluster name as used in paths: 1–63 characters of `[A-Za-z0-9_.-]`, starting with a letter, digit or
/// `_` (kind itself is stricter; this only keeps paths and keys safe).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterName(String);

fn check(what: &'static str, value: &str, max: usize, ok: impl Fn(char) -> bool) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidName {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("it is empty");
    }
    if value.chars().count() > max {
        return bad(if max == 128 {
            "it is longer than 128 characters"
        } else {
            "it is longer than 63 characters"
        });
    }
    let first = value.chars().next().unwrap_or('.');
    if !first.is_ascii_alphanumeric() && first != '_' {
        return bad("it must start with a letter, digit or '_'");
    }
    if !value.chars().all(ok) {
        return bad("only letters, digits, '.', '_' and '-' are allowed (no '/', no spaces)");
    }
    Ok(())
}

impl SnapshotName {
    pub fn new(value: &str) -> Result<Self, Error> {
        check("snapshot name", value, 128, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
        })?;
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ClusterName {
    pub fn new(value: &str) -> Result<Self, Error> {
        check("cluster name", value, 63, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
        })?;
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_oci_tag_shaped_names() {
        for ok in [
            "baseline",
            "snap-20260507-143022",
            "v1.2_3",
            "_x",
            "A",
            &"a".repeat(128),
        ] {
            SnapshotName::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn refuses_paths_and_odd_names() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            ".hidden",
            "-x",
            "x\n",
            "é",
            &"a".repeat(129),
        ] {
            assert!(SnapshotName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cluster_names() {
        ClusterName::new("kind").unwrap();
        ClusterName::new("my-cluster.2").unwrap();
        assert!(ClusterName::new("../etc").is_err());
        assert!(ClusterName::new(&"a".repeat(64)).is_err());
    }
}
