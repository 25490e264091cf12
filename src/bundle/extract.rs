//! Reading a bundle for restore, in one streaming pass: the archive is hashed against its sidecar while it is
//! decompressed, every entry is validated, and — when a staging directory is given — what restore needs is
//! written there. A bundle may come from a shared bucket: it is untrusted input.
//!
//! Nothing is ever extracted by the names inside the archive. Staging holds only files whose names this
//! module makes: `etcd.db`, `blobs/<hex>` (content-checked against the hex), `index-<n>.json` and one tar per
//! PV root (`pv-<n>.tar`), which re-packs that root's validated entries for the node's runtime to extract.
//! Refused: absolute paths, `..`, entries outside the known layout, device nodes and other special files,
//! symlinks that are absolute or leave their volume, hardlinks to anything but an earlier file of the same
//! volume, entries below a symlink, duplicate names, absurd sizes, malformed or foreign metadata.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use super::metadata::Metadata;
use super::{ETCD_ENTRY, IMAGE_BLOBS_DIR, Layout, PV_ROOTS, PVS_DIR, reader};

/// No single entry may claim more than this (1 TiB): a header saying otherwise is hostile or broken.
pub const MAX_ENTRY: u64 = 1 << 40;
/// JSON documents (metadata, image indexes) are small; larger ones are refused before being read.
pub const MAX_JSON: u64 = backends::SMALL_FILE_MAX;
const MAX_PROBLEMS: usize = 20;

/// What restore needs, on the host, after a successful pass.
#[derive(Debug)]
pub struct Staged {
    pub dir: PathBuf,
    pub etcd: PathBuf,
    pub blobs: PathBuf,
    /// node → its image index (OCI index JSON).
    pub node_index: BTreeMap<String, PathBuf>,
    /// (node, PV root inside the node) → tar of the root's entries, named `<basename>/...`.
    pub pvs: BTreeMap<(String, String), PathBuf>,
    /// (node, PV root) → how many regular files its tar holds (checked again once extracted in the node).
    pub pv_files: BTreeMap<(String, String), usize>,
}

#[derive(Debug, Default)]
pub struct Inspection {
    /// sha256 of the archive as read.
    pub sha256: String,
    /// What is wrong with the archive as a whole against its sidecar (missing, malformed, mismatch).
    pub integrity: Vec<String>,
    /// What is wrong with its contents; with `integrity`, empty means it is intact and safe.
    pub problems: Vec<String>,
    pub integrity_ok: bool,
    pub metadata: Option<Metadata>,
    /// Bytes of data in the archive's entries.
    pub uncompressed: u64,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Splits and checks a bundle path: relative, normal components only, UTF-8.
fn components(path: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_str().ok_or("the name is not UTF-8")?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err("it contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("it is an absolute path".into()),
        }
    }
    if out.is_empty() {
        return Err("it is empty".into());
    }
    Ok(out)
}

/// How many symlinks one resolution may follow (Linux's limit, MAXSYMLINKS).
const MAX_LINKS_FOLLOWED: usize = 40;

/// Resolves a relative symlink target against the link's directory (both relative to the PV root) as the kernel
/// would, following the volume's other symlinks (`links`: path -> target) met on the way; `None` if it would
/// leave the root at any step or loop. `a/l -> ..` with `a/m -> l/../..` leaves it, though the text of `m`'s
/// target does not.
fn resolve_within(links: &BTreeMap<String, String>, link_dir: &[String], target: &str) -> Option<Vec<String>> {
    let mut budget = MAX_LINKS_FOLLOWED;
    resolve_from(links, link_dir.to_vec(), target, &mut budget)
}

fn resolve_from(
    links: &BTreeMap<String, String>,
    mut at: Vec<String>,
    target: &str,
    budget: &mut usize,
) -> Option<Vec<String>> {
    if target.starts_with('/') {
        return None;
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                at.pop()?;
            }
            p => {
                at.push(p.to_owned());
                if let Some(next) = links.get(&at.join("/")) {
                    *budget = budget.checked_sub(1)?;
                    at.pop();
                    at = resolve_from(links, at, next, budget)?;
                }
            }
        }
    }
    Some(at)
}

struct PvRoot {
    tar: Option<tar::Builder<File>>,
    path: Option<PathBuf>,
    base: String,
    files: HashSet<String>,
    /// Symlinks so far: path (relative to the root) -> target.
    symlinks: BTreeMap<String, String>,
}

