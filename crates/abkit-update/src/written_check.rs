//! The commit-time check of a slot's written system data (issue 14): the
//! install no longer reads the slot back; before mark-good commits a slot
//! whose record says `written_check: pending`, this reads the whole system
//! payload (data and appended hash tree) back from the media and checks it
//! against the signed dm-verity root hash in the record, with abkit-bundle's
//! verity code (the one tree builder). Reads run on a thread of their own,
//! ahead of the hashing, in large sequential blocks.

use std::io::{self, Read};
use std::sync::mpsc;

use abkit_bundle::manifest::{Digest, HexBytes, VERITY_BLOCK_SIZE};
use abkit_bundle::verity;
use abkit_bundle::{Error as BundleError, VerityParams};

use crate::machine::SlotDevice;
use crate::progress::{Event, Reporter, Step};
use crate::record::SlotRecord;
use crate::{Result, Slot, UpdateError};

/// Size of one read.
const READ: usize = 2 << 20;
/// Reads queued ahead of the hashing.
const AHEAD: usize = 2;

/// The halt checkpoint (`crate::halt`) half-way through the check, for the
/// power-cut tests: nothing has been written by then.
pub const HALFWAY: &str = "mark-good:checking-written-data";

/// The signed verity parameters a record keeps, or why they are unusable.
fn params(record: &SlotRecord, slot: Slot) -> Result<(VerityParams, u64)> {
    let missing = |what: &str| UpdateError::NotCommittable {
        slot,
        reason: format!(
            "its record says the written data is still to be checked but has no {what}: \
             install the bundle again"
        ),
    };
    let root = record
        .verity_root_hash
        .as_deref()
        .ok_or_else(|| missing("verity root hash"))?;
    let salt = record
        .verity_salt
        .as_deref()
        .ok_or_else(|| missing("verity salt"))?;
    let data_size = record
        .verity_data_size
        .ok_or_else(|| missing("verity data size"))?;
    let size = record.system_size.ok_or_else(|| missing("system size"))?;
    let root: [u8; 32] = hex::decode(root)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| missing("readable verity root hash"))?;
    let salt = hex::decode(salt).map_err(|_| missing("readable verity salt"))?;
    let params = VerityParams {
        algorithm: "sha256".into(),
        root_hash: Digest(root),
        salt: HexBytes(salt),
        data_block_size: VERITY_BLOCK_SIZE,
        hash_block_size: VERITY_BLOCK_SIZE,
        data_size,
        hash_offset: data_size,
    };
    let blocks = data_size / u64::from(VERITY_BLOCK_SIZE);
    if data_size % u64::from(VERITY_BLOCK_SIZE) != 0
        || data_size.checked_add(verity::hash_area_size(blocks)) != Some(size)
    {
        return Err(missing("consistent verity data size"));
    }
    Ok((params, size))
}

/// Checks the first `system_size` bytes of `dev` (slot `slot`) against the
/// record's signed verity parameters, from the media (the cache dropped
/// first). A mismatch is [`UpdateError::WrittenDataMismatch`] naming where.
pub(crate) fn check(
    dev: &mut dyn SlotDevice,
    record: &SlotRecord,
    slot: Slot,
    rep: &mut dyn Reporter,
) -> Result<()> {
    let (params, size) = params(record, slot)?;
    if size > dev.size() {
        return Err(UpdateError::WrittenDataMismatch {
            slot,
            detail: format!(
                "the slot holds {} bytes, its record says {size} were written",
                dev.size()
            ),
        });
    }
    dev.drop_cache();
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(AHEAD);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..=AHEAD {
        let _ = free_tx.send(Vec::with_capacity(READ));
    }
    let found = std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut at = 0u64;
            while at < size {
                let Ok(mut buf) = free_rx.recv() else { return };
                let n = (size - at).min(READ as u64) as usize;
                buf.resize(n, 0);
                let read = dev.read_at(at, &mut buf).map(|()| buf);
                let failed = read.is_err();
                if full_tx.send(read).is_err() || failed {
                    return;
                }
                at += n as u64;
            }
        });
        let mut reader = Ahead {
            full: full_rx,
            free: free_tx,
            buf: Vec::new(),
            pos: 0,
            done: 0,
            size,
            rep,
        };
        verity::check_image(&mut reader, &params)
    });
    match found {
        Ok(None) => Ok(()),
        Ok(Some(mismatch)) => Err(UpdateError::WrittenDataMismatch {
            slot,
            detail: mismatch.to_string(),
        }),
        Err(BundleError::Io(source)) => Err(UpdateError::io(format!(
            "read slot {} back for its written-data check",
            slot.letter()
        ))(source)),
        Err(e) => Err(UpdateError::WrittenDataMismatch {
            slot,
            detail: e.to_string(),
        }),
    }
}

/// The read-ahead thread's buffers as a `Read`, reporting progress (and
/// the half-way checkpoint) as they are used.
struct Ahead<'a> {
    full: mpsc::Receiver<io::Result<Vec<u8>>>,
    free: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    done: u64,
    size: u64,
    rep: &'a mut dyn Reporter,
}

impl Read for Ahead<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            let next = match self.full.recv() {
                Ok(next) => next?,
                Err(_) => return Ok(0),
            };
            let old = std::mem::replace(&mut self.buf, next);
            if old.capacity() > 0 {
                let _ = self.free.send(old);
            }
            self.pos = 0;
            let before = self.done;
            self.done += self.buf.len() as u64;
            if before < self.size / 2 && self.done >= self.size / 2 {
                crate::halt::checkpoint(HALFWAY);
            }
            self.rep.event(Event::Progress {
                step: Step::CheckSystem,
                done: self.done,
                total: self.size,
            });
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
