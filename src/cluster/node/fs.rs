//! Files and directories: POSIX tools every kind node has (coreutils in kindest/node), and the archive API where
//! the node may be paused (it reads and writes a paused container's filesystem; exec cannot).

use super::*;

/// Reads a small file through the archive API, whatever the node's state (paused included). `None` if absent.
pub async fn read_small_file(
    rt: &Runtime,
    node: &str,
    path: &str,
    max: usize,
) -> Result<Option<Vec<u8>>, ClusterError> {
    if !rt.path_exists(node, path).await? {
        return Ok(None);
    }
    let mut tar = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(
        &mut tokio::io::AsyncReadExt::take(rt.copy_out(node, path), (max + 64 * 1024) as u64),
        &mut tar,
    )
    .await;
    let fail = |why: String| -> ClusterError {
        ExecError {
            node: node.into(),
            command: vec![format!("(archive API) read {path}")],
            code: None,
            stdout: String::new(),
            stderr: why,
        }
        .into()
    };
    if let Err(e) = read {
        // Removed between the check and the copy: absent.
        return if rt.path_exists(node, path).await? {
            Err(fail(e.to_string()))
        } else {
            Ok(None)
        };
    }
    let mut archive = tar::Archive::new(tar.as_slice());
    let entries = archive.entries().map_err(|e| fail(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail(e.to_string()))?;
        if entry.header().entry_type().is_file() {
            if entry.size() > max as u64 {
                return Err(fail(format!("{path} is larger than {max} bytes")));
            }
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut out).map_err(|e| fail(e.to_string()))?;
            return Ok(Some(out));
        }
    }
    Err(fail(format!("{path} is not a regular file")))
}

/// [`write_file`]'s script: `$1` the directory, `$2` a temporary name, `$3` the file; standard input the bytes.
pub(crate) const WRITE_FILE_SCRIPT: &str = r#"mkdir -p "$1" && cat > "$2" && mv -f "$2" "$3""#;

/// Writes a file in a running node atomically: written beside it, then renamed over it.
pub async fn write_file(rt: &Runtime, node: &str, path: &str, bytes: Vec<u8>) -> Result<(), ClusterError> {
    let dir = path
        .rsplit_once('/')
        .map_or("/", |(d, _)| if d.is_empty() { "/" } else { d });
    let script = WRITE_FILE_SCRIPT;
    // Run again, it writes the same bytes again, through a temp file of its own.
    idempotent(|| {
        let tmp = format!("{path}.tmp-{}", crate::util::nonce());
        let bytes = bytes.clone();
        async move {
            rt.run_with_stdin(
                node,
                &["sh", "-c", script, "sh", dir, &tmp, path],
                std::io::Cursor::new(bytes),
            )
            .await
            .map(|_| ())
        }
    })
    .await
}

/// Replaces a file through the archive API: works while the node is paused, but is not atomic (readers must
/// tolerate a missing or partial file for a moment).
pub async fn put_file(rt: &Runtime, node: &str, dir: &str, name: &str, bytes: Vec<u8>) -> Result<(), ClusterError> {
    let name = name.to_owned();
    let stream = crate::cluster::tar_stream(move |b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &name, bytes.as_slice())
    });
    rt.copy_in(node, dir, stream).await
}

/// [`create_dir_with_file`]'s script: `$1` the parent, `$2` the directory, `$3` a temporary name, `$4` the file;
/// exit 17 when the directory was there.
pub(crate) const CREATE_DIR_WITH_FILE_SCRIPT: &str = r#"mkdir -p "$1" || exit 1; mkdir "$2" 2>/dev/null || { [ -e "$2" ] && exit 17; mkdir "$2"; exit 1; }; cat > "$3" && mv -f "$3" "$4""#;