struct Pass {
    stage: Option<Staged>,
    writing: bool,
    problems: Vec<String>,
    seen: HashSet<String>,
    blobs: HashMap<String, u64>,
    etcd_digest: Option<String>,
    metadata_raw: Option<Vec<u8>>,
    nodes_seen: HashSet<String>,
    roots: BTreeMap<(String, String), PvRoot>,
    uncompressed: u64,
    budget: u64,
    limits: Option<Limits>,
    pv_bytes: u64,
    blob_bytes: u64,
}

/// The sizes a snapshot's metadata declares, enforced as hard limits while its bundle is read: a bundle that
/// holds more than it declares (a decompression bomb) is refused as soon as it does, and staging stops.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub etcd: u64,
    pub pvs: u64,
    pub images: u64,
}

impl Limits {
    pub fn declared(m: &Metadata) -> Self {
        Self {
            etcd: m.etcd.size,
            pvs: m.pvs.size,
            images: m.images.size,
        }
    }
}

/// The longest name of one path component a node's filesystem takes (NAME_MAX on ext4, xfs, overlayfs).
const NAME_MAX: usize = 255;
/// The longest in-node path accepted: PATH_MAX (4096) less room for the volume root and staging prefix.
const PATH_MAX: usize = 3800;

impl Staged {
    /// Staging in `dir`, nothing in it yet: the names this module makes for etcd and the blobs.
    fn empty(dir: &Path) -> Self {
        Staged {
            dir: dir.to_owned(),
            etcd: dir.join("etcd.db"),
            blobs: dir.join("blobs"),
            node_index: BTreeMap::new(),
            pvs: BTreeMap::new(),
            pv_files: BTreeMap::new(),
        }
    }
}

impl Pass {
    fn new(stage: Option<Staged>, budget: u64, limits: Option<Limits>) -> Self {
        Pass {
            writing: stage.is_some(),
            stage,
            problems: Vec::new(),
            seen: HashSet::new(),
            blobs: HashMap::new(),
            etcd_digest: None,
            metadata_raw: None,
            nodes_seen: HashSet::new(),
            roots: BTreeMap::new(),
            uncompressed: 0,
            budget,
            limits,
            pv_bytes: 0,
            blob_bytes: 0,
        }
    }

    /// The bundle's metadata, checked against what the pass saw; `None` (a problem said) when it is missing,
    /// malformed or foreign.
    fn metadata(&mut self) -> Option<Metadata> {
        let Some(raw) = self.metadata_raw.take() else {
            self.problem("bundle has no metadata.json".into());
            return None;
        };
        match Metadata::from_json(&raw) {
            Err(e) => {
                self.problem(e.to_string());
                None
            }
            Ok(m) => {
                check_consistency(&m, self);
                Some(m)
            }
        }
    }

