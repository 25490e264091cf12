//! Which cluster a command means: the positional name, else `KIND_CLUSTER_NAME`, else the only one.

use super::ClusterError;

/// For commands that act on a live cluster: the chosen name must be one of `existing`.
pub fn resolve_live(explicit: Option<&str>, env: Option<&str>, existing: &[String]) -> Result<String, ClusterError> {
    if let Some(name) = explicit.or(env).filter(|s| !s.is_empty()) {
        return if existing.iter().any(|c| c == name) {
            Ok(name.to_owned())
        } else {
            Err(ClusterError::NotFound {
                name: name.to_owned(),
                existing: existing.to_vec(),
            })
        };
    }
    match existing {
        [] => Err(ClusterError::NoClusters),
        [one] => Ok(one.clone()),
        many => Err(ClusterError::Ambiguous(many.to_vec())),
    }
}

/// For commands that only read or change stored snapshots: a named cluster need not exist any more.
/// Unnamed, the only live cluster is chosen; with none live, the only cluster that has snapshots.
pub fn resolve_stored(
    explicit: Option<&str>,
    env: Option<&str>,
    live: &[String],
    stored: &[String],
) -> Result<String, ClusterError> {
    if let Some(name) = explicit.or(env).filter(|s| !s.is_empty()) {
        return Ok(name.to_owned());
    }
    match (live, stored) {
        ([one], _) => Ok(one.clone()),
        ([], [one]) => Ok(one.clone()),
        ([], []) => Err(ClusterError::NoClusters),
        ([], many) | (many, _) => Err(ClusterError::Ambiguous(many.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn positional_beats_env_beats_autodetect() {
        let live = v(&["a", "b"]);
        assert_eq!(resolve_live(Some("a"), Some("b"), &live).unwrap(), "a");
        assert_eq!(resolve_live(None, Some("b"), &live).unwrap(), "b");
        assert_eq!(resolve_live(None, None, &v(&["only"])).unwrap(), "only");
    }

    #[test]
    fn errors_name_what_exists() {
        let e = resolve_live(Some("x"), None, &v(&["a", "b"])).unwrap_err().to_string();
        assert!(e.contains("\"x\" not found") && e.contains("a, b"), "{e}");
        let e = resolve_live(None, None, &v(&["a", "b"])).unwrap_err().to_string();
        assert!(e.contains("several kind clusters found (a, b)"), "{e}");
        let e = resolve_live(None, None, &[]).unwrap_err().to_string();
        assert!(e.starts_with("no kind clusters found"), "{e}");
    }

    #[test]
    fn stored_commands_accept_gone_clusters() {
        assert_eq!(resolve_stored(Some("gone"), None, &[], &[]).unwrap(), "gone");
        assert_eq!(resolve_stored(None, None, &[], &v(&["old"])).unwrap(), "old");
        assert_eq!(
            resolve_stored(None, None, &v(&["live"]), &v(&["old", "x"])).unwrap(),
            "live"
        );
        assert!(resolve_stored(None, None, &[], &v(&["a", "b"])).is_err());
    }
}
