//! The streaming bundle writer: tar → parallel gzip → file, with the archive's sha256 computed on the way.
//!
//! A dedicated thread owns the tar builder; async code hands it entries whose bytes arrive through bounded
//! channels, so memory does not grow with the bundle. Entries are either single files of known size or whole
//! tar streams (Docker's archive API, `ctr images export`) re-emitted entry by entry under new names.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::Path;
use std::sync::mpsc::{SyncSender, sync_channel};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot};

use super::BundleError;
use super::pargz::{Finished, ParGzWriter};

/// Entries at least this large are checked for gzip/zstd magic and, if already compressed, stored.
const PRECOMPRESSED_MIN: u64 = 64 * 1024;
const CHANNEL_DEPTH: usize = 8;
/// gzip level of data that is not already compressed, chosen by measurement (docs/design.md).
pub const DEFAULT_LEVEL: u32 = 3;
/// A grouped file at least this large is a member of its own.
pub const SOLO_MIN: u64 = 1 << 20;
/// A group is cut after this many uncompressed bytes.
pub const GROUP_MAX: u64 = 8 << 20;
/// A group is also cut before an entry whose path hash is 0 modulo this (about this many entries a group).
const GROUP_CUT: u64 = 64;

/// How a re-emitted tar stream is cut into members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Each entry its own member (image blobs, the etcd snapshot).
    PerEntry,
    /// Entries grouped (PV files).
    Grouped,
}

/// What [`BundleSink::finish`] returns.
#[derive(Debug, Clone)]
pub struct Written {
    pub sha256: String,
    pub size: u64,
    pub index: backends::BundleIndex,
}
const READ_CHUNK: usize = 256 * 1024;

/// What one written entry was.
#[derive(Debug, Clone)]
pub struct EntrySummary {
    pub kind: EntryKind,
    pub size: u64,
    /// sha256 of the entry's data (regular files only).
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
}

/// What a re-emitted tar stream contributed.
#[derive(Debug, Clone, Default)]
pub struct TarSummary {
    pub entries: Vec<EntrySummary>,
    /// sha256 over every written entry's name, type, mode, size, link target and data, in order.
    pub digest: String,
    pub bytes: u64,
    /// Bytes of regular files under each directory one level below the stream's top directory (for the
    /// volumes, each volume's), by its name.
    pub bytes_below: std::collections::BTreeMap<String, u64>,
}

/// Maps a path inside a nested tar to its path in the bundle; `None` leaves the entry out.
pub type Rename = Box<dyn FnMut(&str) -> Option<String> + Send>;

enum Msg {
    File {
        path: String,
        size: u64,
        mode: u32,
        data: mpsc::Receiver<io::Result<Bytes>>,
        reply: oneshot::Sender<Result<EntrySummary, BundleError>>,
    },
    Tar {
        rename: Rename,
        grouping: Grouping,
        data: mpsc::Receiver<io::Result<Bytes>>,
        reply: oneshot::Sender<Result<TarSummary, BundleError>>,
    },
    Finish {
        reply: oneshot::Sender<Result<Written, BundleError>>,
    },
}

/// Handle to the writer thread.
pub struct BundleSink {
    tx: mpsc::Sender<Msg>,
}

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub level: u32,
    pub threads: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self {
            level: DEFAULT_LEVEL,
            threads,
        }
    }
}

impl BundleSink {
    /// Creates `path` (which must not exist; mode 0600) and starts the writer thread.
    pub fn create(path: &Path, opts: WriterOptions) -> Result<Self, BundleError> {
        let file = create_private(path).map_err(|e| BundleError::io(format!("creating {}", path.display()), e))?;
        let (tx, rx) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("bundle-writer".into())
            .spawn(move || writer_thread(file, opts, rx))
            .map_err(|e| BundleError::io("starting the bundle writer", e))?;
        Ok(Self { tx })
    }