    /// Where to write, unless staging stopped (or was never asked for).
    fn st(&self) -> Option<&Staged> {
        if self.writing { self.stage.as_ref() } else { None }
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> io::Result<()> {
        let raw_path = e.path()?.into_owned();
        let parts = match components(&raw_path) {
            Ok(p) => p,
            Err(why) => {
                self.problem(format!("unsafe entry {:?}: {why}", raw_path.display().to_string()));
                return Ok(());
            }
        };
        let joined = parts.join("/");
        let (kind, size) = (e.header().entry_type(), e.size());
        if !self.admit(&parts, &joined, size)? {
            return Ok(());
        }
        let p: Vec<&str> = parts.iter().map(String::as_str).collect();
        match Layout::of(&p, kind) {
            Layout::Metadata => {
                if let Some(buf) = self.read_json(&mut e, &joined, size)? {
                    self.metadata_raw = Some(buf);
                }
            }
            Layout::Etcd => {
                let mut h = Sha256::new();
                let mut out = match self.st() {
                    Some(s) => Some(create_new(&s.etcd)?),
                    None => None,
                };
                copy_hashed(&mut e, &mut h, out.as_mut())?;
                self.etcd_digest = Some(format!("sha256:{}", hex::encode(h.finalize())));
            }
            Layout::Blob { hex } => self.blob(e, &joined, hex, size)?,
            Layout::NodeIndex { node } => {
                self.nodes_seen.insert(node.to_owned());
                let Some(buf) = self.read_json(&mut e, &joined, size)? else {
                    return Ok(());
                };
                if serde_json::from_slice::<serde_json::Value>(&buf).is_err() {
                    self.problem(format!("{joined:?} is not JSON"));
                    return Ok(());
                }
                if let Some(s) = self.st() {
                    let path = s.dir.join(format!("index-{node}.json"));
                    create_new(&path)?.write_all(&buf)?;
                }
            }
            Layout::Pv { node, root, rest } => {
                self.nodes_seen.insert(node.to_owned());
                self.pv_entry(&joined, node.to_owned(), root.to_owned(), rest, e, kind)?;
            }
            Layout::Dir => {}
            Layout::Unknown => self.problem(format!("unexpected entry {joined:?} ({kind:?})")),
        }
        Ok(())
    }

    /// Whether an entry may be read at all: a new name, a sane size and name lengths, within what the
    /// metadata declares (an error: nothing more is read) and, for staging, within the budget.
    fn admit(&mut self, parts: &[String], joined: &str, size: u64) -> io::Result<bool> {
        if !self.seen.insert(joined.to_owned()) {
            self.problem(format!("duplicate entry {joined:?}"));
            return Ok(false);
        }
        if size > MAX_ENTRY {
            self.problem(format!("entry {joined:?} claims an absurd size ({size} bytes)"));
            return Ok(false);
        }
        if let Some(long) = parts.iter().find(|c| c.len() > NAME_MAX) {
            let head: String = long.chars().take(40).collect();
            self.problem(format!(
                "entry name {head:?}… is {} bytes long: a node's filesystem takes at most {NAME_MAX}",
                long.len()
            ));
            return Ok(false);
        }
        if joined.len() > PATH_MAX {
            self.problem(format!(
                "entry path of {} bytes: longer than a node can create ({PATH_MAX})",
                joined.len()
            ));
            return Ok(false);
        }
        self.within_declared(parts, joined, size)?;
        self.uncompressed += size;
        if self.writing && self.uncompressed > self.budget {
            self.problem(format!(
                "the bundle holds more data than the {} bytes free for staging it",
                self.budget
            ));
            self.writing = false;
        }
        Ok(true)
    }

    /// Counts the entry against the sizes the metadata declares; more than declared stops the pass.
    fn within_declared(&mut self, parts: &[String], joined: &str, size: u64) -> io::Result<()> {
        let Some(l) = self.limits else {
            return Ok(());
        };
        let (what, used, limit) = match parts.first().map(String::as_str) {
            Some(PVS_DIR) => {
                self.pv_bytes += size;
                ("volume data", self.pv_bytes, l.pvs)
            }
            Some(_) if joined.starts_with(&format!("{IMAGE_BLOBS_DIR}/")) => {
                self.blob_bytes += size;
                ("image data", self.blob_bytes, l.images)
            }
            _ if joined == ETCD_ENTRY => ("etcd data", size, l.etcd),
            _ => return Ok(()),
        };
        if used > limit {
            self.problem(format!(
                "the bundle holds more {what} than its metadata declares ({limit} bytes): refused, nothing more was staged"
            ));
            self.writing = false;
            return Err(io::Error::other("a declared size was exceeded"));
        }
        Ok(())
    }

    /// A small JSON document's bytes; `None` (a problem said) when it declares more than one may be.
    fn read_json(&mut self, e: &mut impl Read, joined: &str, size: u64) -> io::Result<Option<Vec<u8>>> {
        if size > MAX_JSON {
            self.problem(format!("{joined:?} is {size} bytes"));
            return Ok(None);
        }
        let mut buf = Vec::new();
        e.read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// An image blob, staged under its hex name once its content is checked against it.
    fn blob(&mut self, mut e: impl Read, joined: &str, hex: &str, size: u64) -> io::Result<()> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            self.problem(format!("unexpected entry {joined:?}: not a sha256 blob name"));
            return Ok(());
        }
        let mut h = Sha256::new();
        let target = self.st().map(|s| s.blobs.join(hex));
        let mut out = match &target {
            Some(t) => Some(create_new(t)?),
            None => None,
        };
        copy_hashed(&mut e, &mut h, out.as_mut())?;
        if hex::encode(h.finalize()) != *hex {
            self.problem(format!("image blob {joined:?} does not match its digest"));
            if let Some(t) = target {
                let _ = fs::remove_file(t);
            }
            return Ok(());
        }
        self.blobs.insert(hex.to_owned(), size);
        Ok(())
    }

