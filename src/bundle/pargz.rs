//! Parallel gzip: the stream is cut into fixed-size chunks, each compressed on a worker thread into an
//! independent gzip member, and the members are written in order. Concatenated members are a valid gzip
//! file (RFC 1952 §2.2): `gzip -d`, `tar xzf` and [`flate2::read::MultiGzDecoder`] read it as one stream.
//!
//! Chunks of data that is already compressed (image layers) are stored, not deflated again: deflating
//! random-looking bytes costs the most CPU for no gain. The sha256 of the compressed output is computed as it
//! is written, so the sidecar never needs a second read of the file.
//!
//! [`ParGzWriter::mark`] starts a bundle *member*: the current chunk ends there, so chunking (and therefore
//! every compressed byte) restarts at the mark. The same input after a mark, at the same level, yields the
//! same member bytes in any bundle; [`ParGzWriter::finish`] returns each member's offset, size and sha256.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// Size of one gzip member's input. Large enough that per-member overhead (18 bytes, a fresh dictionary)
/// is negligible, small enough that in-flight memory stays a few MiB.
pub const CHUNK: usize = 1 << 20;

/// Every chunk buffer, in or out, can hold a whole chunk stored ([`stored_member`]: 5 bytes a block, the gzip
/// header and trailer, with room to spare): one size, so any spare buffer serves.
const BUF_CAP: usize = CHUNK + CHUNK.div_ceil(STORED_BLOCK) * 5 + 256;

/// Spare chunk buffers. Input chunks and compressed chunks are recycled rather than freed: the same few stay
/// resident, where freeing one per chunk left glibc holding tens of MiB across its thread arenas.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    /// Spares kept; more are freed.
    const KEEP: usize = 24;

    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| Vec::with_capacity(BUF_CAP))
    }

    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < BUF_CAP || buf.capacity() > 2 * BUF_CAP {
            return;
        }
        buf.clear();
        if let Ok(mut p) = self.0.lock()
            && p.len() < Self::KEEP
        {
            p.push(buf);
        }
    }

    /// Returns a chunk the output threads shared, from whichever of them lets go of it last.
    fn give_shared(&self, chunk: Arc<Vec<u8>>) {
        if let Ok(buf) = Arc::try_unwrap(chunk) {
            self.give(buf);
        }
    }
}

struct Job {
    seq: u64,
    data: Vec<u8>,
    store: bool,
}

type Done = (u64, io::Result<Vec<u8>>);

/// One member of the output, as [`ParGzWriter::finish`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub offset: u64,
    pub size: u64,
    pub sha256: [u8; 32],
    pub holds: String,
    pub entries: u64,
}

/// The member being written out.
struct Open {
    /// The chunk sequence number it starts at (the key of its entry count).
    seq: u64,
    info: MemberInfo,
}

/// Where compressed chunks go, in order: one thread writes them to `W` and hashes the whole output, another
/// hashes each member (sha256 is the most expensive step for stored data; the writer thread only copies).
struct Sinks<W> {
    out: Option<OutThread<W>>,
    members: Option<HashThread>,
}

/// The member hasher: chunks and cuts in; each member's sha256 out.
type HashThread = (SyncSender<ToHash>, JoinHandle<Vec<[u8; 32]>>);

/// The output thread: chunks in; the output and its sha256 out.
type OutThread<W> = (SyncSender<Arc<Vec<u8>>>, JoinHandle<io::Result<(W, [u8; 32])>>);

enum ToHash {
    Chunk(Arc<Vec<u8>>),
    /// The current member ends.
    Cut,
}

/// Compressed chunks queued for each output thread.
const OUT_DEPTH: usize = 4;

