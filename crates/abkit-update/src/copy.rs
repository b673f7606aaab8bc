//! The one verified copy pipeline (issues 11 and 14): a payload's verified
//! blocks into a [`SlotDevice`], used by `install` (the target slot) and by
//! the factory (its scratch files), plus the read-back hash of a written
//! range.
//!
//! Per byte: one SHA-256 pass on each core. The reader checks every chunk
//! against the signed manifest on the calling thread; the writer thread
//! gets the reader's own buffers (no copy), writes them, starts writeback
//! every [`RANGE`] bytes, and reads each range back from the media (its
//! cache dropped) into a SHA-256 compared with the manifest's at the end,
//! while the next [`IN_WRITEBACK`] bytes are on their way to the disk. So
//! hashing chunk n+1 overlaps writing chunk n, and the read-back overlaps
//! the writing. A bounded queue keeps the source (a file, or an HTTP
//! socket) busy while the disk writes. Memory: a few 1 MiB blocks.
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
/// Bytes kept in writeback before the oldest range is read back.
const IN_WRITEBACK: u64 = 32 << 20;
/// Smallest write: smaller verified chunks are gathered up to this size.
pub(crate) const WRITE_BLOCK: usize = 1 << 20;
/// Verified blocks queued between the reader and the writer.
const QUEUE: usize = 2;
/// Size of the blocks of a read-back hash.
const BLOCK: usize = 1 << 20;

/// Bytes on their way to the slot: a verified block of the reader (no copy),
/// or small verified blocks gathered into one write block (also what a delta
/// install assembles from reused and fetched blocks).
pub(crate) enum Bytes {
    Shared(VerifiedBlock),
    Gathered(Vec<u8>),
    /// Like `Gathered`, and the buffer goes back to `home` once written,
    /// so that a producer reuses a few buffers instead of allocating one
    /// per write block.
    Recycled {
        buf: Vec<u8>,
        home: mpsc::Sender<Vec<u8>>,
    },
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Bytes::Recycled { buf, home } = self {
            let _ = home.send(std::mem::take(buf));
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Shared(block) => block,
            Bytes::Gathered(bytes) => bytes,
            Bytes::Recycled { buf, .. } => buf,
        }
    }
}

enum Msg {
    Block(u64, Bytes),
    /// The payload reached its verified end.
    End,
}

/// Streams payload `p` into `dev` from byte 0, checks that what it reads
/// back has the manifest's SHA-256, and flushes `dev` at the end. Returns the bytes
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
    let expected = p.entry().sha256.to_string();
    // The chunk hashes cover every byte of a plain payload, and what is read
    // back is hashed against the manifest: the reader's whole-payload hash
    // would be a third pass over every byte.
    p.rely_on_chunk_hashes();
    let mut gathered = Vec::new();
    let mut next = || -> Result<Option<Bytes>> {
        loop {
            let block = p.next_block()?;
            return Ok(Some(match block {
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
                None if gathered.is_empty() => return Ok(None),
                None => Bytes::Gathered(std::mem::take(&mut gathered)),
            }));
        }
    };
    copy_blocks(&mut next, total, &expected, dev, slot, step, rep)
}

