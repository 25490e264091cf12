//! PV restore: each local-path root is replaced, never merged. While the cluster still runs, the staged tar
//! (validated when the bundle was read) is extracted by the node's runtime into a staging directory beside
//! the root — same parent, so the same filesystem — and checked there. The switch (see
//! `cluster::journal`) then renames it in and the live root aside, so a failure at any point loses nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::bundle::PV_ROOTS;
use crate::cluster::journal::Switch;
use crate::cluster::{Runtime, node};

use super::RestoreError;

fn split(root: &str) -> (&str, &str) {
    match root.rsplit_once('/') {
        Some(("", base)) => ("/", base),
        Some((parent, base)) => (parent, base),
        None => ("/", root),
    }
}

/// The staging directory for `root`: a hidden sibling of it.
pub fn stage_dir(root: &str, id: &str) -> String {
    let (parent, _) = split(root);
    format!("{}/.kubectl-snapshot-stage-{id}", parent.trim_end_matches('/'))
}

/// The switches of one node: every root the snapshot or the node has.
pub async fn plan_volumes(
    rt: &Runtime,
    node_name: &str,
    staged: &BTreeMap<(String, String), PathBuf>,
    id: &str,
    stamp: &str,
) -> Result<Vec<Switch>, RestoreError> {
    let mut out = Vec::new();
    for root in PV_ROOTS {
        let in_bundle = staged.contains_key(&(node_name.to_owned(), root.to_string()));
        let had_live = rt.path_exists(node_name, root).await?;
        if !in_bundle && !had_live {
            continue;
        }
        let (_, base) = split(root);
        out.push(Switch {
            live: root.to_string(),
            staged: in_bundle.then(|| format!("{}/{base}", stage_dir(root, id))),
            aside: format!("{root}.old-{stamp}"),
            had_live,
            keep_live: None,
        });
    }
    Ok(out)
}

/// Extracts every root of this node the snapshot has into its staging directory, and checks that each
/// arrived whole. Returns how many roots were staged.
pub async fn stage(
    rt: &Runtime,
    node_name: &str,
    staged: &BTreeMap<(String, String), PathBuf>,
    switches: &[Switch],
    expected_files: &BTreeMap<(String, String), usize>,
) -> Result<usize, RestoreError> {
    let mut n = 0;
    for s in switches {
        let Some(target) = &s.staged else { continue };
        let key = (node_name.to_owned(), s.live.clone());
        let Some(tar) = staged.get(&key) else { continue };
        let (dir, _) = target.rsplit_once('/').unwrap_or(("/", target));
        node::mkdir_p(rt, node_name, dir).await?;
        let file = tokio::fs::File::open(tar).await.map_err(|cause| RestoreError::Io {
            what: format!("opening staged {}", tar.display()),
            cause,
        })?;
        rt.copy_in(node_name, dir, file).await?;
        let want = expected_files.get(&key).copied().unwrap_or(0);
        let got = if rt.path_exists(node_name, target).await? {
            node::count_files(rt, node_name, target).await?
        } else {
            0
        };
        if !rt.path_exists(node_name, target).await? || got < want {
            return Err(RestoreError::StagedIncompletely {
                node: node_name.to_owned(),
                live: s.live.clone(),
                dir: dir.to_owned(),
                got,
                want,
            });
        }
        n += 1;
    }
    Ok(n)
}