impl<W: Write + Send + 'static> Sinks<W> {
    fn start(mut out: W, pool: Pool) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Arc<Vec<u8>>>(OUT_DEPTH);
        let spares = pool.clone();
        let writer = std::thread::Builder::new().name("bundle-out".into()).spawn(move || {
            let mut hasher = Sha256::new();
            while let Ok(chunk) = rx.recv() {
                out.write_all(&chunk)?;
                hasher.update(&*chunk);
                spares.give_shared(chunk);
            }
            out.flush()?;
            Ok((out, hasher.finalize().into()))
        })?;
        let (htx, hrx) = sync_channel::<ToHash>(OUT_DEPTH);
        let hasher = std::thread::Builder::new().name("member-hash".into()).spawn(move || {
            let (mut h, mut done) = (Sha256::new(), Vec::new());
            while let Ok(msg) = hrx.recv() {
                match msg {
                    ToHash::Chunk(c) => {
                        h.update(&*c);
                        pool.give_shared(c);
                    }
                    ToHash::Cut => done.push(h.finalize_reset().into()),
                }
            }
            done
        })?;
        Ok(Self {
            out: Some((tx, writer)),
            members: Some((htx, hasher)),
        })
    }

    fn write(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let chunk = Arc::new(chunk);
        let (tx, _) = self.out.as_ref().ok_or_else(|| io::Error::other("output closed"))?;
        if tx.send(Arc::clone(&chunk)).is_err() {
            return Err(self.out_error());
        }
        self.hash(ToHash::Chunk(chunk))
    }

    fn cut(&mut self) -> io::Result<()> {
        self.hash(ToHash::Cut)
    }

    fn hash(&mut self, msg: ToHash) -> io::Result<()> {
        let (tx, _) = self
            .members
            .as_ref()
            .ok_or_else(|| io::Error::other("member hasher closed"))?;
        tx.send(msg).map_err(|_| io::Error::other("the member hasher stopped"))
    }

    /// The writing thread's own error, once it stopped.
    fn out_error(&mut self) -> io::Error {
        match self.out.take().map(|(tx, t)| {
            drop(tx);
            t.join()
        }) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the bundle output thread stopped"),
        }
    }

    /// Waits for both threads: the output, its sha256, and each member's sha256 in order.
    fn finish(&mut self) -> io::Result<(W, [u8; 32], Vec<[u8; 32]>)> {
        let (tx, t) = self.out.take().ok_or_else(|| io::Error::other("output closed"))?;
        drop(tx);
        let (out, sha) = t
            .join()
            .map_err(|_| io::Error::other("the bundle output thread panicked"))??;
        let (htx, h) = self
            .members
            .take()
            .ok_or_else(|| io::Error::other("member hasher closed"))?;
        drop(htx);
        let members = h.join().map_err(|_| io::Error::other("the member hasher panicked"))?;
        Ok((out, sha, members))
    }
}

/// A `Write` that gzips in parallel into `W` and hashes what it writes.
pub struct ParGzWriter<W: Write + Send + 'static> {
    sinks: Sinks<W>,
    written: u64,
    level: Compression,
    buf: Vec<u8>,
    pool: Pool,
    buf_store: bool,
    next_seq: u64,
    next_write: u64,
    pending: std::collections::BTreeMap<u64, Vec<u8>>,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Chunk sequence number where each member starts, with what it holds (until its output begins).
    starts: std::collections::BTreeMap<u64, String>,
    /// Tar entries noted in each member, by its start (until the member is closed: entries are noted while its
    /// first chunks may already be written out).
    counts: std::collections::BTreeMap<u64, u64>,
    open: Option<Open>,
    members: Vec<MemberInfo>,
}

/// Bytes sampled at each of three places of a chunk by [`incompressible`].
const PROBE: usize = 8 << 10;

/// Whether deflate would gain (almost) nothing on `data`: three samples (start, middle, end) compressed at the
/// fastest level all stay above 97% of their size. Such chunks (random PV data, encrypted files, media) are
/// stored: deflating them costs the most CPU for no gain. The probe costs about 2% of deflating the chunk.
fn incompressible(data: &[u8]) -> bool {
    if data.len() < 8 * PROBE {
        return false;
    }
    [0, data.len() / 2 - PROBE / 2, data.len() - PROBE].iter().all(|&at| {
        let sample = &data[at..at + PROBE];
        let mut enc = flate2::write::DeflateEncoder::new(Vec::with_capacity(PROBE + 64), Compression::fast());
        enc.write_all(sample)
            .and_then(|()| enc.finish())
            .is_ok_and(|out| out.len() * 100 > sample.len() * 97)
    })
}

/// The largest stored deflate block (RFC 1951 §3.2.4: LEN is 16 bits).
const STORED_BLOCK: usize = 65535;

/// Appends `data` to `out` as one gzip member of stored deflate blocks: the header flate2 writes for level 0
/// (no name, no mtime, XFL 4, OS 255), blocks of 65535 bytes (an empty member is one empty final block), then
/// CRC-32 and size. One copy of the data: zlib's level 0 copied it through its window and flate2's buffer,
/// 0.95 ms a MiB against 0.37 here. And the bytes are fixed by this function rather than by how a zlib
/// version sizes its stored blocks (zlib-rs 0.6 through flate2 1.1 writes 65531, 32773, then 32768-byte
/// blocks), so a stored blob stays the same member across dependency upgrades.
fn stored_member(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255]);
    let blocks = data.len().div_ceil(STORED_BLOCK).max(1);
    for i in 0..blocks {
        let block = &data[(i * STORED_BLOCK).min(data.len())..((i + 1) * STORED_BLOCK).min(data.len())];
        let len = u16::try_from(block.len()).expect("a stored block is at most 65535 bytes");
        out.push(u8::from(i + 1 == blocks));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the size modulo 2^32 (RFC 1952 §2.3.1); a chunk is 1 MiB.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
}

