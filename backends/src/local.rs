//! The local store: `<root>/<cluster>/<snap>.tar.gz`, its `.sha256` sidecar and a `.metadata.json` copy of
//! the bundle's metadata (so listing never decompresses archives). Directories are 0700 and files 0600:
//! bundles contain the cluster's Secrets.
//!
//! A snapshot is visible once its `.tar.gz` exists; publishing writes metadata and sidecar first (each to a
//! temporary name, then renamed) and links the finished archive in last, never over an existing one.
//!
//! Hardening: every file is created with O_EXCL (which never follows a symlink) at a random temporary name,
//! 0600. An existing store or cluster directory with group or other permissions is tightened to 0700 if it is
//! ours and refused if it belongs to another user. The partial files of a killed create or pull are removed
//! by the next command on the cluster.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{ClusterName, Error, SnapshotName};

pub const BUNDLE_SUFFIX: &str = ".tar.gz";
pub const SIDECAR_SUFFIX: &str = ".tar.gz.sha256";
pub const METADATA_SUFFIX: &str = ".metadata.json";
/// The member index of a schema-2 bundle (see [`crate::members`]).
pub const INDEX_SUFFIX: &str = ".index.json";

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

/// Where one snapshot's files live.
#[derive(Debug, Clone)]
pub struct SnapshotPaths {
    pub bundle: PathBuf,
    pub sidecar: PathBuf,
    pub metadata: PathBuf,
    /// Present for schema-2 bundles.
    pub index: PathBuf,
}

/// A snapshot found in the store.
#[derive(Debug, Clone)]
pub struct LocalSnapshot {
    pub name: SnapshotName,
    pub paths: SnapshotPaths,
    pub size: u64,
    pub modified: SystemTime,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cluster_dir(&self, cluster: &ClusterName) -> PathBuf {
        self.root.join(cluster.as_str())
    }

    pub fn paths(&self, cluster: &ClusterName, name: &SnapshotName) -> SnapshotPaths {
        let dir = self.cluster_dir(cluster);
        SnapshotPaths {
            bundle: dir.join(format!("{name}{BUNDLE_SUFFIX}")),
            sidecar: dir.join(format!("{name}{SIDECAR_SUFFIX}")),
            metadata: dir.join(format!("{name}{METADATA_SUFFIX}")),
            index: dir.join(format!("{name}{INDEX_SUFFIX}")),
        }
    }

    /// Creates the store and cluster directories (0700) if needed, and removes what killed runs left.
    pub fn ensure_cluster_dir(&self, cluster: &ClusterName) -> Result<PathBuf, Error> {
        let dir = self.cluster_dir(cluster);
        create_private_dir(&self.root)?;
        create_private_dir(&dir)?;
        self.remove_leftovers(cluster);
        Ok(dir)
    }