    /// Appends one regular file of exactly `size` bytes read from `src`.
    pub async fn add_file(
        &self,
        path: &str,
        size: u64,
        mode: u32,
        src: impl AsyncRead + Unpin,
    ) -> Result<EntrySummary, BundleError> {
        let (data_tx, data) = mpsc::channel(CHANNEL_DEPTH);
        let (reply, rx) = oneshot::channel();
        self.send(Msg::File {
            path: path.to_owned(),
            size,
            mode,
            data,
            reply,
        })
        .await?;
        let pumped = pump(src, data_tx).await;
        let written = rx.await.map_err(|_| BundleError::WriterGone)?;
        pumped.map_err(BundleError::Source)?;
        written
    }

    pub async fn add_bytes(&self, path: &str, mode: u32, bytes: &[u8]) -> Result<EntrySummary, BundleError> {
        self.add_file(path, bytes.len() as u64, mode, bytes).await
    }

    /// Re-emits every entry of the tar stream `src` whose name `rename` maps to a bundle path.
    pub async fn add_tar(
        &self,
        src: impl AsyncRead + Unpin,
        rename: Rename,
        grouping: Grouping,
    ) -> Result<TarSummary, BundleError> {
        let (data_tx, data) = mpsc::channel(CHANNEL_DEPTH);
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Tar {
            rename,
            grouping,
            data,
            reply,
        })
        .await?;
        let pumped = pump(src, data_tx).await;
        let written = rx.await.map_err(|_| BundleError::WriterGone)?;
        pumped.map_err(BundleError::Source)?;
        written
    }

    /// Ends the archive and returns its sha256 (hex), size and member index. The file is synced to disk.
    pub async fn finish(self) -> Result<Written, BundleError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Finish { reply }).await?;
        rx.await.map_err(|_| BundleError::WriterGone)?
    }

    async fn send(&self, msg: Msg) -> Result<(), BundleError> {
        self.tx.send(msg).await.map_err(|_| BundleError::WriterGone)
    }
}

/// Copies `src` into the channel. A read error is passed to the writer (so it stops) and returned.
async fn pump(mut src: impl AsyncRead + Unpin, tx: mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
    loop {
        // Filled before it is sent: each message wakes the writer thread.
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let eof = match crate::util::fill(&mut src, &mut buf, READ_CHUNK).await {
            Ok(eof) => eof,
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string()))).await;
                return Err(e);
            }
        };
        if !buf.is_empty() && tx.send(Ok(buf.freeze())).await.is_err() {
            return Ok(()); // the writer stopped; its own error says why
        }
        if eof {
            return Ok(());
        }
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Yields exactly `remaining` bytes of `inner` and fails if it has fewer or more; what passes goes to the
/// content hasher.
struct Exact<'a, R> {
    inner: R,
    path: String,
    remaining: u64,
    tap: &'a mut ContentTap,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: more data than its declared size", self.path),
                )),
            };
        }
        let want = out.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: stream ended {} bytes short", self.path, self.remaining),
            ));
        }
        self.tap.data(&out[..n])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Hashes file contents on a thread of its own, in the order they pass through the writer: the writer thread
/// only copies bytes, and a second core does the sha256 (the most expensive step for data that is stored).
struct ContentTap {
    tx: SyncSender<Hash>,
    batch: Vec<u8>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Hash {
    /// File data.
    Data(Vec<u8>),
    /// The current file ends: its sha256 is recorded, and added to the digest.
    EndFile,
    /// Bytes for the digest (an entry's name, type, mode, size, link).
    Meta(Vec<u8>),
    /// Returns the files' sha256s and the digest so far, and starts again.
    Take(SyncSender<(Vec<String>, String)>),
}

/// Bytes of file data handed to the content hasher at once.
const TAP_BATCH: usize = 256 * 1024;

impl ContentTap {
    fn start() -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Hash>(4);
        let thread = std::thread::Builder::new().name("bundle-hash".into()).spawn(move || {
            let (mut file, mut digest, mut shas) = (Sha256::new(), Sha256::new(), Vec::new());
            while let Ok(msg) = rx.recv() {
                match msg {
                    Hash::Data(d) => file.update(&d),
                    Hash::EndFile => {
                        let sha = hex::encode(file.finalize_reset());
                        digest.update(sha.as_bytes());
                        shas.push(sha);
                    }
                    Hash::Meta(m) => digest.update(&m),
                    Hash::Take(reply) => {
                        let _ = reply.send((std::mem::take(&mut shas), hex::encode(digest.finalize_reset())));
                    }
                }
            }
        })?;
        Ok(Self {
            tx,
            batch: Vec::with_capacity(TAP_BATCH),
            thread: Some(thread),
        })
    }

