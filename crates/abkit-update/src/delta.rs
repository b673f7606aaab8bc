//! Delta install (issue 15): build the new payloads from the blocks the
//! machine already holds and fetch only the missing ones, by byte ranges,
//! from the same bundle.
//!
//! The bundle's signed block index (BLAKE3 of every 4 KiB block, format 2)
//! says what every block of a payload must be. The running slot is hashed
//! block by block; every new block found there is copied from it, a block
//! still missing is looked for at its own offset in the target slot (its
//! old contents, or what an interrupted install already wrote: that is how
//! a rerun resumes), and the rest is fetched with coalesced Range requests.
//! Every block, reused or fetched, is checked against the index before it
//! goes into the slot (I7); the slot is then read back against the
//! payload's SHA-256 as in a full install (`crate::copy`).

use abkit_bundle::format::{HEADER_LEN, Header};
use abkit_bundle::index::block_hash;
use abkit_bundle::reader::RawHead;
use abkit_bundle::{BlockIndex, Compression, KeyId, Keyring, Layout, Manifest, PayloadEntry};
use abkit_fetch::ByteRanges;

use crate::copy::{self, Bytes, WRITE_BLOCK};
use crate::machine::SlotDevice;
use crate::progress::{Reporter, Step};
use crate::{Result, Slot, UpdateError};

/// Bytes asked for by the first request: header, manifest and signatures
/// fit (a format 2 manifest lists 1 MiB chunks, about 67 bytes each).
pub const HEAD_WINDOW: u64 = 64 * 1024;
/// Two missing runs closer than this are fetched as one request (the
/// blocks between them are verified and used like the others): fewer
/// requests for a few more bytes.
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

/// The first 8 bytes of a BLAKE3 digest: already uniform.
fn prefix(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().unwrap_or_default())
}

/// The distinct block hashes of an index, sorted by their first 8 bytes,
/// each with the first block that has it and where a seed holds it: a
/// sorted table instead of a hash map (16 + 8 bytes per block, not about
/// 100: issue 14 wants installs in 16 MiB).
struct Wanted<'a> {
    index: &'a BlockIndex,
    /// (prefix, first block with this hash), sorted, one per hash.
    hashes: Vec<(u64, u32)>,
    /// Where a seed holds each of `hashes`, once found.
    found: Vec<Option<Source>>,
}