    /// Removes partial bundles and restore staging directories whose process (named in their file name) no
    /// longer runs on this host.
    pub fn remove_leftovers(&self, cluster: &ClusterName) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let Ok(rd) = fs::read_dir(self.cluster_dir(cluster)) else {
            return removed;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = leftover_pid(&name) else { continue };
            if pid_alive(pid) {
                continue;
            }
            let p = entry.path();
            let gone = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&p).is_ok(),
                Ok(_) => fs::remove_file(&p).is_ok(),
                Err(_) => false,
            };
            if gone {
                removed.push(p);
            }
        }
        removed
    }

    /// Cluster directories present in the store.
    pub fn clusters(&self) -> Result<Vec<ClusterName>, Error> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("reading {}", self.root.display()), e)),
        };
        for entry in rd.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && let Some(c) = entry.file_name().to_str().and_then(|n| ClusterName::new(n).ok())
            {
                out.push(c);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Snapshots of `cluster`, in name order. Files that are not finished bundles are ignored.
    pub fn list(&self, cluster: &ClusterName) -> Result<Vec<LocalSnapshot>, Error> {
        let dir = self.cluster_dir(cluster);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(BUNDLE_SUFFIX)) else {
                continue;
            };
            let Ok(name) = SnapshotName::new(stem) else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            out.push(LocalSnapshot {
                paths: self.paths(cluster, &name),
                name,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<LocalSnapshot, Error> {
        let paths = self.paths(cluster, name);
        match fs::metadata(&paths.bundle) {
            Ok(meta) if meta.is_file() => Ok(LocalSnapshot {
                name: name.clone(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                paths,
            }),
            Ok(_) => Err(self.not_found(cluster, name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.not_found(cluster, name)),
            Err(e) => Err(Error::io(format!("reading {}", paths.bundle.display()), e)),
        }
    }

    /// A snapshot's member index, when it has a valid one that matches its bundle's size.
    pub fn index(&self, cluster: &ClusterName, name: &SnapshotName) -> Option<crate::BundleIndex> {
        let paths = self.paths(cluster, name);
        let meta = fs::symlink_metadata(&paths.index).ok()?;
        if !meta.is_file() || meta.len() > crate::SMALL_FILE_MAX {
            return None;
        }
        let index = crate::BundleIndex::parse(&fs::read(&paths.index).ok()?).ok()?;
        (fs::metadata(&paths.bundle).ok()?.len() == index.size).then_some(index)
    }

    /// The members every local bundle (of every cluster) holds: what a pull copies instead of downloading.
    pub fn members(&self) -> crate::LocalMembers {
        let mut out = crate::LocalMembers::new();
        for cluster in self.clusters().unwrap_or_default() {
            for snap in self.list(&cluster).unwrap_or_default() {
                if let Some(index) = self.index(&cluster, &snap.name) {
                    out.add(&snap.paths.bundle, &index);
                }
            }
        }
        out
    }

    pub fn exists(&self, cluster: &ClusterName, name: &SnapshotName) -> bool {
        self.paths(cluster, name).bundle.exists()
    }

    fn not_found(&self, cluster: &ClusterName, name: &SnapshotName) -> Error {
        Error::NotFound {
            cluster: cluster.to_string(),
            name: name.to_string(),
        }
    }

    /// A temporary path in the cluster directory for a bundle being written: random, and naming this process
    /// so that [`Self::remove_leftovers`] knows when it is abandoned. Hidden from [`Self::list`].
    pub fn staging_path(&self, cluster: &ClusterName, name: &SnapshotName) -> PathBuf {
        self.cluster_dir(cluster).join(format!(
            ".{name}{BUNDLE_SUFFIX}.partial-{}-{}",
            std::process::id(),
            nonce()
        ))
    }

    /// Makes a finished bundle visible as `name`. Its small files are written first under names that carry this
    /// process's pid (removed by [`Self::remove_leftovers`] if it dies), then the archive is linked in without
    /// replacing an existing snapshot, then the small files are renamed into place. A failure or a kill leaves no
    /// metadata or sidecar without its archive; at worst (killed between the link and the renames) an archive
    /// without its sidecar, which is listed as incomplete and deleted like any snapshot. `staged` is removed.
    pub fn publish(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        staged: &Path,
        sidecar: &str,
        metadata: &[u8],
        index: Option<&crate::BundleIndex>,
    ) -> Result<SnapshotPaths, Error> {
        let paths = self.paths(cluster, name);
        if paths.bundle.exists() {
            return Err(Error::AlreadyExists {
                cluster: cluster.to_string(),
                name: name.to_string(),
            });
        }
        let index_json = index.map(|i| i.to_json());
        let mut files: Vec<(&Path, &[u8])> = vec![(&paths.metadata, metadata), (&paths.sidecar, sidecar.as_bytes())];
        if let Some(json) = &index_json {
            files.push((&paths.index, json));
        }
        let mut pending = Vec::new();
        let written = (|| {
            for (path, bytes) in &files {
                pending.push((write_pending(path, bytes)?, path.to_path_buf()));
            }
            if index.is_none() {
                match fs::remove_file(&paths.index) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(format!("removing {}", paths.index.display()), e)),
                }
            }
            match fs::hard_link(staged, &paths.bundle) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
                    cluster: cluster.to_string(),
                    name: name.to_string(),
                }),
                Err(e) => Err(Error::io(format!("publishing {}", paths.bundle.display()), e)),
            }
        })();
        if let Err(e) = written {
            for (tmp, _) in &pending {
                let _ = fs::remove_file(tmp);
            }
            return Err(e);
        }
        for (tmp, path) in &pending {
            fs::rename(tmp, path).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        let _ = fs::remove_file(staged);
        sync_dir(&self.cluster_dir(cluster));
        Ok(paths)
    }

    /// Deletes a snapshot: the archive first (so it stops being listed), then its sidecar, metadata and index —
    /// also those an older version's interrupted publish left without an archive. Not found when none exists.
    pub fn delete(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<(), Error> {
        let paths = self.paths(cluster, name);
        let mut any = false;
        for p in [&paths.bundle, &paths.sidecar, &paths.metadata, &paths.index] {
            match fs::remove_file(p) {
                Ok(()) => any = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("deleting {}", p.display()), e)),
            }
        }
        if !any {
            return Err(self.not_found(cluster, name));
        }
        sync_dir(&self.cluster_dir(cluster));
        Ok(())
    }

    /// Whether any file of the snapshot is there (its archive, or what an interrupted publish left).
    pub fn has_files(&self, cluster: &ClusterName, name: &SnapshotName) -> bool {
        let paths = self.paths(cluster, name);
        [&paths.bundle, &paths.sidecar, &paths.metadata, &paths.index]
            .iter()
            .any(|p| fs::symlink_metadata(p).is_ok())
    }
}

