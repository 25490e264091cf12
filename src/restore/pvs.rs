//! PV restore: each local-path root is replaced, never merged — the live directory is removed and the staged
//! tar (validated when the bundle was read) is extracted by the node's runtime into the parent directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::bundle::PV_ROOTS;
use crate::cluster::Runtime;

use super::RestoreError;

pub async fn restore_node(
    rt: &Runtime,
    node: &str,
    staged: &BTreeMap<(String, String), PathBuf>,
) -> Result<usize, RestoreError> {
    let mut restored = 0;
    for root in PV_ROOTS {
        let key = (node.to_owned(), root.to_string());
        let tar = staged.get(&key);
        if tar.is_none() && !rt.path_exists(node, root).await? {
            continue;
        }
        rt.run(node, &["rm", "-rf", root]).await?;
        if let Some(tar) = tar {
            let parent = root
                .rsplit_once('/')
                .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
            let file = tokio::fs::File::open(tar)
                .await
                .map_err(|e| RestoreError::Invalid(format!("opening staged {}: {e}", tar.display())))?;
            rt.copy_in(node, parent, file).await?;
            restored += 1;
        }
    }
    Ok(restored)
}
