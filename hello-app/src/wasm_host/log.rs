//! A Pod's log in memory: the latest of what its component writes to stderr, for
//! `kubectl logs`.
//!
//! wasmtime-wasi's `MemoryOutputPipe` traps the guest once it is full, which would turn a
//! long-lived Pod's requests into 500s; this buffer drops its oldest lines instead, as a
//! container runtime rotates a container's log.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The most one write may carry, as wasi:io's `check-write` reports it.
const WRITE_PERMIT: usize = 4096;

/// The latest `capacity` bytes a Pod wrote, starting at a whole line. Cheap to clone; clones
/// share the buffer.
#[derive(Debug, Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<Ring>>,
}

#[derive(Debug)]
struct Ring {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Bytes dropped from the front so far: the position of `bytes[0]` in everything written.
    dropped: u64,
}

impl LogBuffer {
    /// A buffer keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Ring {
                bytes: VecDeque::new(),
                capacity,
                dropped: 0,
            })),
        }
    }

    /// What is kept, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        let ring = self.lock();
        let (front, back) = ring.bytes.as_slices();
        [front, back].concat()
    }

    /// What was written from position `from` on (counted from the first byte ever written;
    /// what was dropped since is skipped), and the position after it, where the next read
    /// starts: what a reader following the log reads.
    pub fn since(&self, from: u64) -> (Vec<u8>, u64) {
        let ring = self.lock();
        let end = ring.dropped + ring.bytes.len() as u64;
        let skip = usize::try_from(from.saturating_sub(ring.dropped))
            .unwrap_or(usize::MAX)
            .min(ring.bytes.len());
        (ring.bytes.range(skip..).copied().collect(), end)
    }

    /// Appends `bytes`, dropping the oldest lines first as far as needed to stay within the
    /// capacity (never more, never less than whole lines), so that the buffer never grows
    /// past it.
    pub fn append(&self, bytes: &[u8]) {
        let mut ring = self.lock();
        let over = (ring.bytes.len() + bytes.len()).saturating_sub(ring.capacity);
        if over == 0 {
            ring.bytes.extend(bytes);
            return;
        }
        // Cut after the end of the line that the first `over` bytes end in.
        let kept = ring.bytes.len();
        let cut = (over <= kept)
            .then(|| {
                ring.bytes
                    .range(over - 1..)
                    .position(|&b| b == b'\n')
                    .map(|i| over + i)
            })
            .flatten();
        if let Some(cut) = cut {
            ring.bytes.drain(..cut);
            ring.dropped += cut as u64;
            ring.bytes.extend(bytes);
            return;
        }
        // All that was kept goes, with the rest of its last line if that was unfinished, and
        // of the new bytes whatever still does not fit, again up to a line's end.
        let unfinished = ring.bytes.back().is_some_and(|&b| b != b'\n');
        ring.dropped += kept as u64;
        ring.bytes.clear();
        let mut start = if unfinished {
            bytes
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| i + 1)
        } else {
            0
        };
        let over = (bytes.len() - start).saturating_sub(ring.capacity);
        if over > 0 {
            start = bytes[start + over - 1..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| start + over + i);
        }
        ring.dropped += start as u64;
        ring.bytes.extend(&bytes[start..]);
    }

    /// Appends one line as the original's `log` package writes it, timestamp first: what a
    /// host writes on the app's behalf (`Server listening on port 8080` as its server starts,
    /// which a wasi:http component has no moment to write itself).
    pub fn log(&self, message: &str) {
        let line = crate::respond::log_line(time::OffsetDateTime::now_utc(), message);
        self.append(line.as_bytes());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while appending leaves bytes, not a broken invariant.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OutputStream for LogBuffer {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogBuffer {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for LogBuffer {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogBuffer {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_until_full() {
        let log = LogBuffer::new(64);
        log.append(b"one\n");
        log.append(b"two\n");
        assert_eq!(log.contents(), b"one\ntwo\n");
    }

    #[test]
    fn drops_whole_old_lines_when_full() {
        let log = LogBuffer::new(10);
        log.append(b"first\n");
        log.append(b"second\n");
        // 13 bytes: "first\n" goes, and only whole lines remain.
        assert_eq!(log.contents(), b"second\n");
        // 11 bytes: "second\n" goes too, though one byte over would do.
        log.append(b"3\n4\n");
        assert_eq!(log.contents(), b"3\n4\n");
    }

    #[test]
    fn a_follower_reads_each_byte_once_and_skips_what_was_dropped() {
        let log = LogBuffer::new(10);
        let (first, at) = log.since(0);
        assert!(first.is_empty());
        log.append(b"ab\n");
        let (next, at) = log.since(at);
        assert_eq!(next, b"ab\n");
        assert_eq!(log.since(at), (Vec::new(), 3));
        // Past the capacity: "ab\n", which the reader has read, is dropped; it reads on from
        // where it stopped.
        log.append(b"cdefg\n");
        log.append(b"hij\n");
        assert_eq!(log.contents(), b"cdefg\nhij\n");
        assert_eq!(log.since(at), (b"cdefg\nhij\n".to_vec(), 13));
        // A reader that fell behind what was dropped gets what is kept.
        log.append(b"k\n");
        assert_eq!(log.since(at), (b"hij\nk\n".to_vec(), 15));
    }

    #[test]
    fn drops_no_more_than_it_must() {
        // Dropping the first line exactly makes room: nothing else goes.
        let log = LogBuffer::new(10);
        log.append(b"a\n");
        log.append(b"bcdefghij\n");
        assert_eq!(log.contents(), b"bcdefghij\n");
        // An unfinished last line goes with its end when everything kept must go.
        let log = LogBuffer::new(6);
        log.append(b"abc");
        log.append(b"de\nfgh\n");
        assert_eq!(log.contents(), b"fgh\n");
        assert_eq!(log.since(0), (b"fgh\n".to_vec(), 10));
    }

    #[test]
    fn a_line_longer_than_the_buffer_leaves_it_empty() {
        let log = LogBuffer::new(4);
        log.append(b"0123456789\n");
        assert!(log.contents().is_empty());
        log.append(b"ab\n");
        assert_eq!(log.contents(), b"ab\n");
    }
}