/// The name prefix of a restore's staging directory in a cluster directory (a random suffix follows), naming
/// this process like [`LocalStore::staging_path`] does.
pub fn restore_staging_prefix() -> String {
    format!(".restore.partial-{}-", std::process::id())
}

/// The pid a leftover's name carries: `.<name>.tar.gz.partial-<pid>-<nonce>`, `.restore.partial-<pid>-<nonce>`.
fn leftover_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.split_once(".partial-")?.1;
    rest.split_once('-')?.0.parse().ok()
}

/// Whether a process with this pid runs on this host (a pid reused since is taken as alive: the safe side).
pub fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        match rustix::process::Pid::from_raw(pid as i32) {
            Some(p) => !matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH)),
            None => false,
        }
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// 16 random hex digits.
pub fn nonce() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (t as u64).to_le_bytes();
    }
    hex::encode(b)
}

/// Writes `bytes` to `path` through a new file at a random name in the same directory and a rename (0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = write_pending(path, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(())
}

/// Writes `bytes`, synced, to a new hidden file beside `path` whose name carries this process's pid
/// (`.<file>.partial-<pid>-<nonce>`, what [`LocalStore::remove_leftovers`] removes once the pid is gone); returns it.
fn write_pending(path: &Path, bytes: &[u8]) -> Result<PathBuf, Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.partial-{}-{}", std::process::id(), nonce()));
    let res = (|| {
        let mut f = create_private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(tmp)
}

/// Creates a new file, 0600, failing if anything exists at `path` — a symlink planted there included (O_EXCL
/// never follows one).
pub fn create_private_file(path: &Path) -> io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return check_private_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("setting permissions of {}", dir.display()), e))?;
    }
    Ok(())
}