    fn pv_entry<R: Read>(
        &mut self,
        joined: &str,
        node: String,
        root: String,
        rest: &[&str],
        mut e: tar::Entry<'_, R>,
        kind: tar::EntryType,
    ) -> io::Result<()> {
        let key = (node, root);
        if !self.roots.contains_key(&key) {
            let root = self.new_root(&key.1)?;
            self.roots.insert(key.clone(), root);
        }
        let rel = rest.join("/");
        let pv = self.roots.get_mut(&key).expect("inserted above");
        if pv.symlinks.keys().any(|l| rel.starts_with(&format!("{l}/"))) {
            let msg = format!("unsafe entry {joined:?}: it lies below a symlink");
            self.problem(msg);
            return Ok(());
        }
        let name = if rel.is_empty() {
            pv.base.clone()
        } else {
            format!("{}/{rel}", pv.base)
        };
        let mut header = tar::Header::new_gnu();
        {
            let src = e.header();
            header.set_mode(src.mode().unwrap_or(0o644) & 0o7777);
            header.set_uid(src.uid().unwrap_or(0));
            header.set_gid(src.gid().unwrap_or(0));
            header.set_mtime(src.mtime().unwrap_or(0));
        }
        let entry = PvEntry {
            joined,
            rel: &rel,
            rest,
            name: &name,
        };
        let refused = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                pv.files.insert(rel.clone());
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(e.size());
                match pv.tar.as_mut() {
                    Some(t) => t.append_data(&mut header, &name, &mut e)?,
                    None => {
                        io::copy(&mut e, &mut io::sink())?;
                    }
                }
                None
            }
            tar::EntryType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                if let Some(t) = pv.tar.as_mut() {
                    t.append_data(&mut header, &name, io::empty())?;
                }
                None
            }
            tar::EntryType::Symlink => pv.symlink(&entry, &mut header, &link_target(&e)?)?,
            tar::EntryType::Link => {
                let prefix = format!("{PVS_DIR}/{}{}/", key.0, key.1);
                pv.hardlink(&entry, &mut header, &link_target(&e)?, &prefix)?
            }
            other => Some(format!("unsafe entry {joined:?}: special file ({other:?})")),
        };
        if let Some(msg) = refused {
            self.problem(msg);
        }
        Ok(())
    }

    /// A volume root's first entry: its re-packed tar is begun in staging.
    fn new_root(&self, root: &str) -> io::Result<PvRoot> {
        let (tar, path) = match self.st() {
            Some(s) => {
                let path = s.dir.join(format!("pv-{}.tar", self.roots.len()));
                (Some(tar::Builder::new(create_new(&path)?)), Some(path))
            }
            None => (None, None),
        };
        Ok(PvRoot {
            tar,
            path,
            base: root.rsplit('/').next().unwrap_or_default().to_owned(),
            files: HashSet::new(),
            symlinks: BTreeMap::new(),
        })
    }
}

/// A link entry's target, as text.
fn link_target<R: Read>(e: &tar::Entry<'_, R>) -> io::Result<String> {
    Ok(e.link_name()?
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// One entry of a volume root: its archive path, its path relative to the root (as text and components),
/// and the name it gets in the re-packed tar.
struct PvEntry<'a> {
    joined: &'a str,
    rel: &'a str,
    rest: &'a [&'a str],
    name: &'a str,
}

