//! The one verified copy pipeline (issues 11 and 14): a payload's verified
//! blocks into a [`SlotDevice`], used by `install` (the target slot) and by
//! the factory (its scratch files), plus the read-back hash of a written
//! range.
//!
//! Per byte: one SHA-256 pass (the reader's chunk check against the signed
//! manifest, on the calling thread), no copy between reader and writer
//! (the writer gets the reader's own buffers), one write, and one read-back
//! compared with the verified block still in memory (no second hash). The
//! writing and reading back run on a thread of their own, so hashing chunk
//! n+1 overlaps writing chunk n; writeback starts every [`RANGE`] bytes and
//! each range is read back from the media (its cache dropped) while the
//! next one is written. A bounded queue keeps the source (a file, or an
//! HTTP socket) busy while the disk writes. Memory: the queue plus about
//! two ranges of blocks held for their read-back.
//!
//! Invariant I7 holds because only blocks from `PayloadReader::next_block`
//! (chunks whose SHA-256 matched the signed manifest) are ever written;
//! slot writes and flushes go through the `SlotDevice`, so the power-cut
//! test sees each of them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;

use abkit_bundle::{PayloadReader, VerifiedBlock};
use sha2::{Digest, Sha256};

use crate::machine::SlotDevice;
use crate::progress::{Event, Reporter, Step};
use crate::{Result, Slot, UpdateError};

/// Writeback and read-back granularity.
const RANGE: u64 = 4 << 20;
/// Smallest write: smaller verified chunks are gathered up to this size.
const WRITE_BLOCK: usize = 1 << 20;
/// Verified blocks queued between the reader and the writer.
const QUEUE: usize = 2;
/// Size of the blocks of a read-back hash.
const BLOCK: usize = 1 << 20;

/// Bytes on their way to the slot: a verified block of the reader (no copy),
/// or small verified blocks gathered into one write block.
enum Bytes {
    Shared(VerifiedBlock),
    Gathered(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Shared(block) => block,
            Bytes::Gathered(bytes) => bytes,
        }
    }
}

enum Msg {
    Block(u64, Bytes),
    /// The payload reached its verified end.
    End,
}

/// Streams payload `p` into `dev` from byte 0, checks that every range
/// reads back as written, and flushes `dev` at the end. Returns the bytes
/// written. On error `dev` may hold verified bytes of an unfinished
/// payload; nothing unverified is ever written.
pub(crate) fn copy_payload<R: Read>(
    p: &mut PayloadReader<'_, R>,
    dev: &mut dyn SlotDevice,
    slot: Slot,
    step: Step,
    rep: &mut dyn Reporter,
) -> Result<u64> {
    let total = p.entry().size;
    // The chunk hashes cover every byte of a plain payload, and what is
    // written is compared with the verified blocks: the whole-payload hash
    // would be a second pass over every byte.
    p.rely_on_chunk_hashes();
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("abkit-slot-writer".into())
            .spawn_scoped(scope, move || write_and_check(dev, rx, slot))
            .map_err(UpdateError::io("start the slot writer"))?;
        let produced = (|| -> Result<u64> {
            // Bytes sent so far, and small blocks gathered after them.
            let (mut offset, mut gathered) = (0u64, Vec::new());
            loop {
                let block = p.next_block()?;
                let bytes = match block {
                    // A whole write block (chunks of 1 MiB and more, zstd
                    // output): handed on as it is.
                    Some(block) if gathered.is_empty() && block.len() >= WRITE_BLOCK => {
                        Bytes::Shared(block)
                    }
                    // Smaller chunks are gathered, so that the slot gets
                    // large writes, each made only of verified chunks.
                    Some(block) => {
                        gathered.extend_from_slice(&block);
                        if gathered.len() < WRITE_BLOCK {
                            continue;
                        }
                        Bytes::Gathered(std::mem::take(&mut gathered))
                    }
                    None if gathered.is_empty() => break,
                    None => Bytes::Gathered(std::mem::take(&mut gathered)),
                };
                let len = bytes.len() as u64;
                // A closed queue means the writer stopped: its error follows.
                if tx.send(Msg::Block(offset, bytes)).is_err() {
                    return Ok(offset);
                }
                offset += len;
                rep.event(Event::Progress {
                    step,
                    done: offset,
                    total,
                });
            }
            let _ = tx.send(Msg::End);
            Ok(offset)
        })();
        drop(tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(UpdateError::io("slot writer")(io::Error::other(
                "the slot writer thread panicked",
            )))
        });
        let n = produced?;
        written?;
        Ok(n)
    })
}