/// An existing directory: ours and private, made private if it is ours, refused if it is someone else's.
fn check_private_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = fs::metadata(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::Config(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(Error::Config(format!(
                "{} belongs to uid {}, not to you (uid {me}): refusing to keep snapshots (they hold the \
                 cluster's Secrets) in another user's directory; use --dir or KUBECTL_SNAPSHOT_DIR",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("making {} private (0700)", dir.display()), e))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (ClusterName, SnapshotName) {
        (ClusterName::new("kind").unwrap(), SnapshotName::new("base").unwrap())
    }

    #[test]
    fn publish_list_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path().join("store"));
        let (c, n) = names();
        store.ensure_cluster_dir(&c).unwrap();
        let staged = store.staging_path(&c, &n);
        fs::write(&staged, b"bundle").unwrap();
        assert!(store.list(&c).unwrap().is_empty(), "staged bundles are not listed");
        store.publish(&c, &n, &staged, "x  base.tar.gz\n", b"{}", None).unwrap();
        assert!(!staged.exists());
        let listed = store.list(&c).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, 6);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&store.cluster_dir(&c)), 0o700);
            assert_eq!(mode(store.root()), 0o700);
            assert_eq!(mode(&listed[0].paths.sidecar), 0o600);
            assert_eq!(mode(&listed[0].paths.metadata), 0o600);
        }
        store.delete(&c, &n).unwrap();
        assert!(store.list(&c).unwrap().is_empty());
        assert!(!store.paths(&c, &n).sidecar.exists());
        assert!(matches!(store.delete(&c, &n), Err(Error::NotFound { .. })));
    }

    /// A publish that fails (here: the staged archive is gone) leaves no metadata, sidecar or index without an
    /// archive, and no temporary file; files an older version left that way are deleted with the snapshot.
    #[test]
    fn a_failed_publish_leaves_nothing_and_delete_removes_orphans() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        let (c, n) = names();
        store.ensure_cluster_dir(&c).unwrap();
        let index = crate::BundleIndex {
            index_version: crate::members::INDEX_VERSION,
            sha256: "ab".repeat(32),
            size: 1,
            members: vec![],
        };
        let missing = store.staging_path(&c, &n);
        store
            .publish(&c, &n, &missing, "x  base.tar.gz\n", b"{}", Some(&index))
            .expect_err("published an archive that is not there");
        let left: Vec<_> = fs::read_dir(store.cluster_dir(&c))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "a failed publish left {left:?}");
        assert!(!store.has_files(&c, &n));

        let paths = store.paths(&c, &n);
        fs::write(&paths.metadata, b"{}").unwrap();
        fs::write(&paths.sidecar, b"x  base.tar.gz\n").unwrap();
        assert!(store.has_files(&c, &n));
        store.delete(&c, &n).expect("deleting what an interrupted publish left");
        assert!(!paths.metadata.exists() && !paths.sidecar.exists());
    }

    #[test]
    fn temporary_files_name_their_process_and_go_when_it_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        let (c, n) = names();
        let dir = store.ensure_cluster_dir(&c).unwrap();
        let pending = write_pending(&store.paths(&c, &n).metadata, b"{}").unwrap();
        let file_name = pending.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(leftover_pid(&file_name), Some(std::process::id()), "{file_name}");
        assert!(
            store.remove_leftovers(&c).is_empty(),
            "a live process's file was removed"
        );
        // The same name with a pid no process has.
        let dead = dir.join(file_name.replace(&format!("-{}-", std::process::id()), &format!("-{}-", u32::MAX / 2)));
        fs::rename(&pending, &dead).unwrap();
        assert_eq!(store.remove_leftovers(&c), std::slice::from_ref(&dead));
        assert!(!dead.exists());
    }

    #[test]
    fn publish_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        let (c, n) = names();
        store.ensure_cluster_dir(&c).unwrap();
        for content in [&b"first"[..], b"second"] {
            let staged = store.staging_path(&c, &n);
            fs::write(&staged, content).unwrap();
            let res = store.publish(&c, &n, &staged, "x  y\n", b"{}", None);
            if content == b"second" {
                assert!(matches!(res, Err(Error::AlreadyExists { .. })));
            }
        }
        assert_eq!(fs::read(store.paths(&c, &n).bundle).unwrap(), b"first");
    }
}

#[cfg(test)]
mod hardening {
    use super::*;

    #[test]
    fn a_planted_symlink_is_never_followed_and_temp_names_are_random() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let planted = tmp.path().join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = create_private_file(&planted).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&victim).unwrap(), b"precious");

        let store = LocalStore::new(tmp.path());
        let (c, n) = (ClusterName::new("kind").unwrap(), SnapshotName::new("x").unwrap());
        assert_ne!(store.staging_path(&c, &n), store.staging_path(&c, &n));
        assert_eq!(leftover_pid(".x.tar.gz.partial-123-abcd"), Some(123));
        assert_eq!(leftover_pid(".restore.partial-77-ff"), Some(77));
        assert_eq!(leftover_pid("x.tar.gz"), None);
    }
}
