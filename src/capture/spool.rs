//! A spool: a stream copied into an unlinked temporary file by a task of its own, and read back from the start
//! by a reader that follows the copy. A node's volumes leave the node at the node's pace while the bundle,
//! which takes one stream at a time, is still busy with another node's: the nodes are read at once and can be
//! thawed as soon as the last byte left them. Memory holds one chunk per side; the disk holds what is read
//! ahead of the bundle, until the spool is dropped.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use tokio::io::AsyncRead;
use tokio::sync::watch;
use tokio_util::io::StreamReader;

use crate::util::Task;

/// Bytes moved at once, each way.
const CHUNK: usize = 256 * 1024;

/// How far the copy got.
#[derive(Clone, Debug)]
enum State {
    Copying(u64),
    Done(u64),
    /// The source or the file failed (kind, message: `io::Error` is not `Clone`).
    Failed(io::ErrorKind, String),
}

pub struct Spool {
    file: Arc<File>,
    state: watch::Receiver<State>,
    /// Aborted when the spool is dropped; the file goes with the last handle.
    _copy: Task<()>,
}

impl Spool {
    /// Starts copying `src` into a new unlinked file in `dir` (mode 0600).
    pub fn start(dir: &Path, src: impl AsyncRead + Send + Unpin + 'static) -> io::Result<Self> {
        let file = tempfile::tempfile_in(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating a temporary file in {}: {e}", dir.display())))?;
        let file = Arc::new(file);
        let (tx, state) = watch::channel(State::Copying(0));
        let copy = Task::spawn(copy(src, Arc::clone(&file), tx, dir.display().to_string()));
        Ok(Self {
            file,
            state,
            _copy: copy,
        })
    }

    /// Waits until the source is read to its end: the bytes copied, or why the copy failed.
    pub async fn copied(&self) -> io::Result<u64> {
        let mut state = self.state.clone();
        let settled = state
            .wait_for(|s| !matches!(s, State::Copying(_)))
            .await
            .map_err(|_| gone())?
            .clone();
        match settled {
            State::Done(n) => Ok(n),
            State::Failed(kind, msg) => Err(io::Error::new(kind, msg)),
            State::Copying(_) => unreachable!("waited for a settled state"),
        }
    }

    /// The copied bytes from the start; at the end of what is copied so far it waits for more, and it fails
    /// where the copy failed.
    pub fn reader(&self) -> impl AsyncRead + Send + Unpin + 'static {
        let start = (Arc::clone(&self.file), self.state.clone(), 0u64);
        let chunks = futures_util::stream::try_unfold(start, |(file, mut state, at)| async move {
            loop {
                let (copied, done) = match &*state.borrow_and_update() {
                    State::Copying(n) => (*n, false),
                    State::Done(n) => (*n, true),
                    State::Failed(kind, msg) => return Err(io::Error::new(*kind, msg.clone())),
                };
                if at < copied {
                    let len = usize::try_from(copied - at).map_or(CHUNK, |n| n.min(CHUNK));
                    // Allocated here, not on the blocking thread: glibc keeps what a thread frees in that
                    // thread's arena, and the blocking pool has several.
                    let (f, mut buf) = (Arc::clone(&file), vec![0; len]);
                    let chunk = tokio::task::spawn_blocking(move || f.read_exact_at(&mut buf, at).map(|()| buf))
                        .await
                        .map_err(io::Error::other)??;
                    return Ok(Some((Bytes::from(chunk), (file, state, at + len as u64))));
                }
                if done {
                    return Ok(None);
                }
                state.changed().await.map_err(|_| gone())?;
            }
        });
        StreamReader::new(Box::pin(chunks.into_stream()))
    }
}

fn gone() -> io::Error {
    io::Error::other("the temporary copy was abandoned")
}

/// Copies `src` into `file` chunk by chunk, publishing how far it got.
async fn copy(mut src: impl AsyncRead + Unpin, file: Arc<File>, tx: watch::Sender<State>, dir: String) {
    let mut at = 0u64;
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.clear();
        let eof = match crate::util::fill(&mut src, &mut buf, CHUNK).await {
            Ok(eof) => eof,
            Err(e) => {
                let _ = tx.send(State::Failed(e.kind(), e.to_string()));
                return;
            }
        };
        if !buf.is_empty() {
            let (f, data) = (Arc::clone(&file), std::mem::take(&mut buf));
            let written = tokio::task::spawn_blocking(move || f.write_all_at(&data, at).map(|()| data)).await;
            match written {
                Ok(Ok(data)) => {
                    at += data.len() as u64;
                    buf = data;
                }
                Ok(Err(e)) => {
                    let msg = format!("writing a temporary copy in {dir}: {e}");
                    let _ = tx.send(State::Failed(e.kind(), msg));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(State::Failed(io::ErrorKind::Other, e.to_string()));
                    return;
                }
            }
            let _ = tx.send(State::Copying(at));
        }
        if eof {
            let _ = tx.send(State::Done(at));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reader started before the source wrote anything gets every byte, in order, as the source writes it.
    #[tokio::test]
    async fn the_reader_follows_the_copy_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r) = tokio::io::duplex(4096);
        let spool = Spool::start(dir.path(), r).unwrap();
        let mut reader = spool.reader();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 31 % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            for part in data.chunks(10_000) {
                w.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
        assert_eq!(spool.copied().await.unwrap(), expected.len() as u64);
        // Nothing is left in the directory: the file was never linked into it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A source that fails fails the reader with its error, after the bytes that did arrive.
    #[tokio::test]
    async fn a_failed_source_fails_the_reader_and_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let src = tokio_util::io::StreamReader::new(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"some bytes")),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "node went away")),
        ]));
        let spool = Spool::start(dir.path(), src).unwrap();
        let err = spool.copied().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let mut got = Vec::new();
        let err = spool.reader().read_to_end(&mut got).await.unwrap_err();
        assert!(err.to_string().contains("node went away"), "{err}");
    }

    /// An empty source is an empty spool.
    #[tokio::test]
    async fn an_empty_source_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::start(dir.path(), tokio::io::empty()).unwrap();
        let mut got = Vec::new();
        spool.reader().read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(spool.copied().await.unwrap(), 0);
    }

    /// A directory that cannot hold the file says which directory.
    #[tokio::test]
    async fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let err = Spool::start(&missing, tokio::io::empty()).err().unwrap();
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