impl<W: Write + Send + 'static> ParGzWriter<W> {
    pub fn new(out: W, level: u32, threads: usize) -> Self {
        let threads = threads.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = sync_channel::<Done>(threads * 4);
        let level = Compression::new(level.min(9));
        let pool = Pool::default();
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&job_rx);
                let tx = done_tx.clone();
                let pool = pool.clone();
                std::thread::Builder::new().name("pargz".into()).spawn(move || {
                    loop {
                        let job = match rx.lock().map(|r| r.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return,
                        };
                        let res = if job.store || level == Compression::none() || incompressible(&job.data) {
                            let mut out = pool.take();
                            stored_member(&job.data, &mut out);
                            Ok(out)
                        } else {
                            let mut enc = GzEncoder::new(pool.take(), level);
                            enc.write_all(&job.data).and_then(|()| enc.finish())
                        };
                        pool.give(job.data);
                        if tx.send((job.seq, res)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect::<io::Result<Vec<_>>>()
            .expect("spawning compression threads");
        Self {
            sinks: Sinks::start(out, pool.clone()).expect("spawning the bundle output threads"),
            pool,
            written: 0,
            level,
            buf: Vec::with_capacity(CHUNK),
            buf_store: false,
            next_seq: 0,
            next_write: 0,
            pending: Default::default(),
            in_flight: 0,
            max_in_flight: threads * 3,
            jobs: Some(job_tx),
            done: done_rx,
            workers,
            starts: Default::default(),
            counts: Default::default(),
            open: None,
            members: Vec::new(),
        }
    }

    /// Starts a member holding `holds` (a tar entry's path): the current chunk ends here. `store` says whether
    /// the member's bytes are already compressed. A member with no bytes is dropped.
    pub fn mark(&mut self, holds: &str, store: bool) -> io::Result<()> {
        self.submit()?;
        self.buf_store = store;
        self.starts.insert(self.next_seq, holds.to_owned());
        self.counts.insert(self.next_seq, 0);
        Ok(())
    }

    /// Counts a tar entry in the current member (the last marked).
    pub fn note_entry(&mut self) {
        if let Some(mut last) = self.counts.last_entry() {
            *last.get_mut() += 1;
        }
    }

    fn close_member(&mut self) -> io::Result<()> {
        if let Some(open) = self.open.take()
            && open.info.size > 0
        {
            let mut info = open.info;
            info.entries = self.counts.remove(&open.seq).unwrap_or(0);
            self.sinks.cut()?; // its sha256 comes from the member hasher at the end
            self.members.push(info);
        }
        Ok(())
    }

    /// Marks the bytes written from now on as already compressed (or not). A change of mode ends the current
    /// chunk so each member is compressed one way.
    pub fn set_precompressed(&mut self, store: bool) -> io::Result<()> {
        if store != self.buf_store {
            self.submit()?;
            self.buf_store = store;
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        let data = std::mem::replace(&mut self.buf, self.pool.take());
        let job = Job {
            seq: self.next_seq,
            data,
            store: self.buf_store || self.level.level() == 0,
        };
        self.next_seq += 1;
        self.in_flight += 1;
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("compressor closed"))?
            .send(job)
            .map_err(|_| io::Error::other("compression worker died"))?;
        // Write out whatever finished meanwhile, without waiting.
        while let Ok((seq, res)) = self.done.try_recv() {
            self.accept(seq, res)?;
        }
        Ok(())
    }

    fn collect_one(&mut self) -> io::Result<()> {
        let (seq, res) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("compression worker died"))?;
        self.accept(seq, res)
    }

    fn accept(&mut self, seq: u64, res: io::Result<Vec<u8>>) -> io::Result<()> {
        self.in_flight -= 1;
        self.pending.insert(seq, res?);
        while let Some(member) = self.pending.remove(&self.next_write) {
            if let Some(holds) = self.starts.remove(&self.next_write) {
                self.start_member(holds)?;
            } else if self.open.is_none() {
                self.start_member(String::new())?;
            }
            self.emit(member)?;
            self.next_write += 1;
        }
        Ok(())
    }

    /// Hands a compressed chunk to the output threads, counted in the open member.
    fn emit(&mut self, member: Vec<u8>) -> io::Result<()> {
        let n = member.len() as u64;
        self.sinks.write(member)?;
        if let Some(open) = self.open.as_mut() {
            open.info.size += n;
        }
        self.written += n;
        Ok(())
    }

    fn start_member(&mut self, holds: String) -> io::Result<()> {
        self.close_member()?;
        self.open = Some(Open {
            seq: self.next_write,
            info: MemberInfo {
                offset: self.written,
                size: 0,
                sha256: [0; 32],
                holds,
                entries: 0,
            },
        });
        Ok(())
    }

    /// Flushes everything, stops the workers and returns the output, its sha256, its size and its members.
    pub fn finish(mut self) -> io::Result<Finished<W>> {
        self.submit()?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        if self.next_seq == 0 {
            // An empty input still has to be a valid gzip file.
            let member = GzEncoder::new(Vec::new(), self.level).finish()?;
            self.start_member(String::new())?;
            self.emit(member)?;
        }
        self.close_member()?;
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let (out, sha256, shas) = self.sinks.finish()?;
        if shas.len() != self.members.len() {
            return Err(io::Error::other("member hashes and members disagree"));
        }
        let mut members = std::mem::take(&mut self.members);
        for (m, sha) in members.iter_mut().zip(shas) {
            m.sha256 = sha;
        }
        Ok(Finished {
            out,
            sha256,
            size: self.written,
            members,
        })
    }
}

/// What [`ParGzWriter::finish`] returns.
pub struct Finished<W> {
    pub out: W,
    pub sha256: [u8; 32],
    pub size: u64,
    pub members: Vec<MemberInfo>,
}

impl<W: Write + Send + 'static> Write for ParGzWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let room = CHUNK - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.submit()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    fn roundtrip(input: &[u8], store_from: Option<usize>) {
        let mut w = ParGzWriter::new(Vec::new(), 6, 2);
        match store_from {
            Some(at) => {
                w.write_all(&input[..at]).unwrap();
                w.set_precompressed(true).unwrap();
                w.write_all(&input[at..]).unwrap();
            }
            None => w.write_all(input).unwrap(),
        }
        let Finished {
            out,
            sha256: digest,
            size,
            members,
        } = w.finish().unwrap();
        assert_eq!(size as usize, out.len());
        assert_eq!(digest.as_slice(), Sha256::digest(&out).as_slice());
        assert_eq!(
            members.iter().map(|m| m.size).sum::<u64>(),
            size,
            "members tile the output"
        );
        let mut back = Vec::new();
        MultiGzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn random_chunks_are_stored_and_text_is_not() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: Vec<u8> = (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(incompressible(&random));
        let text = b"apiVersion: v1\nkind: ConfigMap\n".repeat(CHUNK / 32);
        assert!(!incompressible(&text));
        // Random bytes with compressible text in the middle: deflated.
        let mut mixed = random.clone();
        mixed[CHUNK / 2 - PROBE..CHUNK / 2 + PROBE].copy_from_slice(&text[..2 * PROBE]);
        assert!(!incompressible(&mixed));
        roundtrip(&[random.as_slice(), &text].concat(), None);
    }

    /// The same bytes after a mark are the same member, whatever came before (and in whichever mode).
    #[test]
    fn members_are_deterministic_and_tile_the_output() {
        let blob: Vec<u8> = (0..(CHUNK * 2 + 777)).map(|i| (i * 31 % 253) as u8).collect();
        let run = |before: &[u8], store_before: bool| {
            let mut w = ParGzWriter::new(Vec::new(), 6, 2);
            w.mark("first", store_before).unwrap();
            w.write_all(before).unwrap();
            w.note_entry();
            w.mark("blob", false).unwrap();
            w.write_all(&blob).unwrap();
            w.note_entry();
            w.mark("empty", false).unwrap();
            w.mark("last", false).unwrap();
            w.write_all(b"tail").unwrap();
            w.finish().unwrap()
        };
        let a = run(b"short", false);
        let b = run(&vec![9u8; CHUNK + 5], true);
        let member = |f: &Finished<Vec<u8>>, holds: &str| {
            let m = f.members.iter().find(|m| m.holds == holds).unwrap().clone();
            (
                m.clone(),
                f.out[m.offset as usize..(m.offset + m.size) as usize].to_vec(),
            )
        };
        let (ma, bytes_a) = member(&a, "blob");
        let (mb, bytes_b) = member(&b, "blob");
        assert_eq!(bytes_a, bytes_b, "the same blob must be the same member bytes");
        assert_eq!(ma.sha256, mb.sha256);
        assert_eq!(ma.sha256.as_slice(), Sha256::digest(&bytes_a).as_slice());
        assert_eq!(ma.entries, 1);
        assert_ne!(ma.offset, mb.offset);
        for f in [&a, &b] {
            let holds: Vec<&str> = f.members.iter().map(|m| m.holds.as_str()).collect();
            assert_eq!(holds, ["first", "blob", "last"], "an empty member is dropped");
            let mut at = 0;
            for m in &f.members {
                assert_eq!(m.offset, at);
                at += m.size;
            }
            assert_eq!(at, f.size);
            let mut back = Vec::new();
            MultiGzDecoder::new(&f.out[..]).read_to_end(&mut back).unwrap();
            assert!(back.ends_with(b"tail"));
        }
    }

    /// Entries noted after a member's first chunk was already written out still count in that member.
    #[test]
    fn entries_count_in_their_member_whenever_its_chunks_are_written() {
        let mut w = ParGzWriter::new(Vec::new(), 1, 2);
        w.mark("group", false).unwrap();
        w.note_entry();
        w.write_all(&vec![0u8; CHUNK]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        w.note_entry();
        // This chunk's submit writes out the first one, which starts the member's output.
        w.write_all(&vec![1u8; CHUNK]).unwrap();
        w.note_entry();
        w.mark("next", false).unwrap();
        w.note_entry();
        w.write_all(b"x").unwrap();
        let f = w.finish().unwrap();
        let counts: Vec<(&str, u64)> = f.members.iter().map(|m| (m.holds.as_str(), m.entries)).collect();
        assert_eq!(counts, [("group", 3), ("next", 1)]);
    }

    /// A stored member is what gzip reads back, with flate2's level-0 header, 65535-byte blocks and the
    /// right trailer; an empty one is a valid empty member.
    #[test]
    fn stored_members_are_valid_gzip_with_fixed_blocks() {
        let data: Vec<u8> = (0..(CHUNK + 12_345)).map(|i| (i * 131 % 251) as u8).collect();
        for len in [0, 1, STORED_BLOCK - 1, STORED_BLOCK, STORED_BLOCK + 1, data.len()] {
            let mut out = Vec::new();
            stored_member(&data[..len], &mut out);
            let mut back = Vec::new();
            MultiGzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
            assert!(back == data[..len], "{len} bytes do not come back");
            let mut reference = GzEncoder::new(Vec::new(), Compression::none());
            reference.write_all(&data[..len]).unwrap();
            let reference = reference.finish().unwrap();
            assert_eq!(out[..10], reference[..10], "header");
            assert_eq!(
                out[out.len() - 8..],
                reference[reference.len() - 8..],
                "CRC-32 and size"
            );
            let blocks = len.div_ceil(STORED_BLOCK).max(1);
            assert_eq!(out.len(), 10 + 5 * blocks + len + 8, "{len}: one 5-byte header a block");
            assert_eq!(out[10], u8::from(blocks == 1), "{len}: BFINAL of the first block");
        }
    }

    #[test]
    fn empty_input_is_valid_gzip() {
        roundtrip(b"", None);
    }

    #[test]
    fn many_chunks_come_back_in_order() {
        let input: Vec<u8> = (0..(CHUNK * 5 + 123)).map(|i| (i * 7 % 251) as u8).collect();
        roundtrip(&input, None);
    }

    #[test]
    fn stored_chunks_round_trip() {
        let input: Vec<u8> = (0..(CHUNK * 3)).map(|i| (i % 13) as u8).collect();
        roundtrip(&input, Some(CHUNK / 2));
    }

    #[test]
    fn compressible_data_shrinks_and_stored_data_does_not() {
        let text = b"kind snapshot ".repeat(CHUNK / 7);
        let mut w = ParGzWriter::new(Vec::new(), 6, 2);
        w.write_all(&text).unwrap();
        let out = w.finish().unwrap().out;
        assert!(out.len() < text.len() / 10, "deflated {} -> {}", text.len(), out.len());

        let mut w = ParGzWriter::new(Vec::new(), 6, 2);
        w.set_precompressed(true).unwrap();
        w.write_all(&text).unwrap();
        let out = w.finish().unwrap().out;
        assert!(out.len() >= text.len(), "stored data must not be deflated");

        // Level 0 stores everything, in the writer's own stored members.
        let mut w = ParGzWriter::new(Vec::new(), 0, 2);
        w.write_all(&text).unwrap();
        let out = w.finish().unwrap().out;
        let mut member = Vec::new();
        stored_member(&text[..CHUNK], &mut member);
        assert_eq!(out[..member.len()], member[..], "level 0 is a stored member");
    }
}