impl<'a> Wanted<'a> {
    fn new(index: &'a BlockIndex) -> Wanted<'a> {
        let mut hashes: Vec<(u64, u32)> = (0..index.len())
            .map(|i| (prefix(index.hash(i)), i as u32))
            .collect();
        hashes.sort_unstable_by(|a, b| {
            (a.0, index.hash(a.1 as usize), a.1).cmp(&(b.0, index.hash(b.1 as usize), b.1))
        });
        hashes.dedup_by(|b, a| index.hash(a.1 as usize) == index.hash(b.1 as usize));
        let found = vec![None; hashes.len()];
        Wanted {
            index,
            hashes,
            found,
        }
    }

    /// The entry of `hash`, if the index has it.
    fn position(&self, hash: &[u8; 32]) -> Option<usize> {
        let p = prefix(hash);
        let from = self.hashes.partition_point(|e| e.0 < p);
        self.hashes[from..]
            .iter()
            .take_while(|e| e.0 == p)
            .position(|e| self.index.hash(e.1 as usize) == hash)
            .map(|k| from + k)
    }
}

/// Size of the reads that hash a seed (the running slot).
const SCAN_READ: usize = 1 << 20;

/// For every block of `index`, where to take it from: a block of a seed
/// with the same BLAKE3 (the scanned seeds first, found anywhere), else
/// the block at the same offset of any seed, else the bundle.
fn plan(index: &BlockIndex, seeds: &mut [Seed<'_>], rep: &mut dyn Reporter) -> Result<Vec<Source>> {
    let bs = index.block_size() as usize;
    let mut wanted = Wanted::new(index);
    let mut buf = vec![0u8; SCAN_READ];
    for (k, seed) in seeds.iter_mut().enumerate() {
        let len = seed.scan.min(seed.dev.size()) / bs as u64 * bs as u64;
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(SCAN_READ as u64) as usize;
            seed.dev
                .read_at(at, &mut buf[..n])
                .map_err(UpdateError::io(format!("read {} at byte {at}", seed.name)))?;
            // Hashed on two cores: the second half on a thread of its own.
            let blocks = n / bs;
            let (first, second) = buf[..blocks * bs].split_at(blocks / 2 * bs);
            let hash_all =
                |part: &[u8]| -> Vec<[u8; 32]> { part.chunks_exact(bs).map(block_hash).collect() };
            let (a, b) = std::thread::scope(|scope| {
                let other = scope.spawn(|| hash_all(second));
                let mine = hash_all(first);
                (mine, other.join())
            });
            let b = b.map_err(|_| {
                UpdateError::io("hash a seed")(std::io::Error::other("a hashing thread panicked"))
            })?;
            for (j, hash) in a.iter().chain(&b).enumerate() {
                if let Some(e) = wanted.position(hash)
                    && wanted.found[e].is_none()
                {
                    let block = u32::try_from(at / bs as u64 + j as u64).map_err(|_| {
                        UpdateError::SizeOverflow(format!("{} of {len} bytes", seed.name))
                    })?;
                    wanted.found[e] = Some(Source::Seed(k as u8, block));
                }
            }
            at += n as u64;
            rep.event(crate::progress::Event::Progress {
                step: Step::Delta,
                done: at,
                total: len,
            });
        }
    }
    drop(buf);
    let mut sources = Vec::with_capacity(index.len());
    let mut block = vec![0u8; bs];
    for i in 0..index.len() {
        let mut source = wanted.position(index.hash(i)).and_then(|e| wanted.found[e]);
        if source.is_none() {
            // The same offset: a short last block, the target's old
            // contents, what an interrupted install wrote.
            let (off, len) = (index.block_offset(i), index.block_len(i));
            for (k, seed) in seeds.iter_mut().enumerate() {
                if off + len as u64 <= seed.dev.size()
                    && seed.dev.read_at(off, &mut block[..len]).is_ok()
                    && block_hash(&block[..len]) == *index.hash(i)
                {
                    source = Some(Source::Seed(k as u8, i as u32));
                    break;
                }
            }
        }
        sources.push(source.unwrap_or(Source::Fetch));
    }
    Ok(sources)
}

/// The missing blocks as ranges of block numbers, runs closer than
/// [`MERGE_GAP`] merged, none longer than [`BATCH_BYTES`].
fn fetch_runs(sources: &[Source], block_size: u32) -> Vec<(usize, usize)> {
    let gap = (MERGE_GAP / u64::from(block_size)) as usize;
    let max = (BATCH_BYTES / u64::from(block_size)).max(1) as usize;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        if *s != Source::Fetch {
            continue;
        }
        match runs.last_mut() {
            Some((start, end)) if i <= *end + gap && i + 1 - *start <= max => *end = i + 1,
            _ => runs.push((i, i + 1)),
        }
    }
    runs
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
/// `first..end`, checks each chunk's SHA-256 against the signed manifest
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
    use sha2::Digest as _;
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
        if chunks.get(c).map(|d| d.0) != Some(sha2::Sha256::digest(chunk).into()) {
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
    /// (first block, end block, where its bytes start in `bytes`).
    runs: Vec<(usize, usize, usize)>,
    bytes: Vec<u8>,
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

/// Fetched runs held ahead of the writer per connection (each at most
/// [`MAX_REQUEST`]).
const FETCH_AHEAD: usize = 2;
/// Connections used at most for fetching missing blocks.
const FETCH_CONNECTIONS: usize = 2;

/// Builds one payload from `sources`: hands out verified write blocks in
/// order. Fetched runs arrive, in order, from the fetch thread.
struct Assembler<'a, 'b> {
    index: &'a BlockIndex,
    sources: Vec<Source>,
    seeds: &'a mut [Seed<'b>],
    /// One queue per fetch connection; run k arrives on queue k % n.
    runs: Vec<std::sync::mpsc::Receiver<Fetched>>,
    taken: usize,
    /// Write blocks back from the writer, for reuse.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    home: std::sync::mpsc::Sender<Vec<u8>>,
    next: usize,
    /// The fetched batch being used.
    fetched: Option<Batch>,
    stats: DeltaStats,
}

impl Assembler<'_, '_> {
    /// The next write block of verified bytes, `None` after the last block.
    fn next_bytes(&mut self) -> Result<Option<Bytes>> {
        if self.next >= self.index.len() {
            return Ok(None);
        }
        let bs = self.index.block_size() as usize;
        let mut out = self.spare.try_recv().unwrap_or_default();
        out.clear();
        out.reserve(WRITE_BLOCK);
        while self.next < self.index.len() && out.len() < WRITE_BLOCK {
            let i = self.next;
            let len = self.index.block_len(i);
            if let Some(at) = self.fetched_from(i)
                && let Some(batch) = &self.fetched
            {
                let block = &batch.bytes[at..at + len];
                self.index.check_block(i, block)?;
                out.extend_from_slice(block);
                self.next += 1;
                continue;
            }
            match self.sources[i] {
                Source::Fetch => self.fetch_run(i)?,
                Source::Seed(k, block) => {
                    let off = u64::from(block) * bs as u64;
                    // Consecutive blocks of one seed: one read.
                    let mut n = 1;
                    while i + n < self.index.len()
                        && out.len() + (n + 1) * bs <= WRITE_BLOCK
                        && self.sources[i + n] == Source::Seed(k, block + n as u32)
                        && self.fetched_from(i + n).is_none()
                    {
                        n += 1;
                    }
                    let bytes: usize = (i..i + n).map(|b| self.index.block_len(b)).sum();
                    let start = out.len();
                    out.resize(start + bytes, 0);
                    let seed = &mut self.seeds[k as usize];
                    seed.dev
                        .read_at(off, &mut out[start..])
                        .map_err(UpdateError::io(format!("read {} at byte {off}", seed.name)))?;
                    // Checked again: what is written is what was read now.
                    for (j, block) in out[start..].chunks(bs).enumerate() {
                        self.index.check_block(i + j, block)?;
                    }
                    self.stats.bytes_reused += bytes as u64;
                    self.next = i + n;
                }
            }
        }
        Ok(Some(Bytes::Recycled {
            buf: out,
            home: self.home.clone(),
        }))
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
        self.fetched = Some(batch);
        Ok(())
    }
}

/// Groups `runs` into batches of at most [`BATCH_BYTES`] (a longer run is
/// a batch of its own); zstd runs are batches of their own.
fn batches(index: &BlockIndex, runs: &[(usize, usize)]) -> Vec<Vec<(usize, usize)>> {
    let mut out: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut bytes = 0u64;
    for &(first, end) in runs {
        let len = index.block_offset(end - 1) + index.block_len(end - 1) as u64
            - index.block_offset(first);
        match out.last_mut() {
            Some(batch)
                if index.compression() == Compression::None && bytes + len <= BATCH_BYTES =>
            {
                batch.push((first, end));
                bytes += len;
            }
            _ => {
                out.push(vec![(first, end)]);
                bytes = len;
            }
        }
    }
    out
}

/// Fetches `batches` of `index` from `bundle` in order and sends them, a
/// few ahead of the assembler, so that the network works while the slot
/// does.
fn fetch_batches_into(
    index: &BlockIndex,
    entry: &PayloadEntry,
    batches: impl Iterator<Item = Vec<(usize, usize)>>,
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
            })
        } else {
            let mut ranges = Vec::with_capacity(runs.len());
            let mut placed = Vec::with_capacity(runs.len());
            let mut at = 0usize;
            for &(first, end) in &runs {
                let from = index.block_offset(first);
                let to = index.block_offset(end - 1) + index.block_len(end - 1) as u64;
                ranges.push((payload_offset + from, to - from));
                placed.push((first, end, at));
                at += (to - from) as usize;
            }
            let mut bytes = vec![0u8; at];
            bundle
                .read_ranges(&ranges, &mut bytes)
                .map(|()| Batch {
                    runs: placed,
                    bytes,
                })
                .map_err(|e| fetch_error(e, &format!("payload `{}`", index.payload())))
        };
        let failed = got.is_err();
        if tx.send(got).is_err() || failed {
            return;
        }
    }
}