/// The pipeline behind [`copy_payload`]: writes the verified blocks `next`
/// hands out (in order, from byte 0; `None` at the verified end) into
/// `dev`, reads them back against the SHA-256 `expected` (hex) and flushes
/// `dev` at the end. Returns the bytes written.
pub(crate) fn copy_blocks(
    next: &mut dyn FnMut() -> Result<Option<Bytes>>,
    total: u64,
    expected: &str,
    dev: &mut dyn SlotDevice,
    slot: Slot,
    step: Step,
    rep: &mut dyn Reporter,
) -> Result<u64> {
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("abkit-slot-writer".into())
            .spawn_scoped(scope, move || write_and_check(dev, rx, slot, expected))
            .map_err(UpdateError::io("start the slot writer"))?;
        let produced = (|| -> Result<u64> {
            let mut offset = 0u64;
            while let Some(bytes) = next()? {
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
/// and once more than [`IN_WRITEBACK`] bytes are on their way to the media
/// reads the oldest range back (after its writeback, from the media) into
/// the read-back SHA-256, while later ranges are written. At the verified
/// end the rest is read back, the digest compared with the manifest's, and
/// `dev` flushed. A queue closed without `End` (the reader failed) stops it
/// without a flush.
fn write_and_check(
    dev: &mut dyn SlotDevice,
    rx: mpsc::Receiver<Msg>,
    slot: Slot,
    expected: &str,
) -> Result<()> {
    let mut ranges: VecDeque<(u64, u64)> = VecDeque::new();
    let (mut kicked, mut written) = (0u64, 0u64);
    let mut hasher = Sha256::new();
    let mut scratch = vec![0u8; BLOCK];
    // Ranges settled (their read from the media under way), not yet read.
    let mut settled: VecDeque<(u64, u64)> = VecDeque::new();
    loop {
        let end = match rx.recv() {
            Ok(Msg::Block(offset, block)) => {
                dev.write_at(offset, &block)
                    .map_err(UpdateError::io(format!(
                        "write slot {} at byte {offset}",
                        slot.letter()
                    )))?;
                written = offset + block.len() as u64;
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
        // Keep IN_WRITEBACK bytes on their way to the media (a deep queue,
        // as one big flush would have); read back the ranges before them
        // (all of them at the end).
        while let Some(&(start, stop)) = ranges.front() {
            if !end && kicked - stop < IN_WRITEBACK {
                break;
            }
            ranges.pop_front();
            dev.settle(start, stop - start);
            settled.push_back((start, stop));
            // Read the range settled before this one: its read from the
            // media had time to get under way.
            if !end && settled.len() < 2 {
                continue;
            }
            let Some((start, stop)) = settled.pop_front() else {
                break;
            };
            read_back(dev, start, stop, &mut scratch, &mut hasher, slot)?;
        }
        if end {
            for (start, stop) in std::mem::take(&mut settled) {
                read_back(dev, start, stop, &mut scratch, &mut hasher, slot)?;
            }
            let found = hex::encode(hasher.finalize());
            if found != expected {
                return Err(UpdateError::ReadBackMismatch {
                    slot,
                    expected: expected.to_string(),
                    found,
                });
            }
            return dev
                .flush()
                .map_err(UpdateError::io(format!("flush slot {}", slot.letter())));
        }
    }
}

/// Reads bytes `start..stop` of `dev` into `hasher`.
fn read_back(
    dev: &mut dyn SlotDevice,
    start: u64,
    stop: u64,
    scratch: &mut [u8],
    hasher: &mut Sha256,
    slot: Slot,
) -> Result<()> {
    let mut at = start;
    while at < stop {
        let n = (stop - at).min(scratch.len() as u64) as usize;
        dev.read_at(at, &mut scratch[..n])
            .map_err(UpdateError::io(format!(
                "read back slot {} at byte {at}",
                slot.letter()
            )))?;
        hasher.update(&scratch[..n]);
        at += n as u64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use abkit_bundle::{BundleReader, CreateOptions, Keyring, PayloadSpec, SecretKey};

    /// A slot in memory that can lose one write (as a failing disk might)
    /// and says whether it was flushed.
    struct MemSlot {
        data: Vec<u8>,
        lose_write_at: Option<u64>,
        flushed: bool,
    }

    impl SlotDevice for MemSlot {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
            if self.lose_write_at != Some(offset) {
                let at = offset as usize;
                self.data[at..at + buf.len()].copy_from_slice(buf);
            }
            Ok(())
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.data[at..at + buf.len()]);
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushed = true;
            Ok(())
        }
    }

    /// A bundle whose system payload is 9 MiB of varied bytes (more than
    /// two writeback ranges), with `chunk_size` chunks.
    fn bundle(dir: &std::path::Path, chunk_size: u32) -> (Vec<u8>, Keyring) {
        let system: Vec<u8> = (0..9u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(dir.join("system.img"), &system).unwrap();
        let key = SecretKey::from_seed(&[7; 32]);
        let public = key.public_key();
        let mut opts = CreateOptions::new("demo-os", "1.0.0".parse().unwrap());
        opts.chunk_size = chunk_size;
        let spec = PayloadSpec {
            name: "system".into(),
            path: dir.join("system.img"),
            verity: false,
        };
        let out = dir.join("b.abb");
        abkit_bundle::create_bundle(&out, &[spec], &opts, &[key], &mut |_| {}).unwrap();
        (
            std::fs::read(&out).unwrap(),
            Keyring::from_keys(vec![public]),
        )
    }

    fn copy(bytes: &[u8], ring: &Keyring, slot: &mut MemSlot) -> Result<u64> {
        let mut b = BundleReader::open(bytes, ring).unwrap();
        let mut p = b.next_payload().unwrap().unwrap();
        let n = copy_payload(&mut p, slot, Slot::B, Step::WriteSystem, &mut Silent)?;
        p.finish()?;
        Ok(n)
    }

    #[test]
    fn a_good_copy_is_read_back_and_flushed() {
        let dir = tempfile::tempdir().unwrap();
        for chunk_size in [1 << 20, 64 << 10] {
            let (bytes, ring) = bundle(dir.path(), chunk_size);
            let mut slot = MemSlot {
                data: vec![0; 10 << 20],
                lose_write_at: None,
                flushed: false,
            };
            assert_eq!(copy(&bytes, &ring, &mut slot).unwrap(), 9 << 20);
            assert!(slot.flushed);
            let system = std::fs::read(dir.path().join("system.img")).unwrap();
            assert_eq!(&slot.data[..9 << 20], &system[..]);
        }
    }

    #[test]
    fn a_lost_write_fails_the_read_back_and_the_slot_is_not_flushed() {
        let dir = tempfile::tempdir().unwrap();
        for chunk_size in [1 << 20, 64 << 10] {
            let (bytes, ring) = bundle(dir.path(), chunk_size);
            for lost in [0, 5 << 20, 8 << 20] {
                let mut slot = MemSlot {
                    data: vec![0; 10 << 20],
                    lose_write_at: Some(lost),
                    flushed: false,
                };
                let err = copy(&bytes, &ring, &mut slot).unwrap_err();
                assert!(
                    matches!(err, UpdateError::ReadBackMismatch { slot: Slot::B, .. }),
                    "{err}"
                );
                assert!(!slot.flushed, "lost write at {lost}");
            }
        }
    }
}
