//! The one verified copy pipeline (issues 11 and 14): a payload's verified
//! blocks into a [`SlotDevice`], used by `install` (the target slot) and by
//! the factory (its scratch files), plus the read-back hash of a written
//! range.
//!
//! Per byte: one BLAKE3 pass on the reader's core (the chunk check of
//! bundle format 3), two BLAKE3 passes on the writer's. The reader checks every chunk against the signed
//! manifest on the calling thread; the writer thread gets the reader's own
//! buffers (no copy), hashes each with BLAKE3 as it writes it, starts
//! writeback every [`RANGE`] bytes, and reads each range back from the
//! media (its cache dropped) into a BLAKE3 compared with what it wrote
//! there, while the next [`IN_WRITEBACK`] bytes are on their way to the
//! disk. So hashing chunk n+1 overlaps writing chunk n, and the read-back
//! overlaps the writing. A bounded queue keeps the source (a file, or an
//! HTTP socket) busy while the disk writes. Memory: a few 1 MiB blocks.
//! [`copy_blocks`] (delta installs) reads back against the whole
//! payload's BLAKE3 from the manifest instead.
//!
//! A payload with a dm-verity tree (every system payload `bundle create`
//! makes) is not read back at all when it goes into a slot
//! ([`ReadBack::for_payload`], issue 14): mark-good checks the whole slot
//! against the signed root hash before it commits (`crate::written_check`),
//! so the read-back is off the install's critical path and every byte is
//! still checked on the media before the slot can become the default.
//!
//! Invariant I7 holds because only blocks from `PayloadReader::next_block`
//! (chunks whose BLAKE3 matched the signed manifest) are ever written;
//! slot writes and flushes go through the `SlotDevice`, so the power-cut
//! test sees each of them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;

use abkit_bundle::{PayloadEntry, PayloadReader, VerifiedBlock};

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

/// Whether the writer reads what it wrote back from the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadBack {
    /// Read every range back while later ones are written (the factory's
    /// scratch files, payloads without a verity tree).
    Now,
    /// No read-back: the payload has a verity tree and goes into a slot
    /// whose record says `written_check: pending`; mark-good checks it.
    AtCommit,
}

impl ReadBack {
    /// The one rule for slots (full and delta installs): a payload with a
    /// signed verity tree is checked at commit, any other now.
    pub(crate) fn for_payload(entry: &PayloadEntry) -> ReadBack {
        if entry.verity.is_some() {
            ReadBack::AtCommit
        } else {
            ReadBack::Now
        }
    }
}

/// Streams payload `p` into `dev` from byte 0, checks what it reads back
/// against what it wrote (unless `read_back` defers that to the commit),
/// and flushes `dev` at the end. Returns the bytes written. On error `dev`
/// may hold verified bytes of an unfinished payload; nothing unverified is
/// ever written.
pub(crate) fn copy_payload<R: Read>(
    p: &mut PayloadReader<'_, R>,
    dev: &mut dyn SlotDevice,
    slot: Slot,
    step: Step,
    read_back: ReadBack,
    rep: &mut dyn Reporter,
) -> Result<u64> {
    let total = p.entry().size;
    // The chunk hashes cover every byte of a plain payload, and every block
    // the writer gets passed them: the reader's whole-payload hash would be
    // one more pass over every byte.
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
    // Every block is verified (I7) and the blocks come in order from byte
    // 0: the read-back checks the media against what was written.
    let check = match read_back {
        ReadBack::Now => Check::Written,
        ReadBack::AtCommit => Check::AtCommit,
    };
    pipeline(&mut next, total, check, dev, slot, step, rep)
}

/// The pipeline behind [`copy_payload`]: writes the verified blocks `next`
/// hands out (in order, from byte 0; `None` at the verified end) of
/// payload `entry` into `dev`, reads them back against its BLAKE3 (unless
/// [`ReadBack::for_payload`] defers the check to the commit) and flushes
/// `dev` at the end. Returns the bytes written.
pub(crate) fn copy_blocks(
    next: &mut dyn FnMut() -> Result<Option<Bytes>>,
    total: u64,
    entry: &PayloadEntry,
    dev: &mut dyn SlotDevice,
    slot: Slot,
    step: Step,
    rep: &mut dyn Reporter,
) -> Result<u64> {
    let expected = entry.blake3.to_string();
    let check = match ReadBack::for_payload(entry) {
        ReadBack::Now => Check::Whole(&expected),
        ReadBack::AtCommit => Check::AtCommit,
    };
    pipeline(next, total, check, dev, slot, step, rep)
}