impl PvRoot {
    /// A symlink, kept when what it points to (through earlier links) stays inside the volume; else the
    /// problem.
    fn symlink(&mut self, e: &PvEntry<'_>, header: &mut tar::Header, target: &str) -> io::Result<Option<String>> {
        let dir: Vec<String> = e.rest[..e.rest.len().saturating_sub(1)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if e.rest.is_empty() || resolve_within(&self.symlinks, &dir, target).is_none() {
            let joined = e.joined;
            return Ok(Some(format!(
                "unsafe symlink {joined:?} -> {target:?}: it points outside its volume"
            )));
        }
        self.symlinks.insert(e.rel.to_owned(), target.to_owned());
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        if let Some(t) = self.tar.as_mut() {
            t.append_link(header, e.name, target)?;
        }
        Ok(None)
    }

    /// A hardlink, kept when it names an earlier file of the same volume (`prefix`: the volume's path in the
    /// archive); else the problem.
    fn hardlink(
        &mut self,
        e: &PvEntry<'_>,
        header: &mut tar::Header,
        target: &str,
        prefix: &str,
    ) -> io::Result<Option<String>> {
        let within = target.strip_prefix(prefix).filter(|t| self.files.contains(*t));
        let Some(t_rel) = within else {
            let joined = e.joined;
            return Ok(Some(format!(
                "unsafe hardlink {joined:?} -> {target:?}: not an earlier file of the same volume"
            )));
        };
        header.set_entry_type(tar::EntryType::Link);
        header.set_size(0);
        let linked = format!("{}/{t_rel}", self.base);
        if let Some(t) = self.tar.as_mut() {
            t.append_link(header, e.name, linked)?;
        }
        Ok(None)
    }
}

fn create_new(path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }
    #[cfg(not(unix))]
    {
        fs::OpenOptions::new().write(true).create_new(true).open(path)
    }
}

fn copy_hashed(src: &mut impl Read, h: &mut Sha256, mut out: Option<&mut File>) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
        if let Some(o) = out.as_deref_mut() {
            o.write_all(&buf[..n])?;
        }
    }
}

/// Reads `bundle` once: integrity against `sidecar`, safety and consistency of every entry, and — with
/// `stage` — staging into that (new, empty) directory, using at most `budget` bytes.
pub fn inspect(
    bundle: &Path,
    sidecar: &Path,
    stage: Option<&Path>,
    budget: u64,
    limits: Option<Limits>,
) -> (Inspection, Option<Staged>) {
    let mut insp = Inspection::default();
    let expected = read_sidecar(sidecar, &mut insp.integrity);
    let staged = stage.map(Staged::empty);
    if let Some(s) = &staged
        && let Err(e) = fs::create_dir_all(&s.blobs)
    {
        insp.problems
            .push(format!("cannot create the staging directory {}: {e}", s.dir.display()));
        return (insp, None);
    }
    let file = match File::open(bundle) {
        Ok(f) => f,
        Err(e) => {
            insp.problems.push(format!("cannot open {}: {e}", bundle.display()));
            return (insp, None);
        }
    };
    let mut hashing = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let mut pass = Pass::new(staged, budget, limits);
    let read: io::Result<()> = (|| {
        let mut archive = tar::Archive::new(MultiGzDecoder::new(&mut hashing));
        for entry in archive.entries()? {
            pass.entry(entry?)?;
        }
        Ok(())
    })();
    if let Err(e) = read {
        pass.problem(format!("bundle is unreadable: {e}"));
    }
    // Hash whatever follows the end of the archive too: the sidecar covers the whole file.
    let _ = io::copy(&mut hashing, &mut io::sink());
    insp.sha256 = hex::encode(hashing.hasher.finalize());
    match &expected {
        Some(e) if *e == insp.sha256 => insp.integrity_ok = true,
        Some(e) => insp
            .integrity
            .push(format!("bundle sha256 mismatch: sidecar={e}, archive={}", insp.sha256)),
        None => {}
    }
    let staged = pass.finish_staging();
    insp.uncompressed = pass.uncompressed;
    insp.metadata = pass.metadata();
    insp.problems.extend(pass.problems);
    if !insp.problems.is_empty() || !insp.integrity.is_empty() {
        return (insp, None);
    }
    (insp, staged)
}

/// The digest the sidecar names; what is wrong with it goes to `integrity`.
fn read_sidecar(sidecar: &Path, integrity: &mut Vec<String>) -> Option<String> {
    match fs::read_to_string(sidecar) {
        Ok(t) => match reader::parse_sidecar(&t) {
            Ok(h) => Some(h),
            Err(e) => {
                integrity.push(format!("bundle sidecar {} is malformed: {e}", sidecar.display()));
                None
            }
        },
        Err(_) => {
            integrity.push(format!(
                "bundle is incomplete: its sidecar {} is missing",
                sidecar.display()
            ));
            None
        }
    }
}

