//! Delta install (issue 15): build the new payloads from the blocks the
//! machine already holds and fetch only the missing ones, by byte ranges
//! (several per request), from the same bundle.
//!
//! The bundle's signed block index (BLAKE3 of every 4 KiB block, format 2)
//! says what every block of a payload must be. A scanner thread hashes the
//! running slot (many blocks side by side: `block_hashes`); a planner
//! thread decides, block by block and a little behind the scan, where each
//! block comes from (a seed block with the same hash, anywhere; else the
//! bundle) and hands missing runs to the fetch threads at once, which
//! first take what the target slot holds at the same offset (its old
//! contents, or what an interrupted install wrote, which is how a rerun
//! resumes) and fetch the rest; the assembler writes as decisions arrive, each
//! write block being the scanner's read of the same bytes, so that a block
//! still at its own offset is read and hashed once. Every block, reused or
//! fetched, is checked against the index before it goes into the slot
//! (I7); the written slot is then checked as after a full install
//! (`copy::ReadBack::for_payload`: by mark-good against the signed verity
//! root hash, or read back now without a verity tree).

use abkit_bundle::format::{HEADER_LEN, Header};
use abkit_bundle::index::{block_hash, block_hashes};
use abkit_bundle::reader::RawHead;
use abkit_bundle::{BlockIndex, Compression, KeyId, Keyring, Layout, Manifest, PayloadEntry};
use abkit_fetch::ByteRanges;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use crate::copy::{self, Bytes, WRITE_BLOCK};
use crate::machine::SlotDevice;
use crate::progress::{Reporter, Step};
use crate::{Result, Slot, UpdateError};

/// Bytes asked for by the first request: header, manifest and signatures
/// fit (a format 2 manifest lists 1 MiB chunks, about 67 bytes each).
pub const HEAD_WINDOW: u64 = 64 * 1024;
/// Two missing runs closer than this are fetched as one range (the blocks
/// between them are verified and used like the others): fewer parts and
/// requests for a few more bytes. Counted on bench/delta.sh's scattered
/// 5% (6,553 random 4 KiB blocks of 512 MiB): no merging, 6,222 runs and
/// 5.00% of the image; 4 KiB gaps, 5,917 and 5.23%; 8 KiB, 5,647 and
/// 5.64%; 12 KiB, 5,339 and 6.35%; 16 KiB, 5,063 and 7.19% (over the 8%
/// budget once index and verity tree are added). A part of a multi-range
/// answer costs about 100 bytes, so beyond 8 KiB bytes grow faster than
/// requests shrink.
const MERGE_GAP: u64 = 8 * 1024;
/// Longest run of zstd frames fetched as one range (stored bytes).
const MAX_REQUEST: u64 = 1 << 20;
/// Bytes of missing blocks fetched together: runs are grouped up to this
/// size (and split at it) and asked for with one `read_ranges` (a few
/// multi-range requests). With [`FETCH_AHEAD`] and [`FETCH_CONNECTIONS`]
/// it bounds the memory of fetched blocks to about 1.5 MiB.
const BATCH_BYTES: u64 = 256 << 10;

/// What a delta install moved, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeltaStats {
    /// Bytes read from the bundle: head, block indexes and missing blocks.
    pub bytes_fetched: u64,
    /// Payload bytes taken from what the machine already held.
    pub bytes_reused: u64,
    /// HTTP requests for missing blocks (the head and indexes not counted;
    /// several ranges go into one request where the server allows).
    pub requests: u64,
}

/// A bundle's verified head and block indexes, read by ranges.
pub struct RangedBundle {
    pub manifest: Manifest,
    pub signer: KeyId,
    pub signed_sha256: [u8; 32],
    pub layout: Layout,
    pub indexes: Vec<BlockIndex>,
}

/// Reads and verifies the head (signature against `keyring`) and the block
/// indexes (BLAKE3 against the signed manifest) with two or three range
/// requests.
pub fn open_ranged(src: &mut dyn ByteRanges, keyring: &Keyring) -> Result<RangedBundle> {
    let total = src.total_len();
    let first = total.map_or(HEAD_WINDOW, |t| t.min(HEAD_WINDOW)) as usize;
    let mut head = vec![0u8; first];
    src.read_range(0, &mut head)
        .map_err(|e| fetch_error(e, "the bundle head"))?;
    if head.len() < HEADER_LEN {
        return Err(abkit_bundle::Error::Truncated {
            section: "header".into(),
        }
        .into());
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&head[..HEADER_LEN]);
    let decoded = Header::decode(&header)?;
    let head_len = HEADER_LEN as u64
        + decoded.manifest_len
        + u64::from(decoded.signature_count) * abkit_bundle::format::SIGNATURE_ENTRY_LEN as u64;
    extend(src, &mut head, head_len, "the bundle head")?;
    let raw = RawHead::read(&mut &head[..])?;
    let signer = raw.verify(keyring)?;
    let manifest = Manifest::parse(&raw.manifest_bytes)?;
    let layout = Layout::new(&manifest, decoded.manifest_len, decoded.signature_count);
    if let Some(total) = total
        && total != layout.total_len
    {
        return Err(if total < layout.total_len {
            abkit_bundle::Error::Truncated {
                section: format!("bundle ({total} bytes of {})", layout.total_len),
            }
        } else {
            abkit_bundle::Error::TrailingData
        }
        .into());
    }
    extend(src, &mut head, layout.indexes_end(), "the block indexes")?;
    let mut indexes = Vec::new();
    for (p, &at) in manifest.payloads.iter().zip(&layout.index_offsets) {
        let bytes = &head[at as usize..(at + p.index.size) as usize];
        indexes.push(BlockIndex::parse(&manifest, p, bytes)?);
    }
    Ok(RangedBundle {
        signed_sha256: raw.signed_sha256(),
        manifest,
        signer,
        layout,
        indexes,
    })
}

/// Grows `buf` (bytes from offset 0) to `len` bytes with one request.
fn extend(src: &mut dyn ByteRanges, buf: &mut Vec<u8>, len: u64, what: &str) -> Result<()> {
    let have = buf.len() as u64;
    if len > have {
        let len = usize::try_from(len)
            .map_err(|_| UpdateError::SizeOverflow(format!("{what} of {len} bytes")))?;
        buf.resize(len, 0);
        src.read_range(have, &mut buf[have as usize..])
            .map_err(|e| fetch_error(e, what))?;
    }
    Ok(())
}

/// A read error of the bundle: the typed fetch error when there is one.
fn fetch_error(e: std::io::Error, what: &str) -> UpdateError {
    match abkit_fetch::FetchError::from_io(&e) {
        Some(fetch) => UpdateError::Fetch(fetch.clone()),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => abkit_bundle::Error::Truncated {
            section: what.to_owned(),
        }
        .into(),
        None => UpdateError::io(format!("read {what}"))(e),
    }
}

/// Where one block of the new payload comes from (8 bytes: a plan holds
/// one per block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Seed `seed`, its block number `block` (block-aligned in the seed).
    Seed(u8, u32),
    Fetch,
}

/// What the machine holds that a payload can be built from.
pub struct Seed<'a> {
    /// For messages: "slot A", "the running loader".
    pub name: String,
    pub dev: &'a mut dyn SlotDevice,
    /// Bytes worth hashing from the start (what the slot's record says it
    /// holds); 0: only look for blocks at their own offset.
    pub scan: u64,
}

/// Buckets of [`Wanted::buckets`]: one per value of a hash's first two
/// bytes (BLAKE3 digests are uniform).
const BUCKETS: usize = 1 << 16;

fn bucket_of(hash: &[u8; 32]) -> usize {
    usize::from(u16::from_be_bytes([hash[0], hash[1]]))
}