/// Writes what `next` hands out into `dev` on a writer thread, read back
/// and checked as `check` says; the calling thread produces the blocks.
fn pipeline(
    next: &mut dyn FnMut() -> Result<Option<Bytes>>,
    total: u64,
    check: Check<'_>,
    dev: &mut dyn SlotDevice,
    slot: Slot,
    step: Step,
    rep: &mut dyn Reporter,
) -> Result<u64> {
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("abkit-slot-writer".into())
            .spawn_scoped(scope, move || write_and_check(dev, rx, slot, check))
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

/// What the read-back compares the media with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check<'a> {
    /// The BLAKE3 (hex) of the whole payload (the manifest's `blake3`), for
    /// producers whose blocks were not all checked on their way in.
    Whole(&'a str),
    /// Each writeback range against the BLAKE3 of the verified bytes the
    /// writer was given for it (issue 14): BLAKE3 is 2.5-3x faster than
    /// SHA-256 here, and a mismatch names its range.
    Written,
    /// No read-back ([`ReadBack::AtCommit`]): ranges are still flushed
    /// steadily and dropped from the cache, not read.
    AtCommit,
}

/// A range on its way to the media: bytes `start..stop`, and under
/// [`Check::Written`] the BLAKE3 of what was written there.
#[derive(Clone, Copy)]
struct Range {
    start: u64,
    stop: u64,
    written: Option<[u8; 32]>,
}

/// The writer: writes each block, starts writeback every [`RANGE`] bytes,
/// and once more than [`IN_WRITEBACK`] bytes are on their way to the media
/// reads the oldest range back (after its writeback, from the media) and
/// checks it as `check` says, while later ranges are written. At the
/// verified end the rest is read back and checked, and `dev` flushed. A
/// queue closed without `End` (the reader failed) stops it without a
/// flush.
fn write_and_check(
    dev: &mut dyn SlotDevice,
    rx: mpsc::Receiver<Msg>,
    slot: Slot,
    check: Check<'_>,
) -> Result<()> {
    let mut ranges: VecDeque<Range> = VecDeque::new();
    let (mut kicked, mut written) = (0u64, 0u64);
    let mut whole = blake3::Hasher::new();
    let mut range_hash = blake3::Hasher::new();
    let mut scratch = vec![0u8; BLOCK];
    // Ranges settled (their read from the media under way), not yet read.
    let mut settled: VecDeque<Range> = VecDeque::new();
    let mut read_back = |dev: &mut dyn SlotDevice, r: Range| -> Result<()> {
        match r.written {
            None if check == Check::AtCommit => Ok(()),
            None => read_range(dev, r.start, r.stop, &mut scratch, &mut whole, slot),
            Some(expected) => {
                let mut h = blake3::Hasher::new();
                read_range(dev, r.start, r.stop, &mut scratch, &mut h, slot)?;
                let found = h.finalize();
                if found.as_bytes() == &expected {
                    return Ok(());
                }
                let what = |d: &[u8]| {
                    format!("BLAKE3 {} of bytes {}..{}", hex::encode(d), r.start, r.stop)
                };
                Err(UpdateError::ReadBackMismatch {
                    slot,
                    expected: what(&expected),
                    found: what(found.as_bytes()),
                })
            }
        }
    };
    loop {
        let end = match rx.recv() {
            Ok(Msg::Block(offset, block)) => {
                // The ranges and their hashes assume one stream from byte 0.
                if offset != written {
                    return Err(UpdateError::io(format!("write slot {}", slot.letter()))(
                        io::Error::other(format!(
                            "block at byte {offset} does not follow byte {written}"
                        )),
                    ));
                }
                if let Check::Written = check {
                    range_hash.update(&block);
                }
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
            let hash = match check {
                Check::Written => Some(*range_hash.finalize().as_bytes()),
                Check::Whole(_) | Check::AtCommit => None,
            };
            range_hash.reset();
            ranges.push_back(Range {
                start: kicked,
                stop: written,
                written: hash,
            });
            kicked = written;
        }
        // Keep IN_WRITEBACK bytes on their way to the media (a deep queue,
        // as one big flush would have); read back the ranges before them
        // (all of them at the end).
        while let Some(&range) = ranges.front() {
            if !end && kicked - range.stop < IN_WRITEBACK {
                break;
            }
            ranges.pop_front();
            if check == Check::AtCommit {
                dev.retire(range.start, range.stop - range.start);
                continue;
            }
            dev.settle(range.start, range.stop - range.start);
            settled.push_back(range);
            // Read the range settled before this one: its read from the
            // media had time to get under way.
            if !end && settled.len() < 2 {
                continue;
            }
            let Some(range) = settled.pop_front() else {
                break;
            };
            read_back(dev, range)?;
        }
        if end {
            for range in std::mem::take(&mut settled) {
                read_back(dev, range)?;
            }
            if let Check::Whole(expected) = check {
                let found = hex::encode(whole.finalize().as_bytes());
                if found != expected {
                    return Err(UpdateError::ReadBackMismatch {
                        slot,
                        expected: format!("BLAKE3 {expected}"),
                        found: format!("BLAKE3 {found}"),
                    });
                }
            }
            return dev
                .flush()
                .map_err(UpdateError::io(format!("flush slot {}", slot.letter())));
        }
    }
}

/// Reads bytes `start..stop` of `dev` into `hasher`.
fn read_range(
    dev: &mut dyn SlotDevice,
    start: u64,
    stop: u64,
    scratch: &mut [u8],
    hasher: &mut blake3::Hasher,
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

/// Reads the first `size` bytes of `dev` and checks their BLAKE3 against
/// `expected` (hex, the manifest's `blake3`); the hashing overlaps the
/// reads on a thread of its own.
pub(crate) fn check_blake3(
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
            let mut hasher = blake3::Hasher::new();
            for buf in full_rx {
                hasher.update(&buf);
                if free_tx.send(buf).is_err() {
                    break;
                }
            }
            hex::encode(hasher.finalize().as_bytes())
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
        /// A byte the "disk" changes on its way (silent corruption).
        flip_byte: Option<u64>,
        flushed: bool,
        /// Bytes read back.
        read: u64,
    }

    impl MemSlot {
        fn new(lose_write_at: Option<u64>, flip_byte: Option<u64>) -> MemSlot {
            MemSlot {
                data: vec![0; 10 << 20],
                lose_write_at,
                flip_byte,
                flushed: false,
                read: 0,
            }
        }
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
            if let Some(b) = self.flip_byte
                && (offset..offset + buf.len() as u64).contains(&b)
            {
                self.data[b as usize] ^= 0x40;
            }
            Ok(())
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.data[at..at + buf.len()]);
            self.read += buf.len() as u64;
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
        copy_with(bytes, ring, slot, ReadBack::Now)
    }

    fn copy_with(
        bytes: &[u8],
        ring: &Keyring,
        slot: &mut MemSlot,
        read_back: ReadBack,
    ) -> Result<u64> {
        let mut b = BundleReader::open(bytes, ring).unwrap();
        let mut p = b.next_payload().unwrap().unwrap();
        let n = copy_payload(
            &mut p,
            slot,
            Slot::B,
            Step::WriteSystem,
            read_back,
            &mut Silent,
        )?;
        p.finish()?;
        Ok(n)
    }

    #[test]
    fn a_good_copy_is_read_back_and_flushed() {
        let dir = tempfile::tempdir().unwrap();
        for chunk_size in [1 << 20, 64 << 10] {
            let (bytes, ring) = bundle(dir.path(), chunk_size);
            let mut slot = MemSlot::new(None, None);
            assert_eq!(copy(&bytes, &ring, &mut slot).unwrap(), 9 << 20);
            assert!(slot.flushed);
            let system = std::fs::read(dir.path().join("system.img")).unwrap();
            assert_eq!(&slot.data[..9 << 20], &system[..]);
        }
    }

    #[test]
    fn at_commit_the_writer_reads_nothing_back_and_still_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, ring) = bundle(dir.path(), 1 << 20);
        // A good copy, and a lost write: neither is read back (mark-good's
        // verity check finds the lost write, tests/written_check.rs).
        for lost in [None, Some(5 << 20)] {
            let mut slot = MemSlot::new(lost, None);
            assert_eq!(
                copy_with(&bytes, &ring, &mut slot, ReadBack::AtCommit).unwrap(),
                9 << 20
            );
            assert_eq!(slot.read, 0, "read back although deferred");
            assert!(slot.flushed);
        }
        let mut slot = MemSlot::new(None, None);
        copy(&bytes, &ring, &mut slot).unwrap();
        assert_eq!(slot.read, 9 << 20, "ReadBack::Now reads every byte");
    }

    #[test]
    fn a_lost_write_fails_the_read_back_and_the_slot_is_not_flushed() {
        let dir = tempfile::tempdir().unwrap();
        for chunk_size in [1 << 20, 64 << 10] {
            let (bytes, ring) = bundle(dir.path(), chunk_size);
            for lost in [0, 5 << 20, 8 << 20] {
                let mut slot = MemSlot::new(Some(lost), None);
                let err = copy(&bytes, &ring, &mut slot).unwrap_err();
                assert!(
                    matches!(err, UpdateError::ReadBackMismatch { slot: Slot::B, .. }),
                    "{err}"
                );
                assert!(!slot.flushed, "lost write at {lost}");
            }
        }
    }

    #[test]
    fn a_byte_the_disk_changes_is_found_and_its_range_named() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, ring) = bundle(dir.path(), 1 << 20);
        for (flip, range) in [(0, "0..4194304"), ((9 << 20) - 1, "8388608..9437184")] {
            let mut slot = MemSlot::new(None, Some(flip));
            let err = copy(&bytes, &ring, &mut slot).unwrap_err();
            assert!(
                matches!(err, UpdateError::ReadBackMismatch { slot: Slot::B, .. }),
                "{err}"
            );
            assert_eq!(err.code(), "read-back-mismatch");
            assert!(
                err.to_string().contains(&format!("of bytes {range}")),
                "{err}"
            );
            assert!(!slot.flushed, "flipped byte {flip}");
        }
    }

    #[test]
    fn the_whole_payload_check_still_compares_with_the_blake3_it_is_given() {
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        let good = hex::encode(blake3::hash(&data).as_bytes());
        for (expected, ok) in [(good.as_str(), true), (&"0".repeat(64)[..], false)] {
            let mut blocks = data
                .chunks(WRITE_BLOCK)
                .map(|c| Bytes::Gathered(c.to_vec()));
            let mut next = || Ok(blocks.next());
            let mut slot = MemSlot::new(None, None);
            let r = pipeline(
                &mut next,
                3 << 20,
                Check::Whole(expected),
                &mut slot,
                Slot::A,
                Step::WriteSystem,
                &mut Silent,
            );
            assert_eq!(r.is_ok(), ok, "{r:?}");
            assert_eq!(slot.flushed, ok);
        }
    }

    #[test]
    fn blocks_out_of_order_are_refused_before_they_are_written() {
        let mut blocks = vec![(0u64, vec![1u8; 4096]), (8192, vec![2u8; 4096])].into_iter();
        let (tx, rx) = mpsc::sync_channel(4);
        for (offset, b) in blocks.by_ref() {
            tx.send(Msg::Block(offset, Bytes::Gathered(b))).unwrap();
        }
        tx.send(Msg::End).unwrap();
        let mut slot = MemSlot::new(None, None);
        let err = write_and_check(&mut slot, rx, Slot::B, Check::Written).unwrap_err();
        assert!(
            err.to_string().contains("does not follow byte 4096"),
            "{err}"
        );
        assert_eq!(slot.data[8192], 0, "the stray block was written");
        assert!(!slot.flushed);
    }
}