    fn send(&self, msg: Hash) -> io::Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| io::Error::other("the content hasher stopped"))
    }

    fn data(&mut self, d: &[u8]) -> io::Result<()> {
        self.batch.extend_from_slice(d);
        if self.batch.len() >= TAP_BATCH {
            let full = std::mem::replace(&mut self.batch, Vec::with_capacity(TAP_BATCH));
            self.send(Hash::Data(full))?;
        }
        Ok(())
    }

    fn end_file(&mut self) -> io::Result<()> {
        if !self.batch.is_empty() {
            let rest = std::mem::replace(&mut self.batch, Vec::with_capacity(TAP_BATCH));
            self.send(Hash::Data(rest))?;
        }
        self.send(Hash::EndFile)
    }

    fn meta(&self, m: Vec<u8>) -> io::Result<()> {
        self.send(Hash::Meta(m))
    }

    /// Waits for the hasher to catch up; the files' sha256s (hex) since the last take, and the digest.
    fn take(&self) -> io::Result<(Vec<String>, String)> {
        let (reply, rx) = sync_channel(1);
        self.send(Hash::Take(reply))?;
        rx.recv().map_err(|_| io::Error::other("the content hasher stopped"))
    }
}

impl Drop for ContentTap {
    fn drop(&mut self) {
        // Closing the channel ends the thread.
        let (tx, _) = sync_channel(0);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Builder = tar::Builder<ParGzWriter<BufWriter<EarlySync>>>;

/// A file whose data is flushed to disk while it is written: every [`EARLY_SYNC_EVERY`] bytes a thread of its
/// own calls `fdatasync` on it (writes go on meanwhile), so the final sync that publishing requires waits only
/// for the tail instead of the whole bundle.
struct EarlySync {
    file: File,
    unsynced: u64,
    kick: Option<SyncSender<()>>,
}

const EARLY_SYNC_EVERY: u64 = 32 << 20;

impl EarlySync {
    fn new(file: File) -> Self {
        // Without a second handle or thread, the final sync does it all (as before); nothing is lost.
        let kick = file.try_clone().ok().and_then(|clone| {
            let (tx, rx) = sync_channel::<()>(1);
            std::thread::Builder::new()
                .name("bundle-sync".into())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        let _ = clone.sync_data();
                    }
                })
                .ok()
                .map(|_| tx)
        });
        Self {
            file,
            unsynced: 0,
            kick,
        }
    }

    fn into_file(self) -> File {
        self.file
    }
}