/// Runs `build` with an [`Assembler`] whose fetched runs come from a
/// thread of their own. Returns what `build` returned and the stats.
fn with_assembler<T>(
    index: &BlockIndex,
    entry: &PayloadEntry,
    sources: Vec<Source>,
    seeds: &mut [Seed<'_>],
    bundle: &mut dyn ByteRanges,
    payload_offset: u64,
    build: impl FnOnce(&mut Assembler<'_, '_>) -> Result<T>,
) -> Result<(T, DeltaStats)> {
    let runs = match index.compression() {
        Compression::None => fetch_runs(&sources, index.block_size()),
        Compression::Zstd => frame_runs(index, &sources),
    };
    let batches = batches(index, &runs);
    let fetched_before = bundle.bytes_read();
    let requests_before = bundle.requests();
    // More connections when there are many requests: each request waits a
    // round trip, and a few in flight hide it.
    let mut forks: Vec<Box<dyn ByteRanges>> = Vec::new();
    if batches.len() > 16 {
        forks.extend((1..FETCH_CONNECTIONS).filter_map(|_| bundle.fork()));
    }
    let mut sources_of_bytes: Vec<&mut dyn ByteRanges> = vec![bundle];
    sources_of_bytes.extend(forks.iter_mut().map(|f| &mut **f as &mut dyn ByteRanges));
    let n = sources_of_bytes.len();
    let (out, stats) = std::thread::scope(|scope| {
        let mut queues = Vec::new();
        let mut fetchers = Vec::new();
        for (t, src) in sources_of_bytes.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Fetched>(FETCH_AHEAD);
            queues.push(rx);
            let mine = batches.iter().skip(t).step_by(n).cloned();
            fetchers.push(
                std::thread::Builder::new()
                    .name("abkit-delta-fetch".into())
                    .spawn_scoped(scope, move || {
                        fetch_batches_into(index, entry, mine, src, payload_offset, &tx);
                    })
                    .map_err(UpdateError::io("start a fetch thread"))?,
            );
        }
        let (home, spare) = std::sync::mpsc::channel();
        let mut asm = Assembler {
            index,
            sources,
            seeds,
            runs: queues,
            taken: 0,
            spare,
            home,
            next: 0,
            fetched: None,
            stats: DeltaStats::default(),
        };
        let out = build(&mut asm);
        // Unblock the fetchers if the build stopped early.
        let Assembler { runs, stats, .. } = asm;
        drop(runs);
        for f in fetchers {
            let _ = f.join();
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
/// through the verified copy pipeline (read back against `sha256`).
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
    let sources = plan(index, seeds, rep)?;
    let sha256 = entry.sha256.to_string();
    let ((), stats) = with_assembler(
        index,
        entry,
        sources,
        seeds,
        bundle,
        payload_offset,
        |asm| {
            copy::copy_blocks(
                &mut || asm.next_bytes(),
                index.size(),
                &sha256,
                dev,
                slot,
                Step::WriteSystem,
                rep,
            )
            .map(|_| ())
        },
    )?;
    Ok(stats)
}

/// Builds payload `index` in memory (the loader: small, written to the ESP
/// as one file) and checks its SHA-256.
pub(crate) fn assemble_in_memory(
    index: &BlockIndex,
    entry: &PayloadEntry,
    payload_offset: u64,
    bundle: &mut dyn ByteRanges,
    seeds: &mut [Seed<'_>],
    rep: &mut dyn Reporter,
) -> Result<(Vec<u8>, DeltaStats)> {
    use sha2::Digest as _;
    let sources = plan(index, seeds, rep)?;
    let (out, stats) = with_assembler(
        index,
        entry,
        sources,
        seeds,
        bundle,
        payload_offset,
        |asm| {
            let mut out = Vec::with_capacity(index.size() as usize);
            while let Some(bytes) = asm.next_bytes()? {
                out.extend_from_slice(&bytes);
            }
            Ok(out)
        },
    )?;
    if sha2::Sha256::digest(&out)[..] != entry.sha256.0[..] {
        return Err(abkit_bundle::Error::PayloadHashMismatch {
            payload: index.payload().to_owned(),
        }
        .into());
    }
    Ok((out, stats))
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

    #[test]
    fn runs_merge_small_gaps_and_stop_at_the_request_limit() {
        use Source::*;
        let s = |v: &[u8]| -> Vec<Source> {
            v.iter()
                .map(|&b| if b == 1 { Fetch } else { Seed(0, 0) })
                .collect()
        };
        // Gaps of 1 and 2 blocks merge (8 KiB), a gap of 3 does not.
        assert_eq!(
            fetch_runs(&s(&[1, 0, 1, 0, 0, 1, 0, 0, 0, 1]), 4096),
            vec![(0, 6), (9, 10)]
        );
        assert_eq!(fetch_runs(&s(&[0, 0]), 4096), vec![]);
        let all = vec![Fetch; 150];
        let runs = fetch_runs(&all, 4096);
        assert_eq!(runs, vec![(0, 64), (64, 128), (128, 150)]);
    }
}