/// The distinct block hashes of an index, as the first block that has
/// each, sorted by hash and bucketed by its first two bytes, with where a
/// seed holds it: a sorted table instead of a hash map (4 + 8 bytes per
/// block, not about 100: issue 14 wants installs in 16 MiB). Filled by
/// the scanner while the planner reads it.
struct Wanted<'a> {
    index: &'a BlockIndex,
    /// The first block with each hash, sorted by hash, one per hash.
    hashes: Vec<u32>,
    /// Where a seed holds each of `hashes` ([`Source::encode`]), 0 until
    /// found.
    found: Vec<AtomicU64>,
    /// `hashes[buckets[t]..buckets[t + 1]]` are the hashes whose first two
    /// bytes are `t`: a lookup compares a few hashes instead of searching
    /// the whole table (256 KiB).
    buckets: Vec<u32>,
    /// Bit `i`: the aligned seed (the running slot) holds block `i` at its
    /// own offset, as the scanner found; the planner needs no lookup.
    own: Vec<AtomicU64>,
}

impl Source {
    /// A found seed block as a non-zero number (see [`Wanted::found`]).
    fn encode(seed: u8, block: u32) -> u64 {
        (u64::from(seed) + 1) << 32 | u64::from(block)
    }
    fn decode(v: u64) -> Option<Source> {
        (v != 0).then(|| Source::Seed(((v >> 32) - 1) as u8, v as u32))
    }
}

impl<'a> Wanted<'a> {
    /// A counting sort by the bucket, then each bucket (2 hashes on
    /// average for 131,072 blocks) sorted: 4.3 ms for a 512 MiB payload
    /// here, where sorting the whole table by 32-byte hashes took 12.6 ms,
    /// all of it before the first block could be written.
    fn new(index: &'a BlockIndex) -> Wanted<'a> {
        let hash = |b: u32| index.hash(b as usize);
        let blocks = index.len() as u32;
        let mut starts = vec![0u32; BUCKETS + 1];
        for b in 0..blocks {
            starts[bucket_of(hash(b)) + 1] += 1;
        }
        for t in 0..BUCKETS {
            starts[t + 1] += starts[t];
        }
        // Every block in its bucket, in block order.
        let mut placed = vec![0u32; blocks as usize];
        let mut fill = starts.clone();
        for b in 0..blocks {
            let t = bucket_of(hash(b));
            placed[fill[t] as usize] = b;
            fill[t] += 1;
        }
        drop(fill);
        let mut hashes = Vec::with_capacity(blocks as usize);
        let mut buckets = Vec::with_capacity(BUCKETS + 1);
        for t in 0..BUCKETS {
            buckets.push(hashes.len() as u32);
            let bucket = &mut placed[starts[t] as usize..starts[t + 1] as usize];
            // Stable: of equal hashes, the first block comes first and stays.
            bucket.sort_by(|&a, &b| hash(a).cmp(hash(b)));
            let first = hashes.len();
            for &b in bucket.iter() {
                if hashes.len() == first || hash(hashes[hashes.len() - 1]) != hash(b) {
                    hashes.push(b);
                }
            }
        }
        buckets.push(hashes.len() as u32);
        let found = (0..hashes.len()).map(|_| AtomicU64::new(0)).collect();
        let own = (0..index.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Wanted {
            index,
            hashes,
            found,
            buckets,
            own,
        }
    }

    /// The entry of `hash`, if the index has it.
    fn position(&self, hash: &[u8; 32]) -> Option<usize> {
        let t = bucket_of(hash);
        let (lo, hi) = (self.buckets[t] as usize, self.buckets[t + 1] as usize);
        self.hashes[lo..hi]
            .iter()
            .position(|&b| self.index.hash(b as usize) == hash)
            .map(|k| lo + k)
    }

    fn set_own(&self, i: usize) {
        self.own[i / 64].fetch_or(1 << (i % 64), Ordering::Release);
    }

    fn is_own(&self, i: usize) -> bool {
        self.own[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Where a scanned seed holds block `i`'s bytes, if found so far.
    fn found(&self, i: usize) -> Option<Source> {
        let e = self.position(self.index.hash(i))?;
        Source::decode(self.found[e].load(Ordering::Acquire))
    }
}

/// Pieces of the running slot (each [`WRITE_BLOCK`] bytes) queued,
/// hashed, ahead of the writer: the planner decides up to
/// `PIECES_AHEAD - LEAD_PIECES` pieces ahead of the writer, and fetches
/// start that far ahead of it (3 MiB, about 2.5 ms of the writer here; a
/// loopback request takes about 1 ms). The pieces cost 4 MiB of memory.
const PIECES_AHEAD: usize = 4;

/// Pieces the scan must be past a block before the planner decides where
/// it comes from: a block whose old place is further than this after its
/// new one is fetched, not found (one whose old place is before its new
/// one is always found). Measured on bench/delta.sh's scattered case, the
/// assembler waited 80-120 ms for the planner with 3 pieces (the planner,
/// and so the fetches it starts, only 1-2 MiB ahead of the writer), 25-55
/// ms with 1, and the delta took 0.41-0.45 s against 0.42-0.77 s.
const LEAD_PIECES: usize = 1;

/// A seed as the scanner, the planner and the assembler share it.
struct SharedSeed<'a> {
    name: String,
    scan: u64,
    dev: Mutex<&'a mut dyn SlotDevice>,
}

impl SharedSeed<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.dev
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read_at(offset, buf)
            .map_err(UpdateError::io(format!(
                "read {} at byte {offset}",
                self.name
            )))
    }
}

/// How far the scan of the seeds got.
#[derive(Default)]
struct ScanState {
    /// The seed being scanned and the bytes of it hashed so far.
    seed: usize,
    at: u64,
    /// Every seed scanned, or the scan failed or was stopped.
    done: bool,
    error: Option<UpdateError>,
}

#[derive(Default)]
struct Scan {
    state: Mutex<ScanState>,
    moved: Condvar,
    stop: AtomicBool,
}

impl Scan {
    fn lock(&self) -> std::sync::MutexGuard<'_, ScanState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn set(&self, f: impl FnOnce(&mut ScanState)) {
        f(&mut self.lock());
        self.moved.notify_all();
    }
}

/// A read of the aligned seed (the running slot: its block `j` is where
/// the new payload's block `j` would be) as the scanner hashed it, handed
/// to the assembler so that a block still at its own offset is read and
/// hashed once: the bytes written are the very bytes hashed (I7).
struct Piece {
    /// Byte offset in the seed, and so in the payload.
    at: u64,
    bytes: Vec<u8>,
    /// `own[j]`: block `j` of the piece hashed to the index's hash of the
    /// block at the same offset.
    own: Vec<bool>,
}

/// Buffers of one piece or write block, going round between the scanner,
/// the assembler and the slot writer instead of being allocated anew.
struct Pool {
    spare: Mutex<std::sync::mpsc::Receiver<Vec<u8>>>,
    home: std::sync::mpsc::Sender<Vec<u8>>,
}

impl Pool {
    fn new() -> Pool {
        let (home, spare) = std::sync::mpsc::channel();
        Pool {
            spare: Mutex::new(spare),
            home,
        }
    }
    /// A buffer of `len` bytes: a spare one (its old bytes left in it,
    /// not zeroed again: whoever takes it overwrites all of them), or a
    /// new one.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self
            .spare
            .lock()
            .map(|s| s.try_recv().unwrap_or_default())
            .unwrap_or_default();
        buf.resize(len, 0);
        buf
    }
}

/// Blocks per piece and per write block: pieces and write blocks cover
/// the same bytes, so a piece becomes a write block without a copy.
fn blocks_per_write(index: &BlockIndex) -> usize {
    (WRITE_BLOCK / index.block_size() as usize).max(1)
}

