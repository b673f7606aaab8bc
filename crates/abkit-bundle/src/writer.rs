//! Writing bundles: [`create_bundle`] reads each input once to compute the
//! dm-verity tree, the payload BLAKE3, the block index and the chunk hashes
//! (on separate threads), writes header, manifest, signatures and block
//! indexes, then copies the payload bytes (`copy_file_range` for
//! uncompressed inputs) into the output.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::format::{self, FORMAT_VERSION, Header, MAX_MANIFEST_LEN, MAX_SIGNATURES};
use crate::index::BlockHasher;
use crate::keys::SecretKey;
use crate::manifest::{
    Compression, DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE, Digest, IndexRef, Manifest, PayloadEntry,
};
use crate::pool::BufferPool;
use crate::verity::{VerityBuilder, VerityTree};
use crate::{Error, Result};

/// Size of the blocks the input is read in.
const READ_BLOCK: usize = 1 << 20;
/// Read buffers kept for reuse while the workers hash and compress them.
const POOL_LIMIT: usize = 12;
/// Bytes copied between two progress reports in the write pass.
const COPY_STEP: u64 = 64 << 20;

/// One payload to put in a bundle.
#[derive(Debug, Clone)]
pub struct PayloadSpec {
    /// Payload name (`efi`, `system`).
    pub name: String,
    /// The input file.
    pub path: PathBuf,
    /// Append a dm-verity hash tree (with superblock) and record its parameters.
    pub verity: bool,
}

/// Everything about a bundle except its payloads and keys.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub compatible: String,
    pub version: semver::Version,
    pub min_version: Option<semver::Version>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub compression: Compression,
    /// zstd level, 1..=19 (higher levels need windows readers refuse).
    pub zstd_level: i32,
    pub chunk_size: u32,
    /// Block size of the block index (a power of two, 4 KiB ..= chunk size).
    pub block_size: u32,
    /// Salt of every dm-verity tree (default: 32 random bytes). Set it when
    /// the root hash must be known before the bundle is made (a UKI whose
    /// command line carries `roothash=`): the same salt over the same image
    /// gives the same tree.
    pub verity_salt: Option<Vec<u8>>,
    /// UUID in every verity superblock (default: random).
    pub verity_uuid: Option<[u8; 16]>,
}

impl CreateOptions {
    /// Options with the default chunk size, no compression, created now.
    pub fn new(compatible: &str, version: semver::Version) -> CreateOptions {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        CreateOptions {
            compatible: compatible.into(),
            version,
            min_version: None,
            created,
            compression: Compression::None,
            zstd_level: 3,
            chunk_size: DEFAULT_CHUNK_SIZE,
            block_size: DEFAULT_BLOCK_SIZE,
            verity_salt: None,
            verity_uuid: None,
        }
    }
}

/// Writes the header, manifest and one signature per key: the head of a
/// bundle. The block indexes, then the payloads' stored bytes must follow
/// in manifest order.
/// Refuses a manifest readers would refuse for its length
/// ([`Error::ManifestSize`]): a larger chunk size makes it shorter.
pub fn write_head(out: &mut impl Write, manifest_bytes: &[u8], keys: &[SecretKey]) -> Result<()> {
    let manifest_len = manifest_bytes.len() as u64;
    if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
        return Err(Error::ManifestSize {
            len: manifest_len,
            max: MAX_MANIFEST_LEN,
        });
    }
    let signature_count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    if signature_count > MAX_SIGNATURES {
        return Err(Error::TooManySignatures {
            count: signature_count,
            max: MAX_SIGNATURES,
        });
    }
    let header = Header {
        format_version: FORMAT_VERSION,
        manifest_len: manifest_bytes.len() as u64,
        signature_count,
    };
    let message = format::signed_message(&header, manifest_bytes);
    out.write_all(&header.encode())?;
    out.write_all(manifest_bytes)?;
    for key in keys {
        out.write_all(&key.public_key().to_bytes())?;
        out.write_all(&key.sign(&message))?;
    }
    Ok(())
}

/// Mode of a written bundle: it is signed, not secret.
pub const BUNDLE_MODE: u32 = 0o644;