impl io::Write for EarlySync {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= EARLY_SYNC_EVERY {
            self.unsynced = 0;
            if let Some(kick) = &self.kick {
                let _ = kick.try_send(()); // a sync still running covers these bytes too
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

struct State {
    builder: Builder,
    tap: ContentTap,
    written: HashSet<String>,
    /// Uncompressed bytes since the current group's first entry.
    group_bytes: u64,
}

fn writer_thread(file: File, opts: WriterOptions, mut rx: mpsc::Receiver<Msg>) {
    let gz = ParGzWriter::new(
        BufWriter::with_capacity(1 << 20, EarlySync::new(file)),
        opts.level,
        opts.threads,
    );
    let mut builder = tar::Builder::new(gz);
    builder.mode(tar::HeaderMode::Complete);
    let tap = match ContentTap::start() {
        Ok(t) => t,
        Err(e) => return fail_all(rx, &e.to_string()),
    };
    let mut state = Some(State {
        builder,
        tap,
        written: HashSet::new(),
        group_bytes: 0,
    });
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::File {
                path,
                size,
                mode,
                data,
                reply,
            } => {
                let res = match state.as_mut() {
                    Some(s) => s.file(path, size, mode, data),
                    None => Err(BundleError::WriterFailed),
                };
                if res.is_err() {
                    state = None;
                }
                let _ = reply.send(res);
            }
            Msg::Tar {
                rename,
                grouping,
                data,
                reply,
            } => {
                let res = match state.as_mut() {
                    Some(s) => s.tar(rename, grouping, data),
                    None => Err(BundleError::WriterFailed),
                };
                if res.is_err() {
                    state = None;
                }
                let _ = reply.send(res);
            }
            Msg::Finish { reply } => {
                let res = match state.take() {
                    Some(s) => s.finish(),
                    None => Err(BundleError::WriterFailed),
                };
                let _ = reply.send(res);
                return;
            }
        }
    }
}

/// Answers every message with the error that stopped the writer before it started.
fn fail_all(mut rx: mpsc::Receiver<Msg>, why: &str) {
    let err = || BundleError::io("starting the bundle writer", io::Error::other(why.to_owned()));
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::File { reply, .. } => drop(reply.send(Err(err()))),
            Msg::Tar { reply, .. } => drop(reply.send(Err(err()))),
            Msg::Finish { reply } => drop(reply.send(Err(err()))),
        }
    }
}

fn new_header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
    fix_header(path, &mut h);
    h
}

/// What a source entry is: its kind, size and link target (a hardlink's renamed as its target is).
fn what_entry<R: Read>(
    entry: &tar::Entry<'_, R>,
    src_path: &str,
    rename: &mut Rename,
) -> Result<(EntryKind, u64, Option<String>), BundleError> {
    let link = || -> Result<Option<String>, BundleError> {
        Ok(entry
            .link_name()
            .map_err(BundleError::Source)?
            .map(|l| l.to_string_lossy().into_owned()))
    };
    Ok(match entry.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => (EntryKind::File, entry.size(), None),
        tar::EntryType::Directory => (EntryKind::Dir, 0, None),
        tar::EntryType::Symlink => (EntryKind::Symlink, 0, link()?),
        tar::EntryType::Link => (EntryKind::Hardlink, 0, link()?.and_then(|t| rename(&t))),
        other => {
            return Err(BundleError::Unsupported {
                path: src_path.to_owned(),
                kind: format!("{other:?}"),
            });
        }
    })
}

/// Where a streamed tar's gzip members start (see `Grouping::Grouped`).
#[derive(Default)]
struct Groups {
    seen_any: bool,
    after_solo: bool,
}

impl Groups {
    /// Whether this entry starts a new gzip member: the first, a large file and the entry after one, a
    /// group grown to [`GROUP_MAX`], or a cut chosen by the path (so that equal trees cut alike).
    fn starts_member(&mut self, grouping: Grouping, path: &str, kind: EntryKind, size: u64, group_bytes: u64) -> bool {
        let solo = kind == EntryKind::File && size >= SOLO_MIN;
        let member = match grouping {
            Grouping::PerEntry => true,
            Grouping::Grouped => {
                !self.seen_any
                    || solo
                    || self.after_solo
                    || group_bytes >= GROUP_MAX
                    || path_hash(path).is_multiple_of(GROUP_CUT)
            }
        };
        self.seen_any = true;
        self.after_solo = solo;
        member
    }
}

/// Image entries get headers that depend on nothing but their path, size (and, for a node's image index,
/// mode): a blob, or the index of a node whose images did not change, is then the same member in every bundle.
fn fix_header(path: &str, h: &mut tar::Header) {
    if path.starts_with(super::IMAGE_BLOBS_DIR) {
        h.set_mode(0o444);
    }
    if path.starts_with(super::IMAGE_BLOBS_DIR) || path.starts_with(super::IMAGE_NODES_DIR) {
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
    }
}