/// Creates directory `dir` (its parents as needed), failing if it exists, and writes `bytes` into `dir/name`
/// (temp file + rename), in one round trip. `Ok(false)`: `dir` already exists (nothing was written).
pub async fn create_dir_with_file(
    rt: &Runtime,
    node: &str,
    dir: &str,
    name: &str,
    bytes: Vec<u8>,
) -> Result<bool, ClusterError> {
    let parent = dir
        .rsplit_once('/')
        .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
    let tmp = format!("{dir}/.{name}.tmp");
    let file = format!("{dir}/{name}");
    // Exit 17 (EEXIST): the directory was there; any other failure is the command's error.
    let script = CREATE_DIR_WITH_FILE_SCRIPT;
    match rt
        .run_with_stdin(
            node,
            &["sh", "-c", script, "sh", parent, dir, &tmp, &file],
            std::io::Cursor::new(bytes),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(ClusterError::Exec(e)) if e.code == Some(17) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` (one `rename(2)`: both on the same filesystem). `-T`: never moves `from` *into* an
/// existing directory `to` (coreutils and busybox both refuse or replace only an empty one).
pub async fn rename(rt: &Runtime, node: &str, from: &str, to: &str) -> Result<(), ClusterError> {
    match rt.run(node, &["mv", "-T", from, to]).await {
        // The runtime lost its exit: the filesystem says what happened. `from` gone means renamed (under the
        // cluster's lock nothing else moves it); still there, not renamed, so it is run again.
        Err(ClusterError::LostExit { .. }) => {
            let argv = [
                "sh",
                "-c",
                r#"[ -e "$1" ] || [ -L "$1" ] && echo there || echo gone"#,
                "sh",
                from,
            ];
            match idempotent(|| rt.run(node, &argv)).await?.trim() {
                "gone" => Ok(()),
                _ => rt.run(node, &["mv", "-T", from, to]).await.map(|_| ()),
            }
        }
        done => done.map(|_| ()),
    }
}

/// `mkdir -p`.
pub async fn mkdir_p(rt: &Runtime, node: &str, path: &str) -> Result<(), ClusterError> {
    let argv = ["mkdir", "-p", path];
    idempotent(|| rt.run(node, &argv)).await.map(|_| ())
}

/// `rm -rf` of each path (absent paths are fine).
pub async fn remove_all(rt: &Runtime, node: &str, paths: &[&str]) -> Result<(), ClusterError> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut argv = vec!["rm", "-rf", "--"];
    argv.extend_from_slice(paths);
    idempotent(|| rt.run(node, &argv)).await.map(|_| ())
}

/// [`remove_all_then_owned`]'s script: `$1` the directory, `$2` its file, `$3` the token, then the paths.
pub(crate) const REMOVE_ALL_THEN_OWNED_SCRIPT: &str = r#"d=$1; f=$2; t=$3; shift 3; rm -rf -- "$@" || exit 1; if grep -qF -- "$t" "$d/$f" 2>/dev/null; then rm -rf -- "$d" "$d".stale-*; fi"#;

/// Removes `paths`, then directory `dir` if its file `file` contains `token` (an ownership check), in one
/// round trip.
pub async fn remove_all_then_owned(
    rt: &Runtime,
    node: &str,
    paths: &[&str],
    dir: &str,
    file: &str,
    token: &str,
) -> Result<(), ClusterError> {
    // Also the tombstones of locks taken over (see `take_over_lock`): a process that judged one of them dead
    // checks and renames in two statements of one script, microseconds apart, and the holder releasing has run
    // a whole operation since.
    let script = REMOVE_ALL_THEN_OWNED_SCRIPT;
    let mut argv = vec!["sh", "-c", script, "sh", dir, file, token];
    argv.extend_from_slice(paths);
    idempotent(|| rt.run(node, &argv)).await.map(|_| ())
}

/// Takes over the lock directory `lock` of a dead holder: renames it to a tombstone named after that holder
/// (`<lock>.stale-<id>`), or, when it never got a holder file (killed between creating it and describing
/// itself), after the directory itself (`<lock>.stale-ino<inode>`, once it is `min_age_secs` old). Tombstones
/// are kept for ten minutes: a rename onto an existing non-empty directory fails, so of all the processes that
/// judged the same lock dead, exactly one moves it, and none can move the live lock one of them took next.
/// `dead_token` is what only the dead holder's file contains (`None`: it had none); `Ok(false)`: `lock` is not
/// that lock any more, or another process took it over first.
pub async fn take_over_lock(
    rt: &Runtime,
    node: &str,
    lock: &str,
    holder_file: &str,
    dead: Option<(&str, &str)>,
    min_age_secs: u64,
) -> Result<bool, ClusterError> {
    let script = r#"l=$1; f=$2; t=$3; id=$4; age=$5
find "${l%/*}" -maxdepth 1 -name "${l##*/}.stale-*" -mmin +10 -exec rm -rf {} \; 2>/dev/null
if [ -n "$t" ]; then
  grep -qF -- "$t" "$l/$f" 2>/dev/null || exit 3
  dest="$l.stale-$id"
else
  [ -e "$l/$f" ] && exit 3
  i=$(stat -c %i "$l" 2>/dev/null) && m=$(stat -c %Y "$l") || exit 3
  [ $(( $(date +%s) - m )) -ge "$age" ] || exit 3
  dest="$l.stale-ino$i"
fi
mv -T "$l" "$dest" 2>/dev/null || exit 3"#;
    let (token, id) = dead.unwrap_or(("", ""));
    let id: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let age = min_age_secs.to_string();
    let argv = ["sh", "-c", script, "sh", lock, holder_file, token, &id, &age];
    match rt.run(node, &argv).await {
        Ok(_) => Ok(true),
        Err(ClusterError::Exec(e)) if e.code == Some(3) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes, beside each of `lives`, the copies earlier restores and rollbacks kept (`<live>.old-*`) but those
/// in `keep`, and what dead restores staged (`<live>.kubectl-snapshot-new-*`,
/// `<parent>/.kubectl-snapshot-stage-*`). Run under the cluster's lock, once a restore completed: nothing else
/// is using them. Returns what was removed.
pub async fn remove_stale_copies(
    rt: &Runtime,
    node: &str,
    lives: &[&str],
    keep: &[&str],
) -> Result<Vec<String>, ClusterError> {
    let script = r#"k='
'; while [ "$1" != "--" ]; do k="$k$1
"; shift; done; shift
for l; do
  for d in "$l".old-* "$l".kubectl-snapshot-new-* "${l%/*}"/.kubectl-snapshot-stage-*; do
    [ -e "$d" ] || continue
    case "$k" in *"
$d
"*) continue ;; esac
    rm -rf -- "$d" && echo "$d"
  done
done"#;
    let mut argv = vec!["sh", "-c", script, "sh"];
    argv.extend_from_slice(keep);
    argv.push("--");
    argv.extend_from_slice(lives);
    let out = idempotent(|| rt.run(node, &argv)).await?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// [`kept_copies`]'s script: the live paths as arguments; one `KiB path` line per copy.
pub(crate) const KEPT_COPIES_SCRIPT: &str = r#"for l; do
  for d in "$l".old-*; do
    [ -e "$d" ] || continue
    s=$(du -sk -- "$d" 2>/dev/null | cut -f1)
    echo "${s:-0} $d"
  done
done"#;

/// The copies a node keeps of each of `lives` (`<live>.old-*`: what restores and rollbacks moved aside), with
/// their size in bytes (`du -sk`, POSIX, as busybox and coreutils have it).
pub async fn kept_copies(rt: &Runtime, node: &str, lives: &[&str]) -> Result<Vec<(String, u64)>, ClusterError> {
    let mut argv = vec!["sh", "-c", KEPT_COPIES_SCRIPT, "sh"];
    argv.extend_from_slice(lives);
    let out = idempotent(|| rt.run(node, &argv)).await?;
    out.lines()
        .map(|l| {
            let (k, path) = l
                .split_once(' ')
                .ok_or_else(|| unreadable(node, &argv, &out, "no size"))?;
            let k: u64 = k.parse().map_err(|e| unreadable(node, &argv, &out, e))?;
            Ok((path.to_owned(), k.saturating_mul(1024)))
        })
        .collect()
}

/// Regular files under `path` (a name with a newline counts more than once, never less).
pub async fn count_files(rt: &Runtime, node: &str, path: &str) -> Result<usize, ClusterError> {
    let argv = ["sh", "-c", r#"find "$1" -type f | wc -l"#, "sh", path];
    let out = idempotent(|| rt.run(node, &argv)).await?;
    out.trim().parse().map_err(|e| unreadable(node, &argv, &out, e))
}