impl Pass {
    /// Closes every volume's re-packed tar and hands over what was staged.
    fn finish_staging(&mut self) -> Option<Staged> {
        let mut staged = self.stage.take();
        for (key, mut root) in std::mem::take(&mut self.roots) {
            // A link added later changes where an earlier one leads: every link is resolved again, with all.
            for (rel, target) in &root.symlinks {
                let mut dir: Vec<String> = rel.split('/').map(str::to_owned).collect();
                dir.pop();
                if resolve_within(&root.symlinks, &dir, target).is_none() {
                    let (node, pv_root) = &key;
                    self.problem(format!(
                        "unsafe symlink {PVS_DIR}/{node}{pv_root}/{rel} -> {target:?}: through the volume's other \
                         links it points outside its volume"
                    ));
                }
            }
            if let Some(t) = root.tar.take() {
                if let Err(e) = t.into_inner().and_then(|f| f.sync_all()) {
                    self.problem(format!("staging PV data: {e}"));
                }
                if let (Some(s), Some(path)) = (staged.as_mut(), root.path) {
                    s.pvs.insert(key.clone(), path);
                    s.pv_files.insert(key.clone(), root.files.len());
                }
            }
        }
        if let Some(s) = staged.as_mut() {
            for node in &self.nodes_seen {
                let p = s.dir.join(format!("index-{node}.json"));
                if p.exists() {
                    s.node_index.insert(node.clone(), p);
                }
            }
        }
        staged
    }
}

/// The metadata must describe what the archive holds.
fn check_consistency(m: &Metadata, pass: &mut Pass) {
    match &pass.etcd_digest {
        None => pass.problem(format!("bundle has no {ETCD_ENTRY}")),
        Some(d) if *d != m.etcd.digest => pass.problem(format!(
            "{ETCD_ENTRY} does not match the digest in metadata ({d} vs {})",
            m.etcd.digest
        )),
        _ => {}
    }
    let names: HashSet<&str> = m.topology.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut foreign: Vec<&String> = pass.nodes_seen.iter().filter(|n| !names.contains(n.as_str())).collect();
    foreign.sort();
    if !foreign.is_empty() {
        let list = foreign.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        pass.problem(format!("bundle holds data for nodes not in its metadata: {list}"));
    }
    for (node, imgs) in &m.images.nodes {
        for blob in &imgs.blobs {
            let hex = blob.strip_prefix("sha256:").unwrap_or(blob);
            if !pass.blobs.contains_key(hex) {
                pass.problem(format!("image blob {blob} of node {node} is missing from the bundle"));
                break;
            }
        }
    }
    for (node, roots) in &m.pvs.nodes {
        for root in roots {
            if !PV_ROOTS.contains(&root.as_str()) {
                pass.problem(format!(
                    "metadata names an unknown volume root {root:?} for node {node}"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_resolution_stays_inside() {
        let d = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let none = BTreeMap::new();
        assert!(resolve_within(&none, &d(&["pvc", "sub"]), "../hello.txt").is_some());
        assert!(resolve_within(&none, &d(&["pvc"]), "../../etc/passwd").is_none());
        assert!(resolve_within(&none, &d(&[]), "..").is_none());
        assert!(resolve_within(&none, &d(&["pvc"]), "/etc/passwd").is_none());
        assert!(resolve_within(&none, &d(&["a"]), "./b/../c").is_some());
    }

    #[test]
    fn symlink_resolution_follows_the_volumes_other_links() {
        let d = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let links: BTreeMap<String, String> = [("pvc/l", ".."), ("pvc/up", "sub/.."), ("pvc/loop", "loop")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // `pvc/l` is the root: `l/../..` is two levels above it, though its text stays inside.
        assert!(resolve_within(&links, &d(&["pvc"]), "l/../..").is_none());
        assert!(resolve_within(&links, &d(&["pvc"]), "l/..").is_none());
        assert_eq!(resolve_within(&links, &d(&["pvc"]), "l/pvc/x"), Some(d(&["pvc", "x"])));
        assert_eq!(resolve_within(&links, &d(&["pvc"]), "up/y"), Some(d(&["pvc", "y"])));
        assert!(
            resolve_within(&links, &d(&["pvc"]), "loop/x").is_none(),
            "a loop is followed for ever"
        );
    }

    #[test]
    fn components_refuse_escapes() {
        assert!(components(Path::new("../x")).is_err());
        assert!(components(Path::new("/etc/passwd")).is_err());
        assert!(components(Path::new("a/../../b")).is_err());
        assert_eq!(components(Path::new("./a/b")).unwrap(), ["a", "b"]);
    }
}