/// FNV-1a: a stable hash of an entry's path, for content-defined group cuts.
fn path_hash(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl State {
    fn claim(&mut self, path: &str) -> Result<(), BundleError> {
        if !self.written.insert(path.to_owned()) {
            return Err(BundleError::Duplicate(path.to_owned()));
        }
        Ok(())
    }

    /// Appends a regular file's data, storing it uncompressed in the gzip stream when it already is compressed.
    /// With `member`, the entry starts a member of its own.
    fn append_data(
        &mut self,
        header: &mut tar::Header,
        path: &str,
        size: u64,
        data: impl Read,
        member: bool,
    ) -> Result<(), BundleError> {
        let mut exact = Exact {
            inner: data,
            path: path.to_owned(),
            remaining: size,
            tap: &mut self.tap,
        };
        let mut head = [0u8; 4];
        let mut got = 0;
        if size >= PRECOMPRESSED_MIN {
            while got < head.len() {
                let n = exact.read(&mut head[got..]).map_err(BundleError::Source)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
        }
        let compressed = got == head.len() && (head[..2] == [0x1f, 0x8b] || head == [0x28, 0xb5, 0x2f, 0xfd]);
        let gz = self.builder.get_mut();
        if member {
            gz.mark(path, compressed)
        } else {
            gz.set_precompressed(compressed)
        }
        .map_err(|e| BundleError::io("compressing", e))?;
        gz.note_entry();
        let mut chained = Read::chain(&head[..got], &mut exact);
        self.builder
            .append_data(header, path, &mut chained)
            .map_err(|e| classify(e, path))?;
        self.tap.end_file().map_err(|e| BundleError::io("hashing", e))
    }

    /// Starts a member before a non-file entry, or counts it in the current one.
    fn begin_entry(&mut self, path: &str, member: bool) -> Result<(), BundleError> {
        let gz = self.builder.get_mut();
        if member {
            gz.mark(path, false).map_err(|e| BundleError::io("compressing", e))?;
        }
        gz.note_entry();
        Ok(())
    }

    fn file(
        &mut self,
        path: String,
        size: u64,
        mode: u32,
        data: mpsc::Receiver<io::Result<Bytes>>,
    ) -> Result<EntrySummary, BundleError> {
        self.claim(&path)?;
        let mut header = new_header(&path, size, mode, tar::EntryType::Regular);
        self.append_data(
            &mut header,
            &path,
            size,
            ChannelReader {
                rx: data,
                cur: Bytes::new(),
            },
            true,
        )?;
        let (shas, _) = self.tap.take().map_err(|e| BundleError::io("hashing", e))?;
        Ok(EntrySummary {
            kind: EntryKind::File,
            size,
            sha256: shas.into_iter().next(),
        })
    }

    fn tar(
        &mut self,
        mut rename: Rename,
        grouping: Grouping,
        data: mpsc::Receiver<io::Result<Bytes>>,
    ) -> Result<TarSummary, BundleError> {
        let mut archive = tar::Archive::new(ChannelReader {
            rx: data,
            cur: Bytes::new(),
        });
        let mut summary = TarSummary::default();
        let entries = archive.entries().map_err(BundleError::Source)?;
        let mut groups = Groups::default();
        for entry in entries {
            let entry = entry.map_err(BundleError::Source)?;
            let src_path = entry
                .path()
                .map_err(BundleError::Source)?
                .to_string_lossy()
                .into_owned();
            let Some(path) = rename(&src_path) else { continue };
            self.claim(&path)?;
            let (kind, size, link) = what_entry(&entry, &src_path, &mut rename)?;
            let mode = entry.header().mode().unwrap_or(0o644);
            let mut meta = path.clone().into_bytes();
            meta.extend_from_slice(
                format!("\0{kind:?}\0{mode:o}\0{size}\0{}\0", link.as_deref().unwrap_or("")).as_bytes(),
            );
            self.tap.meta(meta).map_err(|e| BundleError::io("hashing", e))?;
            let member = groups.starts_member(grouping, &path, kind, size, self.group_bytes);
            if member {
                self.group_bytes = 0;
            }
            self.group_bytes += size + 512;
            self.append_entry(&path, (kind, size, link), entry, member)?;
            summary.bytes += size;
            if let Some(child) = src_path.split('/').filter(|c| !c.is_empty() && *c != ".").nth(1)
                && kind == EntryKind::File
            {
                *summary.bytes_below.entry(child.to_owned()).or_default() += size;
            }
            summary.entries.push(EntrySummary {
                kind,
                size,
                sha256: None,
            });
        }
        let (shas, digest) = self.tap.take().map_err(|e| BundleError::io("hashing", e))?;
        let mut shas = shas.into_iter();
        for e in summary.entries.iter_mut().filter(|e| e.kind == EntryKind::File) {
            e.sha256 = shas.next();
        }
        summary.digest = digest;
        Ok(summary)
    }

    /// One entry of a streamed tar, at `path` in the bundle, with the source's mode, owner and time.
    fn append_entry<R: Read>(
        &mut self,
        path: &str,
        (kind, size, link): (EntryKind, u64, Option<String>),
        entry: tar::Entry<'_, R>,
        member: bool,
    ) -> Result<(), BundleError> {
        let mut header = tar::Header::new_gnu();
        {
            let src = entry.header();
            header.set_mode(src.mode().unwrap_or(0o644));
            header.set_uid(src.uid().unwrap_or(0));
            header.set_gid(src.gid().unwrap_or(0));
            header.set_mtime(src.mtime().unwrap_or(0));
        }
        fix_header(path, &mut header);
        match kind {
            EntryKind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                self.append_data(&mut header, path, size, entry, member)?;
            }
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                self.begin_entry(path, member)?;
                self.builder
                    .append_data(&mut header, path, io::empty())
                    .map_err(|e| classify(e, path))?;
            }
            EntryKind::Symlink | EntryKind::Hardlink => {
                let target = link.ok_or_else(|| BundleError::Unsupported {
                    path: path.to_owned(),
                    kind: "link without target".into(),
                })?;
                header.set_entry_type(if kind == EntryKind::Symlink {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                header.set_size(0);
                self.begin_entry(path, member)?;
                self.builder
                    .append_link(&mut header, path, &target)
                    .map_err(|e| classify(e, path))?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Written, BundleError> {
        let gz = self
            .builder
            .into_inner()
            .map_err(|e| BundleError::io("finishing the archive", e))?;
        let Finished {
            out,
            sha256,
            size,
            members,
        } = gz.finish().map_err(|e| BundleError::io("finishing the archive", e))?;
        let file = out
            .into_inner()
            .map_err(|e| BundleError::io("writing the archive", e.into_error()))?
            .into_file();
        file.sync_all().map_err(|e| BundleError::io("syncing the archive", e))?;
        let sha256 = hex::encode(sha256);
        let index = backends::BundleIndex {
            index_version: backends::members::INDEX_VERSION,
            sha256: sha256.clone(),
            size,
            members: members
                .into_iter()
                .map(|m| backends::members::Member {
                    offset: m.offset,
                    size: m.size,
                    sha256: hex::encode(m.sha256),
                    holds: m.holds,
                    entries: m.entries,
                })
                .collect(),
        };
        Ok(Written { sha256, size, index })
    }
}

/// Errors from the data source surface as such; the rest are write errors.
fn classify(e: io::Error, path: &str) -> BundleError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::InvalidData
        | io::ErrorKind::Other
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset => BundleError::Source(e),
        _ => BundleError::io(format!("writing {path} into the bundle"), e),
    }
}