/// The scanner: hashes every block of the seeds that have a `scan` length
/// (the running slot, the running loader), 256 blocks side by side
/// (`block_hashes`: one core hashes 4.6 GB/s, ahead of the writer; a
/// second hashing thread measured no faster, the writer and the fetchers
/// need that core), and records in `wanted` where each block
/// the new payload needs was found first. Reads of the seed `aligned`
/// inside the payload go on to the assembler as [`Piece`]s through
/// `pieces`, whose bound keeps the scan at most [`PIECES_AHEAD`] pieces
/// ahead of the writer.
fn scan_seeds(
    index: &BlockIndex,
    wanted: &Wanted<'_>,
    seeds: &[SharedSeed<'_>],
    scan: &Scan,
    aligned: Option<(usize, std::sync::mpsc::SyncSender<Piece>)>,
    pool: &Pool,
) {
    let bs = index.block_size() as usize;
    let read = blocks_per_write(index) * bs;
    let fail = |e: UpdateError| {
        scan.set(|s| {
            s.error = Some(e);
            s.done = true;
        });
    };
    {
        let mut aligned = aligned;
        for (k, seed) in seeds.iter().enumerate() {
            let len =
                seed.scan.min(seed.dev.lock().map_or(0, |d| d.size())) / bs as u64 * bs as u64;
            let mut at = 0u64;
            while at < len && !scan.stop.load(Ordering::Relaxed) {
                let n = (len - at).min(read as u64) as usize;
                let mut buf = pool.take(n);
                if let Err(e) = seed.read_at(at, &mut buf) {
                    return fail(e);
                }
                let mut hashes = Vec::with_capacity(n / bs);
                block_hashes(&buf, bs, &mut hashes);
                let first_block = at / bs as u64;
                for (j, hash) in hashes.iter().enumerate() {
                    if let Some(e) = wanted.position(hash) {
                        // Blocks of seeds beyond 16 TiB are not looked for.
                        if let Ok(block) = u32::try_from(first_block + j as u64) {
                            let _ = wanted.found[e].compare_exchange(
                                0,
                                Source::encode(k as u8, block),
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
                let is_aligned = aligned.as_ref().is_some_and(|(a, _)| *a == k);
                let own: Vec<bool> = hashes
                    .iter()
                    .enumerate()
                    .map(|(j, hash)| {
                        let b = first_block as usize + j;
                        is_aligned
                            && b < index.len()
                            && index.block_len(b) == bs
                            && index.hash(b) == hash
                    })
                    .collect();
                for (j, _) in own.iter().enumerate().filter(|(_, o)| **o) {
                    wanted.set_own(first_block as usize + j);
                }
                let piece_at = at;
                at += n as u64;
                scan.set(|s| {
                    s.seed = k;
                    s.at = at;
                });
                if let Some((_, to_assembler)) = &aligned
                    && is_aligned
                    && piece_at < index.size()
                {
                    let piece = Piece {
                        at: piece_at,
                        bytes: buf,
                        own,
                    };
                    // The assembler gone: the build ended, the scan stops.
                    if to_assembler.send(piece).is_err() {
                        aligned = None;
                    }
                } else {
                    let _ = pool.home.send(buf);
                }
            }
        }
        drop(aligned);
        scan.set(|s| s.done = true);
    }
}

/// Decisions for the assembler, a chunk at a time, in block order.
type Decisions = std::sync::mpsc::Sender<Result<Vec<Source>>>;

/// The planner: decides, block by block in order, where each block of the
/// new payload comes from — a seed block with the same BLAKE3 (found by
/// the scanner, [`LEAD_PIECES`] ahead), else the block at the same offset
/// of any seed (a short last block; for zstd payloads the target's old
/// contents, what an interrupted install wrote: for others the fetchers
/// look there, `fetch_runs`), else the bundle — and
/// hands the missing blocks, as merged runs in batches, to the fetchers
/// (batch k to fetcher k % n) as soon as they are known, so that fetching
/// and writing start before the scan ends. zstd payloads are planned once
/// the scan is done (their frames are fetched whole).
fn plan(
    index: &BlockIndex,
    wanted: &Wanted<'_>,
    seeds: &[SharedSeed<'_>],
    scan: &Scan,
    decisions: &Decisions,
    fetchers: &[std::sync::mpsc::Sender<Vec<(usize, usize)>>],
) {
    let bs = index.block_size() as usize;
    let last_scanned = seeds.iter().rposition(|s| s.scan > 0);
    // The seed whose blocks the scanner marks when found at their own
    // offset (as in `with_assembler`).
    let aligned = last_scanned.filter(|_| index.compression() != Compression::Zstd);
    // How far the scan must be past a block before the planner decides
    // it: [`LEAD_PIECES`] pieces, less than the scan gets ahead of the
    // writer (with the writer waiting for a fetch in write block w, the
    // scan reaches the end of piece w + PIECES_AHEAD + 1, so the planner
    // decides at least PIECES_AHEAD - LEAD_PIECES pieces past w and closes
    // any run of w (at most BATCH_BYTES + MERGE_GAP long), which is then
    // sent: no deadlock).
    let lead = (LEAD_PIECES * blocks_per_write(index) * bs) as u64;
    let mut block = vec![0u8; bs];
    let mut chunk: Vec<Source> = Vec::new();
    let mut runs = Runs::new(index, fetchers);
    let zstd = index.compression() == Compression::Zstd;
    let mut all: Vec<Source> = Vec::new();
    let mut dropper = CacheDropper::default();
    for i in 0..index.len() {
        // Wait until the scan is far enough ahead (or done).
        let need = index.block_offset(i) + lead;
        let ready =
            |s: &ScanState| s.done || (!zstd && Some(s.seed) == last_scanned && s.at >= need);
        if !ready(&scan.lock()) {
            // Hand on what is decided before waiting.
            if !chunk.is_empty() && decisions.send(Ok(std::mem::take(&mut chunk))).is_err() {
                return;
            }
            runs.flush();
            let mut state = scan.lock();
            while !ready(&state) {
                state = scan
                    .moved
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if let Some(e) = state.error.take() {
                let _ = decisions.send(Err(e));
                return;
            }
        }
        let mut source = match aligned {
            Some(k) if wanted.is_own(i) => Some(Source::Seed(k as u8, i as u32)),
            _ => wanted.found(i),
        };
        if source.is_none() {
            let (off, len) = (index.block_offset(i), index.block_len(i));
            for (k, seed) in seeds.iter().enumerate() {
                // The target slot (not scanned) is looked at by the
                // fetchers, just before they fetch (`fetch_runs`); zstd
                // payloads, planned once the scan is done, look here.
                if seed.scan == 0 && !zstd {
                    continue;
                }
                let size = seed.dev.lock().map_or(0, |d| d.size());
                // A whole block the scan hashed already is not there
                // (else `found` would say where): no second read.
                let scanned = seed.scan.min(size) / bs as u64 * bs as u64;
                if len == bs && off + len as u64 <= scanned {
                    continue;
                }
                if seed.scan == 0 {
                    dropper.read(seeds, k, off);
                }
                if off + len as u64 <= size
                    && seed.read_at(off, &mut block[..len]).is_ok()
                    && block_hash(&block[..len]) == *index.hash(i)
                {
                    source = Some(Source::Seed(k as u8, i as u32));
                    break;
                }
            }
        }
        let source = source.unwrap_or(Source::Fetch);
        if zstd {
            all.push(source);
        } else {
            runs.add(i, source == Source::Fetch);
        }
        chunk.push(source);
        if chunk.len() >= 256 && decisions.send(Ok(std::mem::take(&mut chunk))).is_err() {
            return;
        }
    }
    if zstd {
        for run in frame_runs(index, &all) {
            runs.send(vec![run]);
        }
    }
    dropper.flush(seeds);
    runs.finish();
    if !chunk.is_empty() {
        let _ = decisions.send(Ok(chunk));
    }
}

/// Drops from the page cache the write blocks of the target slot in which
/// the planner read single blocks (its old contents: zstd payloads, whose
/// target blocks are looked for by the planner; others by `fetch_runs`),
/// once it is past them. Left cached, those scattered 4 KiB pages split the range the
/// slot writer fills next into small pages: measured on bench/delta.sh's
/// scattered case (6,300 such reads), the writer's `pwrite` took twice
/// the CPU of a full install's for the same bytes, and the delta 0.43-0.68 s
/// against 0.39-0.45 s with the drop.
#[derive(Default)]
struct CacheDropper {
    /// The seed and the write block read last.
    last: Option<(usize, u64)>,
}

impl CacheDropper {
    /// The planner reads seed `k` at byte `off`.
    fn read(&mut self, seeds: &[SharedSeed<'_>], k: usize, off: u64) {
        let region = off / WRITE_BLOCK as u64 * WRITE_BLOCK as u64;
        if self.last != Some((k, region)) {
            self.flush(seeds);
            self.last = Some((k, region));
        }
    }

    /// Drops the write block read last. The writer is behind the planner
    /// (it writes only what the planner decided), so it has seldom written
    /// there yet; if it has, `retire` only waits for that range's
    /// writeback.
    fn flush(&mut self, seeds: &[SharedSeed<'_>]) {
        if let Some((k, region)) = self.last.take()
            && let Ok(mut dev) = seeds[k].dev.lock()
        {
            let len = (WRITE_BLOCK as u64).min(dev.size().saturating_sub(region));
            dev.retire(region, len);
        }
    }
}

/// The runs of missing blocks as the planner finds them: runs closer than
/// [`MERGE_GAP`] merged, none longer than [`BATCH_BYTES`], grouped into
/// batches of at most [`BATCH_BYTES`] and sent to the fetchers in turn.
struct Runs<'a> {
    index: &'a BlockIndex,
    fetchers: &'a [std::sync::mpsc::Sender<Vec<(usize, usize)>>],
    open: Option<(usize, usize)>,
    batch: Vec<(usize, usize)>,
    bytes: u64,
    sent: usize,
}

impl<'a> Runs<'a> {
    fn new(
        index: &'a BlockIndex,
        fetchers: &'a [std::sync::mpsc::Sender<Vec<(usize, usize)>>],
    ) -> Runs<'a> {
        Runs {
            index,
            fetchers,
            open: None,
            batch: Vec::new(),
            bytes: 0,
            sent: 0,
        }
    }

    fn gap(&self) -> usize {
        (MERGE_GAP / u64::from(self.index.block_size())) as usize
    }

    /// Block `i` is missing (`fetch`) or not; blocks come in order.
    fn add(&mut self, i: usize, fetch: bool) {
        let max = (BATCH_BYTES / u64::from(self.index.block_size())).max(1) as usize;
        let gap = self.gap();
        match self.open {
            Some((start, end)) if fetch && i <= end + gap && i + 1 - start <= max => {
                self.open = Some((start, i + 1));
            }
            Some(_) if fetch => {
                self.close();
                self.open = Some((i, i + 1));
            }
            None if fetch => self.open = Some((i, i + 1)),
            Some((_, end)) if i >= end + gap => self.close(),
            _ => {}
        }
    }

    /// Ends the open run (no later block can join it) and batches it.
    fn close(&mut self) {
        let Some((first, end)) = self.open.take() else {
            return;
        };
        let len = self.index.block_offset(end - 1) + self.index.block_len(end - 1) as u64
            - self.index.block_offset(first);
        if !self.batch.is_empty() && self.bytes + len > BATCH_BYTES {
            self.flush();
        }
        self.batch.push((first, end));
        self.bytes += len;
        if self.bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Sends the batch gathered so far (the open run stays open).
    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.bytes = 0;
            self.send(batch);
        }
    }

    fn send(&mut self, batch: Vec<(usize, usize)>) {
        let _ = self.fetchers[self.sent % self.fetchers.len()].send(batch);
        self.sent += 1;
    }

    fn finish(&mut self) {
        self.close();
        self.flush();
    }
}

/// zstd: the frames holding missing blocks, as ranges of block numbers
/// (a frame is fetched and decompressed whole), consecutive frames merged
/// up to [`MAX_REQUEST`] stored bytes.
fn frame_runs(index: &BlockIndex, sources: &[Source]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize, u64)> = Vec::new();
    let mut last_frame = None;
    for (i, s) in sources.iter().enumerate() {
        let f = index.frame_of_block(i);
        if *s != Source::Fetch || last_frame == Some(f) {
            continue;
        }
        last_frame = Some(f);
        let (first, len) = index.frame_blocks(f);
        let end = first + len.div_ceil(u64::from(index.block_size())) as usize;
        let r = index.frame_stored_range(f);
        match runs.last_mut() {
            Some((_, e, stored)) if *e == first && *stored + (r.end - r.start) <= MAX_REQUEST => {
                *e = end;
                *stored += r.end - r.start;
            }
            _ => runs.push((first, end, r.end - r.start)),
        }
    }
    runs.into_iter().map(|(a, b, _)| (a, b)).collect()
}

/// zstd: fetches the stored chunks around the frames of blocks
/// `first..end`, checks each chunk's BLAKE3 against the signed manifest
/// (so the decoder only ever sees verified input), and decompresses the
/// frames (each bounded by its declared size). Returns the blocks' bytes.
fn fetch_frames(
    index: &BlockIndex,
    chunks: &[abkit_bundle::manifest::Digest],
    (first, end): (usize, usize),
    bundle: &mut dyn ByteRanges,
    payload_offset: u64,
    stored_size: u64,
) -> Result<Vec<u8>> {
    let name = index.payload().to_owned();
    let cs = u64::from(index.chunk_size());
    let (f0, f1) = (
        index.frame_of_block(first),
        index.frame_of_block(end - 1) + 1,
    );
    let (start, stop) = (
        index.frame_stored_range(f0).start,
        index.frame_stored_range(f1 - 1).end,
    );
    let (c0, c1) = (start / cs, stop.div_ceil(cs));
    let from = c0 * cs;
    let mut stored = vec![0u8; ((c1 * cs).min(stored_size) - from) as usize];
    bundle
        .read_range(payload_offset + from, &mut stored)
        .map_err(|e| fetch_error(e, &format!("payload `{name}`")))?;
    for (k, chunk) in stored.chunks(cs as usize).enumerate() {
        let c = c0 as usize + k;
        if chunks.get(c) != Some(&abkit_bundle::manifest::content_hash(chunk)) {
            return Err(abkit_bundle::Error::ChunkHashMismatch {
                payload: name,
                chunk: c as u64,
            }
            .into());
        }
    }
    let mut plain = Vec::new();
    let mut decoder = zstd::bulk::Decompressor::new().map_err(UpdateError::io("zstd"))?;
    decoder
        .set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
            abkit_bundle::reader::ZSTD_WINDOW_LOG_MAX,
        ))
        .map_err(UpdateError::io("zstd"))?;
    for f in f0..f1 {
        let r = index.frame_stored_range(f);
        let frame = &stored[(r.start - from) as usize..(r.end - from) as usize];
        let (_, len) = index.frame_blocks(f);
        let out = decoder.decompress(frame, len as usize).map_err(|e| {
            abkit_bundle::Error::Decompress {
                payload: name.clone(),
                reason: format!("frame {f}: {e}"),
            }
        })?;
        if out.len() as u64 != len {
            return Err(abkit_bundle::Error::Decompress {
                payload: name,
                reason: format!("frame {f} holds {} bytes, not {len}", out.len()),
            }
            .into());
        }
        plain.extend_from_slice(&out);
    }
    Ok(plain)
}

/// Runs of blocks fetched together, in order, and their bytes.
struct Batch {
    /// (first block, end block, where its bytes start in `bytes`), in
    /// block order.
    runs: Vec<(usize, usize, usize)>,
    bytes: Vec<u8>,
    /// Bytes of it read from the target slot, not fetched.
    reused: u64,
}

impl Batch {
    /// Where the bytes of block `i` start, if the batch holds it.
    fn find(&self, i: usize, block_size: usize) -> Option<usize> {
        let k = self.runs.partition_point(|&(_, end, _)| end <= i);
        let &(first, _, at) = self.runs.get(k)?;
        (first <= i).then(|| at + (i - first) * block_size)
    }
}

/// A fetched batch, or why it failed.
type Fetched = Result<Batch>;

/// Fetched batches held ahead of the writer per connection (each at most
/// [`BATCH_BYTES`] of blocks, or [`MAX_REQUEST`] of zstd frames).
const FETCH_AHEAD: usize = 2;
/// Connections used at most for fetching missing blocks.
const FETCH_CONNECTIONS: usize = 2;

/// Builds one payload from `sources`: hands out verified write blocks in
/// order. Fetched runs arrive, in order, from the fetch thread.
struct Assembler<'a, 'b> {
    index: &'a BlockIndex,
    /// The planner's decisions so far, for blocks 0.. in order.
    sources: Vec<Source>,
    decisions: std::sync::mpsc::Receiver<Result<Vec<Source>>>,
    /// A planner error received while looking ahead.
    failed: Option<UpdateError>,
    seeds: &'a [SharedSeed<'b>],
    /// One queue per fetch connection; run k arrives on queue k % n.
    runs: Vec<std::sync::mpsc::Receiver<Fetched>>,
    taken: usize,
    /// Write blocks back from the writer, for reuse (by the scanner too).
    pool: &'a Pool,
    /// The scanner's pieces of the running slot, in order, while it sends
    /// them, and the next one not yet used.
    pieces: Option<std::sync::mpsc::Receiver<Piece>>,
    pending: Option<Piece>,
    next: usize,
    /// The fetched batch being used.
    fetched: Option<Batch>,
    stats: DeltaStats,
}

impl Assembler<'_, '_> {
    /// The next write block of verified bytes, `None` after the last block.
    /// It is the scanner's piece of the same bytes when there is one: its
    /// blocks found at their own offset stay as they were hashed, the
    /// others are overwritten with verified blocks from elsewhere.
    fn next_bytes(&mut self) -> Result<Option<Bytes>> {
        if self.next >= self.index.len() {
            return Ok(None);
        }
        let bs = self.index.block_size() as usize;
        let first = self.next;
        let last = (first + blocks_per_write(self.index)).min(self.index.len());
        let size = (self.index.block_offset(last - 1) - self.index.block_offset(first)) as usize
            + self.index.block_len(last - 1);
        let (mut out, own) = match self.piece_at(self.index.block_offset(first)) {
            Some(Piece { bytes, own, .. }) => (bytes, own),
            // Every block of `out` is overwritten below.
            None => (self.pool.take(size), Vec::new()),
        };
        out.resize(size, 0);
        let own = |i: usize| own.get(i - first).copied().unwrap_or(false);
        while self.next < last {
            let i = self.next;
            let len = self.index.block_len(i);
            let pos = (i - first) * bs;
            if let Some(at) = self.fetched_from(i)
                && let Some(batch) = &self.fetched
            {
                let block = &batch.bytes[at..at + len];
                self.index.check_block(i, block)?;
                out[pos..pos + len].copy_from_slice(block);
                self.next += 1;
                continue;
            }
            if own(i) {
                // Hashed by the scanner in this very buffer.
                self.stats.bytes_reused += len as u64;
                self.next += 1;
                continue;
            }
            match self.source(i)? {
                Source::Fetch => self.fetch_run(i)?,
                Source::Seed(k, block) => {
                    let off = u64::from(block) * bs as u64;
                    // Consecutive blocks of one seed: one read.
                    let mut n = 1;
                    while i + n < last
                        && self.decided(i + n) == Some(Source::Seed(k, block + n as u32))
                        && self.fetched_from(i + n).is_none()
                        && !own(i + n)
                    {
                        n += 1;
                    }
                    let bytes: usize = (i..i + n).map(|b| self.index.block_len(b)).sum();
                    let dst = &mut out[pos..pos + bytes];
                    self.seeds[k as usize].read_at(off, dst)?;
                    // Checked again: what is written is what was read now.
                    for (j, block) in dst.chunks(bs).enumerate() {
                        self.index.check_block(i + j, block)?;
                    }
                    self.stats.bytes_reused += bytes as u64;
                    self.next = i + n;
                }
            }
        }
        Ok(Some(Bytes::Recycled {
            buf: out,
            home: self.pool.home.clone(),
        }))
    }

    /// The scanner's piece starting at byte `at`, if it sends one (waiting
    /// for it: the scan is ahead of the planner, which is ahead of this).
    fn piece_at(&mut self, at: u64) -> Option<Piece> {
        loop {
            if let Some(piece) = self.pending.take() {
                if piece.at == at {
                    return Some(piece);
                }
                if piece.at > at {
                    self.pending = Some(piece);
                    return None;
                }
                let _ = self.pool.home.send(piece.bytes);
            }
            match self.pieces.as_ref()?.recv() {
                Ok(piece) => self.pending = Some(piece),
                Err(_) => {
                    self.pieces = None;
                    return None;
                }
            }
        }
    }

    /// Where block `i` comes from, waiting for the planner if need be.
    fn source(&mut self, i: usize) -> Result<Source> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        while self.sources.len() <= i {
            let chunk = self.decisions.recv().map_err(|_| {
                UpdateError::io("plan the delta")(std::io::Error::other("the planner stopped"))
            })??;
            self.sources.extend(chunk);
        }
        Ok(self.sources[i])
    }

    /// Where block `i` comes from, if the planner said so already.
    fn decided(&mut self, i: usize) -> Option<Source> {
        while self.sources.len() <= i {
            match self.decisions.try_recv() {
                Ok(Ok(chunk)) => self.sources.extend(chunk),
                Ok(Err(e)) => {
                    // For `source` to report.
                    self.failed = Some(e);
                    return None;
                }
                Err(_) => return None,
            }
        }
        Some(self.sources[i])
    }

    /// Where the fetched bytes of block `i` are in the batch held, if
    /// it holds them.
    fn fetched_from(&self, i: usize) -> Option<usize> {
        self.fetched
            .as_ref()?
            .find(i, self.index.block_size() as usize)
    }

    /// Takes the next fetched batch, which must hold block `i`.
    fn fetch_run(&mut self, i: usize) -> Result<()> {
        let queue = &self.runs[self.taken % self.runs.len()];
        self.taken += 1;
        let batch = queue.recv().map_err(|_| {
            UpdateError::io("fetch missing blocks")(std::io::Error::other(
                "the fetch thread stopped",
            ))
        })??;
        if batch.find(i, self.index.block_size() as usize).is_none() {
            return Err(UpdateError::io("fetch missing blocks")(
                std::io::Error::other(format!("the batch fetched next lacks block {i}")),
            ));
        }
        self.stats.bytes_reused += batch.reused;
        self.fetched = Some(batch);
        Ok(())
    }
}

/// Fetches `batches` of `index` from `bundle` in order and sends them, a
/// few ahead of the assembler, so that the network works while the slot
/// does.
fn fetch_batches_into(
    index: &BlockIndex,
    entry: &PayloadEntry,
    batches: impl Iterator<Item = Vec<(usize, usize)>>,
    seeds: &[SharedSeed<'_>],
    bundle: &mut dyn ByteRanges,
    payload_offset: u64,
    tx: &std::sync::mpsc::SyncSender<Fetched>,
) {
    for runs in batches {
        let got = if index.compression() == Compression::Zstd {
            let (first, end) = runs[0];
            fetch_frames(
                index,
                &entry.chunks,
                (first, end),
                &mut *bundle,
                payload_offset,
                entry.stored_size,
            )
            .map(|bytes| Batch {
                runs: vec![(first, end, 0)],
                bytes,
                reused: 0,
            })
        } else {
            fetch_runs(index, &runs, seeds, bundle, payload_offset)
        };
        let failed = got.is_err();
        if tx.send(got).is_err() || failed {
            return;
        }
    }
}

/// The blocks of `runs` (block ranges, in order) of a payload stored
/// uncompressed: those a seed that is not scanned (the target slot: its
/// old contents, or what an interrupted install wrote, which is how a rerun
/// resumes) holds at their own offset are read from it, one read per run,
/// the others fetched from the bundle. Looking here, on a fetch thread just
/// before the fetch, keeps those reads off the planner, which the writer
/// waits for: 6,300 single-block reads were 120-140 ms of the planner's
/// time on bench/delta.sh's scattered case. The assembler checks every
/// block of a batch against the index before it is written (I7), wherever
/// it came from.
fn fetch_runs(
    index: &BlockIndex,
    runs: &[(usize, usize)],
    seeds: &[SharedSeed<'_>],
    bundle: &mut dyn ByteRanges,
    payload_offset: u64,
) -> Result<Batch> {
    let bs = index.block_size() as usize;
    let span = |first: usize, end: usize| {
        let from = index.block_offset(first);
        (
            from,
            (index.block_offset(end - 1) + index.block_len(end - 1) as u64 - from) as usize,
        )
    };
    let mut placed = Vec::with_capacity(runs.len());
    let mut at = 0usize;
    for &(first, end) in runs {
        placed.push((first, end, at));
        at += span(first, end).1;
    }
    let mut bytes = vec![0u8; at];
    // Blocks of the batch a seed holds already.
    let mut local = vec![false; runs.iter().map(|(f, e)| e - f).sum()];
    let mut reused = 0u64;
    let mut hashes = Vec::new();
    for seed in seeds.iter().filter(|s| s.scan == 0) {
        let Ok(mut dev) = seed.dev.lock() else {
            continue;
        };
        let size = dev.size();
        let mut k = 0;
        for &(first, end, at) in &placed {
            let (from, len) = span(first, end);
            let n = end - first;
            let dst = &mut bytes[at..at + len];
            if from + len as u64 > size
                || local[k..k + n].iter().all(|l| *l)
                || dev.read_at(from, dst).is_err()
            {
                // Not there: whatever was read is fetched over below.
                k += n;
                continue;
            }
            hashes.clear();
            block_hashes(dst, bs, &mut hashes);
            if hashes.len() < n {
                hashes.push(block_hash(&dst[(n - 1) * bs..]));
            }
            for (j, hash) in hashes.iter().enumerate() {
                if !local[k + j] && hash == index.hash(first + j) {
                    local[k + j] = true;
                    reused += index.block_len(first + j) as u64;
                }
            }
            k += n;
        }
        // Out of the page cache again: left there, these scattered pages
        // split the range the slot writer fills next into small pages
        // (measured: its `pwrite` took twice the CPU of a full install's).
        // The writer is behind the assembler, which is behind this batch.
        if let (Some(&(first, _, _)), Some(&(_, end, _))) = (placed.first(), placed.last()) {
            let (from, _) = span(first, first + 1);
            let (last, len) = span(end - 1, end);
            dev.retire(from, last + len as u64 - from);
        }
    }
    // The rest from the bundle: the blocks not held, as ranges.
    let mut ranges = Vec::new();
    let mut into = Vec::new();
    let mut k = 0;
    for &(first, end, at) in &placed {
        let mut j = first;
        while j < end {
            if local[k + j - first] {
                j += 1;
                continue;
            }
            let start = j;
            while j < end && !local[k + j - first] {
                j += 1;
            }
            let (from, len) = span(start, j);
            ranges.push((payload_offset + from, len as u64));
            into.push((at + (start - first) * bs, len));
        }
        k += end - first;
    }
    let failed = |e| fetch_error(e, &format!("payload `{}`", index.payload()));
    if reused == 0 {
        // Nothing held (the usual case): straight into the batch.
        bundle.read_ranges(&ranges, &mut bytes).map_err(failed)?;
    } else if !ranges.is_empty() {
        let mut fetched = vec![0u8; into.iter().map(|(_, len)| len).sum()];
        bundle.read_ranges(&ranges, &mut fetched).map_err(failed)?;
        let mut from = 0;
        for (at, len) in into {
            bytes[at..at + len].copy_from_slice(&fetched[from..from + len]);
            from += len;
        }
    }
    Ok(Batch {
        runs: placed,
        bytes,
        reused,
    })
}

/// Runs `build` with an [`Assembler`] fed by three kinds of threads: the
/// scanner hashing the seeds, the planner deciding block by block where
/// each comes from, and the fetchers (one per connection) getting the
/// missing blocks. Returns what `build` returned and the stats.
fn with_assembler<T>(
    index: &BlockIndex,
    entry: &PayloadEntry,
    seeds: &mut [Seed<'_>],
    bundle: &mut dyn ByteRanges,
    payload_offset: u64,
    build: impl FnOnce(&mut Assembler<'_, '_>) -> Result<T>,
) -> Result<(T, DeltaStats)> {
    let wanted = Wanted::new(index);
    let shared: Vec<SharedSeed<'_>> = seeds
        .iter_mut()
        .map(|s| SharedSeed {
            name: s.name.clone(),
            scan: s.scan,
            dev: Mutex::new(&mut *s.dev),
        })
        .collect();
    let scan = Scan::default();
    let pool = Pool::new();
    let fetched_before = bundle.bytes_read();
    let requests_before = bundle.requests();
    // A second connection hides the round trip of each request.
    let mut forks: Vec<Box<dyn ByteRanges>> = Vec::new();
    forks.extend((1..FETCH_CONNECTIONS).filter_map(|_| bundle.fork()));
    let mut sources_of_bytes: Vec<&mut dyn ByteRanges> = vec![bundle];
    sources_of_bytes.extend(forks.iter_mut().map(|f| &mut **f as &mut dyn ByteRanges));
    let (out, stats) = std::thread::scope(|scope| {
        let spawn_error = |e| UpdateError::io("start a delta thread")(e);
        let mut queues = Vec::new();
        let mut to_fetchers = Vec::new();
        let mut threads = Vec::new();
        let seeds_of_fetchers = &shared;
        for src in sources_of_bytes {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Fetched>(FETCH_AHEAD);
            let (to, batches) = std::sync::mpsc::channel::<Vec<(usize, usize)>>();
            queues.push(rx);
            to_fetchers.push(to);
            threads.push(
                std::thread::Builder::new()
                    .name("abkit-delta-fetch".into())
                    .spawn_scoped(scope, move || {
                        fetch_batches_into(
                            index,
                            entry,
                            batches.into_iter(),
                            seeds_of_fetchers,
                            src,
                            payload_offset,
                            &tx,
                        );
                    })
                    .map_err(&spawn_error)?,
            );
        }
        let (wanted, shared, scan, pool) = (&wanted, &shared, &scan, &pool);
        // Pieces of the last seed scanned (the running slot), for blocks
        // at their own offset; not for zstd payloads, planned only once
        // the scan is done.
        let (to_assembler, pieces) = std::sync::mpsc::sync_channel::<Piece>(PIECES_AHEAD);
        let aligned = shared
            .iter()
            .rposition(|s| s.scan > 0)
            .filter(|_| index.compression() != Compression::Zstd)
            .map(|k| (k, to_assembler));
        let pieces = aligned.is_some().then_some(pieces);
        threads.push(
            std::thread::Builder::new()
                .name("abkit-delta-scan".into())
                .spawn_scoped(scope, move || {
                    scan_seeds(index, wanted, shared, scan, aligned, pool);
                })
                .map_err(&spawn_error)?,
        );
        let (decided, decisions) = std::sync::mpsc::channel();
        threads.push(
            std::thread::Builder::new()
                .name("abkit-delta-plan".into())
                .spawn_scoped(scope, move || {
                    plan(index, wanted, shared, scan, &decided, &to_fetchers);
                })
                .map_err(&spawn_error)?,
        );
        let mut asm = Assembler {
            index,
            sources: Vec::with_capacity(index.len()),
            decisions,
            failed: None,
            seeds: shared,
            runs: queues,
            taken: 0,
            pool,
            pieces,
            pending: None,
            next: 0,
            fetched: None,
            stats: DeltaStats::default(),
        };
        let out = build(&mut asm);
        // Stop the scan and unblock the planner and the fetchers if the
        // build stopped early.
        scan.stop.store(true, Ordering::Relaxed);
        let Assembler {
            runs,
            decisions,
            pieces,
            stats,
            ..
        } = asm;
        drop(runs);
        drop(decisions);
        drop(pieces);
        for t in threads {
            let _ = t.join();
        }
        out.map(|o| (o, stats))
    })?;
    let mut stats = stats;
    stats.bytes_fetched =
        bundle.bytes_read() - fetched_before + forks.iter().map(|f| f.bytes_read()).sum::<u64>();
    stats.requests =
        bundle.requests() - requests_before + forks.iter().map(|f| f.requests()).sum::<u64>();
    Ok((out, stats))
}

/// Builds payload `index` into `dev` from `seeds` and ranges of `bundle`,
/// through the verified copy pipeline (read back against its BLAKE3, or
/// checked by mark-good when it has a verity tree: `copy::ReadBack`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_payload(
    index: &BlockIndex,
    entry: &PayloadEntry,
    payload_offset: u64,
    bundle: &mut dyn ByteRanges,
    seeds: &mut [Seed<'_>],
    dev: &mut dyn SlotDevice,
    slot: Slot,
    rep: &mut dyn Reporter,
) -> Result<DeltaStats> {
    let ((), stats) = with_assembler(index, entry, seeds, bundle, payload_offset, |asm| {
        copy::copy_blocks(
            &mut || asm.next_bytes(),
            index.size(),
            entry,
            dev,
            slot,
            Step::WriteSystem,
            rep,
        )
        .map(|_| ())
    })?;
    Ok(stats)
}

/// Builds payload `index` in memory (the loader: small, written to the ESP
/// as one file) and checks its BLAKE3.
pub(crate) fn assemble_in_memory(
    index: &BlockIndex,
    entry: &PayloadEntry,
    payload_offset: u64,
    bundle: &mut dyn ByteRanges,
    seeds: &mut [Seed<'_>],
    rep: &mut dyn Reporter,
) -> Result<(Vec<u8>, DeltaStats)> {
    let _ = rep;
    let (out, stats) = with_assembler(index, entry, seeds, bundle, payload_offset, |asm| {
        let mut out = Vec::with_capacity(index.size() as usize);
        while let Some(bytes) = asm.next_bytes()? {
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    })?;
    if abkit_bundle::manifest::content_hash(&out) != entry.blake3 {
        return Err(abkit_bundle::Error::PayloadHashMismatch {
            payload: index.payload().to_owned(),
        }
        .into());
    }
    Ok((out, stats))
}

/// Below this share of reusable blocks a delta does not pay: it would
/// fetch nearly everything by ranges and hash the running slot for
/// nothing, so the bundle is installed in full instead.
pub const DELTA_PAYS: f64 = 0.10;
/// Blocks of the running slot sampled to estimate that share.
const SAMPLES: u64 = 256;

/// About which share of the blocks of `seed` (its first `scan` bytes) the
/// new payload `index` holds somewhere: [`SAMPLES`] blocks spread evenly
/// over the seed, each looked up in the index by its BLAKE3 (1 MiB read,
/// a few milliseconds). Blocks that moved count, as the delta would find
/// them. 0 for an empty or unreadable seed.
pub fn reusable_share(index: &BlockIndex, seed: &mut dyn SlotDevice, scan: u64) -> f64 {
    let bs = u64::from(index.block_size());
    let blocks = scan.min(seed.size()) / bs;
    if blocks == 0 || index.is_empty() {
        return 0.0;
    }
    let step = blocks.div_ceil(SAMPLES.min(blocks));
    let mut buf = vec![0u8; bs as usize];
    let mut samples = std::collections::HashSet::new();
    let mut taken = 0u64;
    for b in (0..blocks).step_by(step as usize) {
        if seed.read_at(b * bs, &mut buf).is_ok() {
            samples.insert(block_hash(&buf));
            taken += 1;
        }
    }
    let mut found = std::collections::HashSet::new();
    for i in 0..index.len() {
        if samples.contains(index.hash(i)) {
            found.insert(*index.hash(i));
        }
    }
    // Distinct hashes found over distinct hashes sampled (a slot of zeros
    // is one sample, found or not).
    let distinct = samples.len().max(1) as f64;
    if taken == 0 {
        0.0
    } else {
        found.len() as f64 / distinct
    }
}

/// The whole file behind a [`ByteRanges`] as a `Read` from byte 0 (1 MiB
/// ranges): how a bundle opened for a delta is installed in full when the
/// delta does not pay.
pub struct RangeRead<'a> {
    src: &'a mut dyn ByteRanges,
    at: u64,
    total: u64,
}

impl<'a> RangeRead<'a> {
    pub fn new(src: &'a mut dyn ByteRanges, total: u64) -> RangeRead<'a> {
        RangeRead { src, at: 0, total }
    }
}

impl std::io::Read for RangeRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.total - self.at).min(buf.len().min(1 << 20) as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.src.read_range(self.at, &mut buf[..n])?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A loader (or any small payload) in memory as a seed.
pub struct MemSeed(pub Vec<u8>);

impl SlotDevice for MemSeed {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("a seed is read-only"))
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let at = usize::try_from(offset).map_err(std::io::Error::other)?;
        match self.0.get(at..at + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abkit_disk::fixtures::noise;

    /// The batches `Runs` sends for a pattern of missing (1) blocks of
    /// an index of `pattern.len()` 4 KiB blocks, on two fetchers.
    fn batches_of(pattern: &[u8]) -> Vec<Vec<(usize, usize)>> {
        let index = index_of(&vec![0u8; pattern.len() * 32]);
        let (a, ra) = std::sync::mpsc::channel();
        let (b, rb) = std::sync::mpsc::channel();
        let fetchers = [a, b];
        let mut runs = Runs::new(&index, &fetchers);
        for (i, &p) in pattern.iter().enumerate() {
            runs.add(i, p == 1);
        }
        runs.finish();
        drop(fetchers);
        let (ra, rb): (Vec<_>, Vec<_>) = (ra.into_iter().collect(), rb.into_iter().collect());
        // Batch k went to fetcher k % 2.
        let mut all = Vec::new();
        for k in 0..ra.len() + rb.len() {
            all.push(if k % 2 == 0 {
                ra[k / 2].clone()
            } else {
                rb[k / 2].clone()
            });
        }
        all
    }

    /// The signed-looking index of a payload whose block hashes are
    /// `hashes` (32 bytes each, 4 KiB blocks).
    fn index_of(hashes: &[u8]) -> BlockIndex {
        let blocks = hashes.len() / 32;
        let manifest_json = format!(
            r#"{{"compatible":"t","version":"1.0.0","created":0,"chunk_size":1048576,"block_size":4096,"payloads":[{{"name":"system","size":{size},"blake3":"{z}","compression":"none","stored_size":{size},"chunks":[{chunks}],"index":{{"size":{isize},"blake3":"{b}"}}}}]}}"#,
            size = blocks * 4096,
            z = "0".repeat(64),
            chunks = vec![format!("\"{}\"", "0".repeat(64)); (blocks * 4096).div_ceil(1 << 20)]
                .join(","),
            isize = hashes.len(),
            b = hex::encode(blake3_of(hashes)),
        );
        let manifest = Manifest::parse(manifest_json.as_bytes()).unwrap();
        BlockIndex::parse(&manifest, &manifest.payloads[0], hashes).unwrap()
    }

    #[test]
    fn the_table_of_wanted_hashes_finds_each_hash_at_its_first_block() {
        // 3,000 blocks, 700 distinct hashes, several per bucket (the
        // first two bytes take 40 values).
        let mut hashes = Vec::new();
        for i in 0..3000u32 {
            let v = (i * 7919) % 700;
            let mut h = blake3_of(&v.to_le_bytes());
            h[0] = 0;
            h[1] = (v % 40) as u8;
            hashes.extend_from_slice(&h);
        }
        let index = index_of(&hashes);
        let wanted = Wanted::new(&index);
        assert_eq!(wanted.hashes.len(), 700);
        for i in 0..index.len() {
            let e = wanted.position(index.hash(i)).unwrap();
            let first = (0..index.len())
                .find(|&b| index.hash(b) == index.hash(i))
                .unwrap();
            assert_eq!(wanted.hashes[e] as usize, first, "block {i}");
        }
        assert_eq!(wanted.position(&[1; 32]), None);
        // Sorted by hash within each bucket, buckets in order.
        let sorted: Vec<&[u8; 32]> = wanted
            .hashes
            .iter()
            .map(|&b| index.hash(b as usize))
            .collect();
        assert!(sorted.windows(2).all(|w| w[0] < w[1]));
    }

    fn blake3_of(bytes: &[u8]) -> [u8; 32] {
        block_hash(bytes)
    }

    const MIB: usize = 1 << 20;
    const BS: usize = 4096;

    /// A slot in memory.
    struct MemDev(Vec<u8>);

    impl SlotDevice for MemDev {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            let at = offset as usize;
            self.0[at..at + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A running slot whose bytes change once the scanner has read them:
    /// reads of a whole piece (the scanner's) see the old bytes, shorter
    /// reads (the copy of a block found elsewhere) see them changed.
    struct ChangingSeed(Vec<u8>);

    impl SlotDevice for ChangingSeed {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("read-only"))
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            if buf.len() != WRITE_BLOCK {
                buf.iter_mut().for_each(|b| *b ^= 0x5a);
            }
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Installs `new` as a delta over `old` (the running slot) into an
    /// empty slot: the result, the slot and the stats.
    fn delta_install(old: &mut dyn SlotDevice, new: &[u8]) -> (Result<DeltaStats>, Vec<u8>) {
        delta_install_over(old, &mut MemDev(vec![0; new.len()]), new)
    }

    /// [`delta_install`] with the target slot's old contents.
    fn delta_install_over(
        old: &mut dyn SlotDevice,
        target_old: &mut dyn SlotDevice,
        new: &[u8],
    ) -> (Result<DeltaStats>, Vec<u8>) {
        use abkit_bundle::{CreateOptions, PayloadSpec, SecretKey};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("system.img"), new).unwrap();
        let key = SecretKey::from_seed(&[9; 32]);
        let ring = Keyring::from_keys(vec![key.public_key()]);
        let opts = CreateOptions::new("demo-os", "1.1.0".parse().unwrap());
        let spec = PayloadSpec {
            name: "system".into(),
            path: dir.path().join("system.img"),
            verity: false,
        };
        let out = dir.path().join("b.abb");
        abkit_bundle::create_bundle(&out, &[spec], &opts, &[key], &mut |_| {}).unwrap();
        let mut src = abkit_fetch::FileRanges {
            file: std::fs::File::open(&out).unwrap(),
            read: 0,
        };
        let head = open_ranged(&mut src, &ring).unwrap();
        let scan = old.size();
        let mut seeds = [
            Seed {
                name: "slot A".into(),
                dev: old,
                scan,
            },
            Seed {
                name: "slot B".into(),
                dev: target_old,
                scan: 0,
            },
        ];
        let mut dev = MemDev(vec![0; new.len()]);
        let got = write_payload(
            &head.indexes[0],
            &head.manifest.payloads[0],
            head.layout.payload_offsets[0],
            &mut src,
            &mut seeds,
            &mut dev,
            Slot::B,
            &mut crate::progress::Silent,
        );
        (got, dev.0)
    }

    /// Copies block `from` of `src` to block `to` of `dst`.
    fn put_block(dst: &mut [u8], to: usize, src: &[u8], from: usize) {
        dst[to * BS..(to + 1) * BS].copy_from_slice(&src[from * BS..(from + 1) * BS]);
    }

    #[test]
    fn blocks_at_their_own_offset_and_moved_ones_are_reused_and_the_slot_is_the_new_image() {
        let old = noise(8 * MIB, 1);
        let mut new = old.clone();
        let fresh = noise(3 * BS, 2);
        // Changed: fetched.
        for (k, b) in [5usize, 700, 1500].into_iter().enumerate() {
            put_block(&mut new, b, &fresh, k);
        }
        // Moved forwards by 3 MiB (its old place scanned long before) and
        // backwards by 1 MiB (scanned ahead of the planner): reused.
        put_block(&mut new, 1000, &old, 1000 - 768);
        put_block(&mut new, 1200, &old, 1200 + 256);
        let (got, slot) = delta_install(&mut MemSeed(old), &new);
        let stats = got.unwrap();
        assert!(slot == new, "the slot differs from the new image");
        assert_eq!(stats.bytes_reused, (new.len() - 3 * BS) as u64);
        assert!(
            stats.bytes_fetched < (new.len() / 20) as u64,
            "fetched {} bytes",
            stats.bytes_fetched
        );
    }

    #[test]
    fn a_running_slot_changed_between_scan_and_copy_is_never_written_unverified() {
        // At their own offset: written from the bytes the scan hashed, so
        // a later change of the slot does not matter.
        let old = noise(4 * MIB, 3);
        let (got, slot) = delta_install(&mut ChangingSeed(old.clone()), &old);
        got.unwrap();
        assert!(slot == old, "the slot differs from the new image");
        // A moved block is read again when it is copied: the change is
        // found and the block refused, not written.
        let mut new = old.clone();
        put_block(&mut new, 900, &old, 300);
        let (got, slot) = delta_install(&mut ChangingSeed(old.clone()), &new);
        let err = got.unwrap_err();
        assert!(
            matches!(
                err,
                UpdateError::Bundle(abkit_bundle::Error::BlockHashMismatch { block: 900, .. })
            ),
            "{err:?}"
        );
        let changed: Vec<u8> = old[300 * BS..301 * BS].iter().map(|b| b ^ 0x5a).collect();
        assert!(
            slot.chunks(BS).all(|b| b != &changed[..]),
            "the changed block reached the slot"
        );
    }

    /// Offsets read and ranges retired.
    type Log = std::sync::Arc<Mutex<(Vec<u64>, Vec<(u64, u64)>)>>;

    /// A target slot that logs the offsets read and the ranges retired.
    struct Logged(MemDev, Log);

    impl SlotDevice for Logged {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            self.0.write_at(offset, buf)
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.1.lock().unwrap().0.push(offset);
            self.0.read_at(offset, buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn retire(&mut self, offset: u64, len: u64) {
            self.1.lock().unwrap().1.push((offset, len));
        }
    }

    #[test]
    fn the_target_slot_is_read_once_per_missing_run_its_pages_dropped_and_its_blocks_used() {
        let old = noise(4 * MIB, 5);
        let mut new = old.clone();
        let fresh = noise(6 * BS, 6);
        for (k, b) in [3usize, 4, 300, 700, 701, 1023].into_iter().enumerate() {
            put_block(&mut new, b, &fresh, k);
        }
        // The target slot holds block 700 of the new image already (an
        // interrupted install): read, used, not fetched.
        let mut target = vec![0; new.len()];
        put_block(&mut target, 700, &new, 700);
        let log = std::sync::Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let mut target = Logged(MemDev(target), log.clone());
        let (got, slot) = delta_install_over(&mut MemSeed(old), &mut target, &new);
        let stats = got.unwrap();
        assert!(slot == new, "the slot differs from the new image");
        assert_eq!(stats.bytes_reused, (new.len() - 5 * BS) as u64);
        let (reads, retired) = &*log.lock().unwrap();
        assert!(!reads.is_empty());
        for r in reads {
            assert!(
                retired
                    .iter()
                    .any(|&(at, len)| at <= *r && r + BS as u64 <= at + len),
                "the page read at {r} stays cached; retired {retired:?}"
            );
        }
        // One read per run of missing blocks (3-4, 300, 700-701, 1023),
        // on the fetch threads (two: in either order); block 700 is not
        // read again.
        let mut reads = reads.clone();
        reads.sort_unstable();
        assert_eq!(
            reads,
            [
                3 * BS as u64,
                300 * BS as u64,
                700 * BS as u64,
                1023 * BS as u64
            ]
        );
        assert!(
            retired.len() <= 4,
            "at most one drop per batch: {retired:?}"
        );
    }

    #[test]
    fn runs_merge_small_gaps_stop_at_the_batch_size_and_alternate_fetchers() {
        // Gaps of 1 and 2 blocks merge (8 KiB), a gap of 3 does not.
        assert_eq!(
            batches_of(&[1, 0, 1, 0, 0, 1, 0, 0, 0, 1]),
            vec![vec![(0, 6), (9, 10)]]
        );
        assert_eq!(batches_of(&[0, 0]), Vec::<Vec<(usize, usize)>>::new());
        // 256 KiB batches: 64 blocks.
        assert_eq!(
            batches_of(&[1; 150]),
            vec![vec![(0, 64)], vec![(64, 128)], vec![(128, 150)]]
        );
    }
}