/// Refuses an output that is one of the inputs: the same device and inode,
/// whatever the path (a symbolic link at either, a hard link, `..`).
/// An output that does not exist yet is fine; an input that cannot be
/// inspected is left to the code that opens it.
pub fn check_output_not_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let out = match std::fs::metadata(output) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::InvalidInput(format!(
                "cannot inspect output {}: {e}",
                output.display()
            )));
        }
    };
    for input in inputs {
        if let Ok(meta) = std::fs::metadata(input)
            && meta.dev() == out.dev()
            && meta.ino() == out.ino()
        {
            return Err(Error::OutputIsInput {
                output: output.to_owned(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Builds and signs a bundle at `out`: written to a temporary file in the
/// same folder, given mode [`BUNDLE_MODE`], synced and renamed into place at
/// the end, so a failure leaves no partial file and never touches an
/// existing `out`. Refuses an `out` that is one of the payload inputs
/// ([`Error::OutputIsInput`]; callers should check their key files with
/// [`check_output_not_input`] too). `progress` receives byte counts as work
/// proceeds; the total is about twice the sum of the input sizes (one
/// analysis pass, one copy pass). Returns the manifest written.
pub fn create_bundle(
    out: &Path,
    payloads: &[PayloadSpec],
    opts: &CreateOptions,
    keys: &[SecretKey],
    progress: &mut dyn FnMut(u64),
) -> Result<Manifest> {
    if keys.is_empty() {
        return Err(Error::NoSignature);
    }
    if !(1..=19).contains(&opts.zstd_level) {
        return Err(Error::InvalidInput(format!(
            "zstd level {} is outside 1..=19",
            opts.zstd_level
        )));
    }
    crate::manifest::check_chunk_size(opts.chunk_size)?;
    let inputs: Vec<&Path> = payloads.iter().map(|p| p.path.as_path()).collect();
    check_output_not_input(out, &inputs)?;
    for spec in payloads {
        if !crate::manifest::valid_name(&spec.name) {
            return Err(Error::InvalidInput(format!(
                "payload name {:?} must match [a-z0-9_-]{{1,64}}",
                spec.name
            )));
        }
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !opts.block_size.is_power_of_two()
        || opts.block_size < crate::manifest::MIN_CHUNK_SIZE
        || opts.block_size > opts.chunk_size
    {
        return Err(Error::InvalidInput(format!(
            "block size {} must be a power of two in 4096..=chunk size ({})",
            opts.block_size, opts.chunk_size
        )));
    }
    let mut entries = Vec::new();
    let mut sources = Vec::new();
    let mut indexes = Vec::new();
    for spec in payloads {
        let (entry, index, source) = analyze(spec, opts, &dir, progress)?;
        entries.push(entry);
        indexes.push(index);
        sources.push(source);
    }
    let manifest = Manifest {
        compatible: opts.compatible.clone(),
        version: opts.version.clone(),
        min_version: opts.min_version.clone(),
        created: opts.created,
        chunk_size: opts.chunk_size,
        block_size: opts.block_size,
        payloads: entries,
    };
    let manifest_bytes = manifest.to_json()?;
    let mut tmp = abkit_atomic::AtomicFile::new(out)?;
    {
        let mut w = io::BufWriter::with_capacity(1 << 20, tmp.file());
        write_head(&mut w, &manifest_bytes, keys)?;
        for index in &indexes {
            w.write_all(index)?;
        }
        w.flush()?;
    }
    for source in sources {
        source.copy_into(tmp.file(), progress)?;
    }
    tmp.set_mode(BUNDLE_MODE)?;
    tmp.commit()?;
    Ok(manifest)
}

/// Where a payload's stored bytes come from in the write pass.
enum StoredSource {
    /// The input file as is, then `tail` (padding and verity hash area).
    Input { path: PathBuf, tail: Vec<u8> },
    /// Compressed bytes in a temporary file.
    Compressed(File),
}

impl StoredSource {
    fn copy_into(self, out: &mut File, progress: &mut dyn FnMut(u64)) -> Result<()> {
        let (mut file, tail) = match self {
            StoredSource::Input { path, tail } => (File::open(&path)?, tail),
            StoredSource::Compressed(mut f) => {
                f.rewind()?;
                (f, Vec::new())
            }
        };
        loop {
            let n = io::copy(&mut (&mut file).take(COPY_STEP), out)?;
            if n == 0 {
                break;
            }
            progress(n);
        }
        out.write_all(&tail)?;
        Ok(())
    }
}

/// BLAKE3 of every `chunk_size` piece of a byte stream.
struct ChunkHasher {
    chunk_size: u64,
    current: blake3::Hasher,
    filled: u64,
    total: u64,
    chunks: Vec<Digest>,
}

impl ChunkHasher {
    fn new(chunk_size: u32) -> ChunkHasher {
        ChunkHasher {
            chunk_size: chunk_size.into(),
            current: blake3::Hasher::new(),
            filled: 0,
            total: 0,
            chunks: Vec::new(),
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (self.chunk_size - self.filled).min(data.len() as u64) as usize;
            self.current.update(&data[..take]);
            self.filled += take as u64;
            self.total += take as u64;
            if self.filled == self.chunk_size {
                self.chunks
                    .push(Digest(*self.current.finalize().as_bytes()));
                self.current.reset();
                self.filled = 0;
            }
            data = &data[take..];
        }
    }

    fn finish(mut self) -> (u64, Vec<Digest>) {
        if self.filled > 0 {
            self.chunks
                .push(Digest(*self.current.finalize().as_bytes()));
        }
        (self.total, self.chunks)
    }
}

/// A writer that hashes chunks of what passes through it.
struct ChunkHashingWriter<W> {
    inner: W,
    hasher: ChunkHasher,
}

impl<W: Write> Write for ChunkHashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// zstd: every `chunk_size` piece of the payload compressed as a frame of
/// its own (so a delta install can fetch and decompress one frame), the
/// frames' stored offsets recorded for the block index.
struct FrameSink {
    plain: Vec<u8>,
    chunk_size: usize,
    compressor: zstd::bulk::Compressor<'static>,
    out: ChunkHashingWriter<io::BufWriter<File>>,
    offsets: Vec<u64>,
    stored: u64,
}

impl FrameSink {
    fn update(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let take = (self.chunk_size - self.plain.len()).min(data.len());
            self.plain.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.plain.len() == self.chunk_size {
                self.frame()?;
            }
        }
        Ok(())
    }

    fn frame(&mut self) -> Result<()> {
        let frame = self.compressor.compress(&self.plain)?;
        self.offsets.push(self.stored);
        self.stored += frame.len() as u64;
        self.out.write_all(&frame)?;
        self.plain.clear();
        Ok(())
    }
}

/// Where the stored bytes go during analysis.
enum StoredSink {
    Plain(Box<ChunkHasher>),
    Zstd(Box<FrameSink>),
}

impl StoredSink {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        match self {
            StoredSink::Plain(h) => h.update(data),
            StoredSink::Zstd(frames) => frames.update(data)?,
        }
        Ok(())
    }
}

/// A thread that consumes shared blocks (whole-payload hash, verity tree).
struct Worker<T> {
    tx: Option<SyncSender<Arc<Vec<u8>>>>,
    handle: JoinHandle<T>,
}

impl<T: Send + 'static> Worker<T> {
    fn start(
        name: &str,
        work: impl FnOnce(Receiver<Arc<Vec<u8>>>) -> T + Send + 'static,
    ) -> Result<Worker<T>> {
        let (tx, rx) = sync_channel(3);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || work(rx))?;
        Ok(Worker {
            tx: Some(tx),
            handle,
        })
    }

    fn send(&self, block: &Arc<Vec<u8>>) -> Result<()> {
        match &self.tx {
            Some(tx) if tx.send(Arc::clone(block)).is_ok() => Ok(()),
            _ => Err(Error::Io(io::Error::other("worker thread stopped"))),
        }
    }

    fn finish(mut self) -> Result<T> {
        self.tx = None;
        self.handle
            .join()
            .map_err(|_| Error::Io(io::Error::other("worker thread panicked")))
    }
}

/// Reads into `buf` until it is full or the input ends; returns the count.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The analysis pass over one input: payload hash, verity tree, block
/// index, stored bytes' chunk hashes (compressing into a temporary file for
/// zstd). Returns the manifest entry, the block index and the stored bytes.
fn analyze(
    spec: &PayloadSpec,
    opts: &CreateOptions,
    tmp_dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(PayloadEntry, Vec<u8>, StoredSource)> {
    let mut input = File::open(&spec.path).map_err(|e| {
        Error::InvalidInput(format!(
            "payload `{}`: cannot open {}: {e}",
            spec.name,
            spec.path.display()
        ))
    })?;
    let whole = Worker::start("abkit-payload-blake3", |rx| {
        let mut h = blake3::Hasher::new();
        for block in rx {
            h.update(&block[..]);
        }
        *h.finalize().as_bytes()
    })?;
    let block_size = opts.block_size;
    let blocks = Worker::start("abkit-blake3", move |rx| {
        let mut h = BlockHasher::new(block_size);
        for block in rx {
            h.update(&block[..]);
        }
        h.finish()
    })?;
    let verity = if spec.verity {
        let salt = match &opts.verity_salt {
            Some(salt) => salt.clone(),
            None => {
                let mut salt = vec![0u8; 32];
                getrandom::fill(&mut salt)
                    .map_err(|e| Error::Verity(format!("no randomness: {e}")))?;
                salt
            }
        };
        let mut builder = VerityBuilder::new(&salt)?;
        if let Some(uuid) = opts.verity_uuid {
            builder = builder.with_uuid(uuid);
        }
        Some(Worker::start(
            "abkit-verity",
            move |rx: Receiver<Arc<Vec<u8>>>| {
                let mut b = builder;
                for block in rx {
                    b.update(&block[..]);
                }
                b.finish()
            },
        )?)
    } else {
        None
    };
    let mut sink = match opts.compression {
        Compression::None => StoredSink::Plain(Box::new(ChunkHasher::new(opts.chunk_size))),
        Compression::Zstd => {
            let file = tempfile::tempfile_in(tmp_dir)?;
            let out = ChunkHashingWriter {
                inner: io::BufWriter::with_capacity(1 << 20, file),
                hasher: ChunkHasher::new(opts.chunk_size),
            };
            StoredSink::Zstd(Box::new(FrameSink {
                plain: Vec::with_capacity(opts.chunk_size as usize),
                chunk_size: opts.chunk_size as usize,
                compressor: zstd::bulk::Compressor::new(opts.zstd_level)?,
                out,
                offsets: Vec::new(),
                stored: 0,
            }))
        }
    };
    let mut pool = BufferPool::new(POOL_LIMIT);
    let mut size = 0u64;
    loop {
        let mut block = pool.take(READ_BLOCK);
        let n = match Arc::get_mut(&mut block) {
            Some(buf) => {
                let n = read_full(&mut input, buf)?;
                buf.truncate(n);
                n
            }
            None => 0,
        };
        if n == 0 {
            break;
        }
        size += n as u64;
        whole.send(&block)?;
        blocks.send(&block)?;
        if let Some(v) = &verity {
            v.send(&block)?;
        }
        sink.update(&block)?;
        pool.give_back(block);
        progress(n as u64);
    }
    let mut tail = Vec::new();
    let mut verity_params = None;
    if let Some(v) = verity {
        let tree: VerityTree = v.finish()??;
        tail.resize(tree.padding, 0);
        tail.extend_from_slice(&tree.hash_area);
        verity_params = Some(tree.params());
        size += tail.len() as u64;
        let tail_block = Arc::new(tail);
        whole.send(&tail_block)?;
        blocks.send(&tail_block)?;
        sink.update(&tail_block)?;
        tail = Arc::try_unwrap(tail_block).unwrap_or_else(|shared| shared.as_ref().clone());
    }
    let whole_hash = Digest(whole.finish()?);
    let mut index = blocks.finish()?;
    let (stored_size, chunks, source) = match sink {
        StoredSink::Plain(h) => {
            let (total, chunks) = h.finish();
            (
                total,
                chunks,
                StoredSource::Input {
                    path: spec.path.clone(),
                    tail,
                },
            )
        }
        StoredSink::Zstd(mut frames) => {
            if !frames.plain.is_empty() {
                frames.frame()?;
            }
            for offset in &frames.offsets {
                index.extend_from_slice(&offset.to_le_bytes());
            }
            let FrameSink { out, .. } = *frames;
            let (total, chunks) = out.hasher.finish();
            let file = out
                .inner
                .into_inner()
                .map_err(|e| Error::Io(e.into_error()))?;
            (total, chunks, StoredSource::Compressed(file))
        }
    };
    let index_ref = IndexRef {
        size: index.len() as u64,
        blake3: Digest(*blake3::hash(&index).as_bytes()),
    };
    let entry = PayloadEntry {
        name: spec.name.clone(),
        size,
        blake3: whole_hash,
        compression: opts.compression,
        stored_size,
        chunks,
        index: index_ref,
        verity: verity_params,
    };
    Ok((entry, index, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_hasher_splits_at_chunk_size_whatever_the_pieces() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut a = ChunkHasher::new(4096);
        a.update(&data);
        let mut b = ChunkHasher::new(4096);
        for piece in data.chunks(333) {
            b.update(piece);
        }
        let (ta, ca) = a.finish();
        let (tb, cb) = b.finish();
        assert_eq!((ta, &ca), (tb, &cb));
        assert_eq!(ca.len(), 3);
        assert_eq!(&ca[2].0, blake3::hash(&data[8192..]).as_bytes());
    }
}