/// The writer: writes each block, starts writeback every [`RANGE`] bytes,
/// and reads each range back (after its writeback, from the media) while
/// the next is written, comparing it with the blocks it came from. At the
/// verified end, the rest is read back and `dev` flushed. A queue closed
/// without `End` (the reader failed) stops it without a flush.
fn write_and_check(dev: &mut dyn SlotDevice, rx: mpsc::Receiver<Msg>, slot: Slot) -> Result<()> {
    let mut held: VecDeque<(u64, Bytes)> = VecDeque::new();
    let mut ranges: VecDeque<(u64, u64)> = VecDeque::new();
    let (mut kicked, mut written) = (0u64, 0u64);
    let mut scratch = Vec::new();
    loop {
        let end = match rx.recv() {
            Ok(Msg::Block(offset, block)) => {
                dev.write_at(offset, &block)
                    .map_err(UpdateError::io(format!(
                        "write slot {} at byte {offset}",
                        slot.letter()
                    )))?;
                written = offset + block.len() as u64;
                held.push_back((offset, block));
                false
            }
            Ok(Msg::End) => true,
            Err(_) => return Ok(()),
        };
        if written - kicked >= RANGE || (end && written > kicked) {
            dev.start_writeback(kicked, written - kicked);
            ranges.push_back((kicked, written));
            kicked = written;
        }
        // Keep one range in writeback while the next is written; read back
        // the ones before it (all of them at the end).
        while ranges.len() > usize::from(!end) {
            let Some((start, stop)) = ranges.pop_front() else {
                break;
            };
            dev.settle(start, stop - start);
            while held.front().is_some_and(|(offset, _)| *offset < stop) {
                let Some((offset, block)) = held.pop_front() else {
                    break;
                };
                check_block(dev, offset, &block, &mut scratch, slot)?;
            }
        }
        if end {
            return dev
                .flush()
                .map_err(UpdateError::io(format!("flush slot {}", slot.letter())));
        }
    }
}

/// Reads `block.len()` bytes at `offset` back and compares them with the
/// verified block.
fn check_block(
    dev: &mut dyn SlotDevice,
    offset: u64,
    block: &[u8],
    scratch: &mut Vec<u8>,
    slot: Slot,
) -> Result<()> {
    scratch.resize(block.len(), 0);
    dev.read_at(offset, scratch)
        .map_err(UpdateError::io(format!(
            "read back slot {} at byte {offset}",
            slot.letter()
        )))?;
    if scratch[..] != *block {
        return Err(UpdateError::ReadBackMismatch {
            slot,
            expected: hex::encode(Sha256::digest(block)),
            found: format!(
                "{} (the {} bytes at byte {offset})",
                hex::encode(Sha256::digest(&scratch[..])),
                block.len()
            ),
        });
    }
    Ok(())
}

/// Reads the first `size` bytes of `dev` and checks their SHA-256 against
/// `expected` (hex); the hashing overlaps the reads on a thread of its own.
pub(crate) fn check_sha256(
    dev: &mut dyn SlotDevice,
    size: u64,
    expected: &str,
    slot: Slot,
    rep: &mut dyn Reporter,
) -> Result<()> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..=QUEUE {
        let _ = free_tx.send(Vec::with_capacity(BLOCK));
    }
    let found = std::thread::scope(|scope| -> Result<String> {
        let hasher = scope.spawn(move || {
            let mut hasher = Sha256::new();
            for buf in full_rx {
                hasher.update(&buf);
                if free_tx.send(buf).is_err() {
                    break;
                }
            }
            hex::encode(hasher.finalize())
        });
        let read = (|| -> Result<()> {
            let mut offset = 0u64;
            while offset < size {
                let Ok(mut buf) = free_rx.recv() else { break };
                let n = (size - offset).min(BLOCK as u64) as usize;
                buf.resize(n, 0);
                dev.read_at(offset, &mut buf)
                    .map_err(UpdateError::io(format!(
                        "read back slot {} at byte {offset}",
                        slot.letter()
                    )))?;
                if full_tx.send(buf).is_err() {
                    break;
                }
                offset += n as u64;
                rep.event(Event::Progress {
                    step: Step::CheckSystem,
                    done: offset,
                    total: size,
                });
            }
            Ok(())
        })();
        drop(full_tx);
        let digest = hasher.join();
        read?;
        digest.map_err(|_| {
            UpdateError::io("read-back hashing")(io::Error::other("the hashing thread panicked"))
        })
    })?;
    if found != expected {
        return Err(UpdateError::ReadBackMismatch {
            slot,
            expected: expected.to_string(),
            found,
        });
    }
    Ok(())
}

/// A new file as a sink: all-zero 4 KiB blocks become holes. Its flush is
/// a no-op (a scratch file, not a slot: what is built from it is checked
/// and flushed where it lands).
pub(crate) struct SparseFile {
    pub file: File,
    len: u64,
}

impl SparseFile {
    pub fn new(file: File) -> SparseFile {
        SparseFile { file, len: 0 }
    }
}

/// Granularity of holes in a [`SparseFile`].
const HOLE_BLOCK: usize = 4096;

impl SlotDevice for SparseFile {
    fn size(&self) -> u64 {
        u64::MAX
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::other("offset overflow"))?;
        if end > self.len {
            self.file.set_len(end)?;
            self.len = end;
        }
        for (i, block) in buf.chunks(HOLE_BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                self.file
                    .write_all_at(block, offset + (i * HOLE_BLOCK) as u64)?;
            }
        }
        Ok(())
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
