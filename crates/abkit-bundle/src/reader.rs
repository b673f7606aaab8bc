//! Reading bundles from any `Read` (a file, a pipe, an HTTP body): the head
//! (header, manifest, signatures) is read and its signature checked before
//! anything is handed out; then each payload is a [`PayloadReader`] that
//! yields only bytes of chunks whose BLAKE3 matched the signed manifest, and
//! reports end of file only after the payload's size and BLAKE3 matched.
//! Memory stays bounded: a few chunk buffers, the manifest, the zstd window.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::format::{self, HEADER_LEN, Header, SIGNATURE_ENTRY_LEN};
use crate::keys::{KeyId, Keyring, PublicKey, key_id_of};
use crate::manifest::{Compression, Manifest, PayloadEntry};
use crate::pool::BufferPool;
use crate::{Error, Result};

/// Largest zstd window a reader accepts (2^23 = 8 MiB), so a bundle cannot
/// make the decoder allocate more.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Size of the blocks of decompressed data a zstd payload hands out.
const ZSTD_OUT_BLOCK: usize = 1 << 20;
/// Chunk buffers kept for reuse: enough for the blocks a consumer of
/// [`PayloadReader::next_block`] keeps in flight (the update engine holds
/// about a dozen until it has read them back from the slot).
const POOL_LIMIT: usize = 16;

/// One signature entry: who signed, and the signature bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

impl SignatureEntry {
    pub fn key_id(&self) -> KeyId {
        key_id_of(&self.public_key)
    }
}

/// How one signature fares against a keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureStatus {
    /// The key is in the keyring and the signature is good.
    Valid,
    /// The key is in the keyring but the signature does not match.
    Invalid,
    /// The key is not in the keyring (the signature was not checked).
    UntrustedKey,
    /// No keyring was given.
    Unchecked,
}

/// Header, manifest bytes and signatures, read but not yet trusted.
#[derive(Debug, Clone)]
pub struct RawHead {
    pub header: Header,
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<SignatureEntry>,
}

impl RawHead {
    /// Reads the head: fixed header (checked), manifest bytes (length bounded
    /// before any allocation), signature entries. Does not parse the manifest.
    pub fn read(source: &mut impl Read) -> Result<RawHead> {
        let mut hb = [0u8; HEADER_LEN];
        source
            .read_exact(&mut hb)
            .map_err(|e| Error::from_read(e, "header"))?;
        let header = Header::decode(&hb)?;
        // manifest_len <= MAX_MANIFEST_LEN was checked by decode; still grow the buffer
        // only as bytes arrive, so a short stream costs only what it sent.
        let mut manifest_bytes = Vec::with_capacity(header.manifest_len.min(64 * 1024) as usize);
        source
            .take(header.manifest_len)
            .read_to_end(&mut manifest_bytes)?;
        if (manifest_bytes.len() as u64) < header.manifest_len {
            return Err(Error::Truncated {
                section: "manifest".into(),
            });
        }
        let mut signatures = Vec::with_capacity(header.signature_count as usize);
        for i in 0..header.signature_count {
            let mut entry = [0u8; SIGNATURE_ENTRY_LEN];
            source
                .read_exact(&mut entry)
                .map_err(|e| Error::from_read(e, format!("signature {i}")))?;
            let mut public_key = [0u8; 32];
            let mut signature = [0u8; 64];
            public_key.copy_from_slice(&entry[..32]);
            signature.copy_from_slice(&entry[32..]);
            signatures.push(SignatureEntry {
                public_key,
                signature,
            });
        }
        Ok(RawHead {
            header,
            manifest_bytes,
            signatures,
        })
    }

    /// SHA-256 of exactly the bytes every signature covers, as read:
    /// `SIGNATURE_CONTEXT || header bytes 0..24 || manifest bytes` (see
    /// [`format::signed_message`]). It identifies the signed content of a
    /// bundle (not its signature set) without re-serialising the manifest.
    pub fn signed_sha256(&self) -> [u8; 32] {
        let header = self.header.encode();
        let mut h = Sha256::new();
        h.update(format::SIGNATURE_CONTEXT);
        h.update(&header[..format::SIGNED_HEADER_LEN]);
        h.update(&self.manifest_bytes);
        h.finalize().into()
    }

    /// Status of every signature against `keyring` (all `Unchecked` without one).
    pub fn signature_status(&self, keyring: Option<&Keyring>) -> Vec<(KeyId, SignatureStatus)> {
        let message = format::signed_message(&self.header, &self.manifest_bytes);
        self.signatures
            .iter()
            .map(|s| {
                let status = match keyring {
                    None => SignatureStatus::Unchecked,
                    Some(ring) if !ring.contains(&s.public_key) => SignatureStatus::UntrustedKey,
                    Some(_) => match PublicKey::from_bytes(&s.public_key) {
                        Ok(k) if k.verify(&message, &s.signature) => SignatureStatus::Valid,
                        _ => SignatureStatus::Invalid,
                    },
                };
                (s.key_id(), status)
            })
            .collect()
    }

    /// Succeeds with the signer's key id if at least one signature is by a
    /// keyring key and valid. Errors: no signature at all, a trusted key's
    /// signature that does not verify, or no trusted signer.
    pub fn verify(&self, keyring: &Keyring) -> Result<KeyId> {
        if self.signatures.is_empty() {
            return Err(Error::NoSignature);
        }
        let statuses = self.signature_status(Some(keyring));
        if let Some((id, _)) = statuses.iter().find(|(_, s)| *s == SignatureStatus::Valid) {
            return Ok(*id);
        }
        if let Some((id, _)) = statuses
            .iter()
            .find(|(_, s)| *s == SignatureStatus::Invalid)
        {
            return Err(Error::BadSignature {
                key_id: id.to_string(),
            });
        }
        Err(Error::NoTrustedSignature {
            signers: statuses.iter().map(|(id, _)| id.to_string()).collect(),
        })
    }
}

/// A parsed head for inspection: nothing here is trusted until
/// [`RawHead::verify`] (or [`BundleHead::signature_status`]) says so.
#[derive(Debug, Clone)]
pub struct BundleHead {
    pub raw: RawHead,
    pub manifest: Manifest,
}

impl BundleHead {
    /// Reads and parses the head without checking signatures (for `inspect`).
    pub fn read(source: &mut impl Read) -> Result<BundleHead> {
        let raw = RawHead::read(source)?;
        let manifest = Manifest::parse(&raw.manifest_bytes)?;
        Ok(BundleHead { raw, manifest })
    }

    pub fn signature_status(&self, keyring: Option<&Keyring>) -> Vec<(KeyId, SignatureStatus)> {
        self.raw.signature_status(keyring)
    }
}

/// Reads the block indexes that follow the signatures and checks each
/// against its BLAKE3 in the (verified) manifest, without keeping them: a
/// streaming reader checks the payloads by their chunk hashes.
fn check_indexes(source: &mut impl Read, manifest: &Manifest) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    for p in &manifest.payloads {
        let mut hasher = blake3::Hasher::new();
        let mut left = p.index.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            source
                .read_exact(&mut buf[..n])
                .map_err(|e| Error::from_read(e, format!("block index of `{}`", p.name)))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        if *hasher.finalize().as_bytes() != p.index.blake3.0 {
            return Err(Error::IndexHashMismatch {
                payload: p.name.clone(),
            });
        }
    }
    Ok(())
}

/// A bundle whose signature checked out, handing out its payloads in order.
pub struct BundleReader<R: Read> {
    source: R,
    manifest: Manifest,
    signer: KeyId,
    signed_sha256: [u8; 32],
    next_index: usize,
    /// Stored bytes of the current payload not yet read from `source`.
    unread: u64,
    end_checked: bool,
    pool: BufferPool,
}

impl<R: Read> BundleReader<R> {
    /// Reads the head and checks its signature against `keyring`, then parses
    /// the manifest. No payload byte is read yet.
    pub fn open(mut source: R, keyring: &Keyring) -> Result<BundleReader<R>> {
        let raw = RawHead::read(&mut source)?;
        let signer = raw.verify(keyring)?;
        let manifest = Manifest::parse(&raw.manifest_bytes)?;
        check_indexes(&mut source, &manifest)?;
        Ok(BundleReader {
            source,
            manifest,
            signer,
            signed_sha256: raw.signed_sha256(),
            next_index: 0,
            unread: 0,
            end_checked: false,
            pool: BufferPool::new(POOL_LIMIT),
        })
    }

    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The key id of the trusted signature that was accepted.
    pub fn signer(&self) -> KeyId {
        self.signer
    }

    /// SHA-256 of the exact bytes the accepted signature covers, as they
    /// came from the source: `SIGNATURE_CONTEXT` (`abkit-bundle-signature-v1\0`)
    /// `|| header bytes 0..24 || manifest bytes`. Two bundles have the same
    /// value exactly when their signed content is byte for byte the same
    /// (signatures, which are not covered, may differ). This is what to
    /// record about an installed bundle: unlike hashing
    /// `manifest().to_json()`, it does not depend on how this version of
    /// abkit would serialise the manifest.
    pub fn signed_sha256(&self) -> [u8; 32] {
        self.signed_sha256
    }

    /// The next payload in manifest order, or `None` after the last one (then
    /// the source must be at its end: trailing bytes are an error). A payload
    /// left unfinished is skipped (its remaining bytes are read and dropped).
    pub fn next_payload(&mut self) -> Result<Option<PayloadReader<'_, R>>> {
        if self.unread > 0 {
            let skipped = io::copy(&mut (&mut self.source).take(self.unread), &mut io::sink())?;
            if skipped < self.unread {
                return Err(Error::Truncated {
                    section: "payload data".into(),
                });
            }
            self.unread = 0;
        }
        let Some(entry) = self.manifest.payloads.get(self.next_index).cloned() else {
            if !self.end_checked {
                let mut probe = [0u8; 1];
                let n = loop {
                    match self.source.read(&mut probe) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other?,
                    }
                };
                if n > 0 {
                    return Err(Error::TrailingData);
                }
                self.end_checked = true;
            }
            return Ok(None);
        };
        self.next_index += 1;
        self.unread = entry.stored_size;
        Ok(Some(PayloadReader::new(self, entry)?))
    }

    /// Reads and verifies every remaining payload, dropping the bytes, and
    /// checks the end of the bundle. Returns each payload's BLAKE3.
    pub fn verify_all(mut self) -> Result<Vec<(String, [u8; 32])>> {
        let mut out = Vec::new();
        while let Some(payload) = self.next_payload()? {
            let name = payload.entry().name.clone();
            out.push((name, payload.finish()?));
        }
        Ok(out)
    }
}

/// Hashes handed-out blocks (whole-payload BLAKE3) on another core while
/// the next chunk is read and checked, so verifying costs about one BLAKE3
/// pass of wall time.
struct HashWorker {
    tx: Option<SyncSender<Arc<Vec<u8>>>>,
    handle: Option<JoinHandle<[u8; 32]>>,
}

impl HashWorker {
    fn start() -> Result<HashWorker> {
        let (tx, rx) = sync_channel::<Arc<Vec<u8>>>(2);
        let handle = std::thread::Builder::new()
            .name("abkit-payload-blake3".into())
            .spawn(move || {
                let mut h = blake3::Hasher::new();
                for block in rx {
                    h.update(&block[..]);
                }
                *h.finalize().as_bytes()
            })?;
        Ok(HashWorker {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    fn send(&mut self, block: Arc<Vec<u8>>) -> Result<()> {
        match &self.tx {
            Some(tx) if tx.send(block).is_ok() => Ok(()),
            _ => Err(Error::Io(io::Error::other(
                "payload hashing thread stopped",
            ))),
        }
    }

    fn finish(&mut self) -> Result<[u8; 32]> {
        self.tx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(digest)) => Ok(digest),
            _ => Err(Error::Io(io::Error::other("payload hashing thread failed"))),
        }
    }
}

/// Verified payload bytes shared with the reader's buffer pool
/// ([`PayloadReader::next_block`]): they stay as handed out while any clone
/// lives, and the buffer is reused only after the last one is dropped.
#[derive(Clone)]
pub struct VerifiedBlock {
    buf: Arc<Vec<u8>>,
    start: usize,
}

impl std::ops::Deref for VerifiedBlock {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl std::fmt::Debug for VerifiedBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifiedBlock({} bytes)", self.len())
    }
}

enum State {
    Streaming,
    Done([u8; 32]),
    Failed(String),
}

/// The bytes of one payload, verified chunk by chunk. `read` returns only
/// bytes of verified chunks (decompressed after verification for zstd); it
/// returns end of file only after size and whole-payload BLAKE3 matched,
/// and an `InvalidData` error carrying an [`Error`] otherwise (`?` into this
/// crate's `Result` recovers the typed error).
pub struct PayloadReader<'a, R: Read> {
    bundle: &'a mut BundleReader<R>,
    entry: PayloadEntry,
    chunk_size: u64,
    next_chunk: usize,
    out: Option<Arc<Vec<u8>>>,
    out_pos: usize,
    decoder: Option<zstd::stream::raw::Decoder<'static>>,
    compressed: Vec<u8>,
    compressed_pos: usize,
    frame_open: bool,
    /// The whole-payload BLAKE3, unless [`PayloadReader::rely_on_chunk_hashes`]
    /// turned it off.
    hasher: Option<HashWorker>,
    produced: u64,
    state: State,
}

impl<'a, R: Read> PayloadReader<'a, R> {
    fn new(bundle: &'a mut BundleReader<R>, entry: PayloadEntry) -> Result<PayloadReader<'a, R>> {
        let decoder = match entry.compression {
            Compression::None => None,
            Compression::Zstd => {
                use zstd::stream::raw::DParameter;
                let mut d = zstd::stream::raw::Decoder::new()?;
                d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))?;
                Some(d)
            }
        };
        let chunk_size = u64::from(bundle.manifest.chunk_size);
        Ok(PayloadReader {
            bundle,
            entry,
            chunk_size,
            next_chunk: 0,
            out: None,
            out_pos: 0,
            decoder,
            compressed: Vec::new(),
            compressed_pos: 0,
            frame_open: false,
            hasher: Some(HashWorker::start()?),
            produced: 0,
            state: State::Streaming,
        })
    }

    /// The manifest entry of this payload.
    pub fn entry(&self) -> &PayloadEntry {
        &self.entry
    }

    /// Stops computing the whole-payload BLAKE3 of a payload stored
    /// uncompressed, whose bytes are then checked by the signed chunk hashes
    /// alone: they cover every byte handed out, so the second hash adds no
    /// guarantee about the bytes, only a second hash pass. What is left
    /// unchecked is the manifest's `blake3` field itself (that it agrees
    /// with the chunks): a caller that records it checks it on its own
    /// (the update engine compares the slot it wrote with the verified
    /// blocks it read back). Returns `false` and changes nothing for a
    /// compressed payload (its chunk hashes cover the stored bytes, not the
    /// output) or once bytes have been handed out.
    pub fn rely_on_chunk_hashes(&mut self) -> bool {
        if self.decoder.is_some() || self.produced > 0 || !matches!(self.state, State::Streaming) {
            return false;
        }
        if let Some(mut hasher) = self.hasher.take() {
            // Nothing was sent: the worker ends at once.
            let _ = hasher.finish();
        }
        true
    }

    /// The next verified block, handed out without a copy: the rest of the
    /// current block, or the next chunk once its BLAKE3 matched (for zstd,
    /// up to 1 MiB decompressed from verified chunks). `None` only at the
    /// verified end (size and, unless turned off, BLAKE3 matched). The
    /// buffer goes back to the reader's pool when the last clone of the
    /// block is dropped. Mixing with `read` is allowed.
    pub fn next_block(&mut self) -> Result<Option<VerifiedBlock>> {
        loop {
            if let Some(out) = &self.out
                && self.out_pos < out.len()
            {
                break;
            }
            match &self.state {
                State::Done(_) => return Ok(None),
                State::Failed(reason) => {
                    return Err(Error::PayloadFailed {
                        payload: self.entry.name.clone(),
                        reason: reason.clone(),
                    });
                }
                State::Streaming => self.step_guarded()?,
            }
        }
        let Some(buf) = self.out.take() else {
            return Ok(None);
        };
        let start = std::mem::take(&mut self.out_pos);
        self.bundle.pool.give_back(Arc::clone(&buf));
        Ok(Some(VerifiedBlock { buf, start }))
    }

    /// Reads (and drops) whatever is left, then returns the payload's
    /// BLAKE3 once size and hash matched the manifest (after
    /// [`rely_on_chunk_hashes`](PayloadReader::rely_on_chunk_hashes): once
    /// the size and every chunk matched, the manifest's value).
    pub fn finish(mut self) -> Result<[u8; 32]> {
        loop {
            match &self.state {
                State::Done(digest) => return Ok(*digest),
                State::Failed(reason) => {
                    return Err(Error::PayloadFailed {
                        payload: self.entry.name.clone(),
                        reason: reason.clone(),
                    });
                }
                State::Streaming => {
                    if let Some(block) = self.out.take() {
                        self.bundle.pool.give_back(block);
                    }
                    self.step_guarded()?;
                }
            }
        }
    }

    /// Writes the whole payload to `sink` in verified blocks (one `write_all`
    /// per chunk, no extra copy), then returns its BLAKE3 as [`finish`]
    /// does. On error, `sink` may hold verified bytes of an unfinished
    /// payload: treat them as not final.
    ///
    /// [`finish`]: PayloadReader::finish
    pub fn write_to(mut self, sink: &mut impl io::Write) -> Result<[u8; 32]> {
        loop {
            let block = io::BufRead::fill_buf(&mut self)?;
            if block.is_empty() {
                return self.finish();
            }
            let n = block.len();
            sink.write_all(block)?;
            io::BufRead::consume(&mut self, n);
        }
    }

    /// Makes sure `out` has unread bytes, or the payload is done. Records a
    /// failure so later calls keep failing.
    fn step_guarded(&mut self) -> Result<()> {
        let result = self.step();
        if let Err(e) = &result {
            self.state = State::Failed(e.to_string());
        }
        result
    }

    fn step(&mut self) -> Result<()> {
        if self.decoder.is_some() {
            self.step_zstd()
        } else {
            self.step_plain()
        }
    }

    fn step_plain(&mut self) -> Result<()> {
        if self.next_chunk < self.entry.chunks.len() {
            let mut block = self.bundle.pool.take(0);
            let Some(buf) = Arc::get_mut(&mut block) else {
                return Err(Error::Io(io::Error::other("chunk buffer still shared")));
            };
            self.read_verified_chunk(buf)?;
            self.emit(block)
        } else {
            self.end_checks()
        }
    }

    fn step_zstd(&mut self) -> Result<()> {
        let mut block = self.bundle.pool.take(ZSTD_OUT_BLOCK);
        let mut written = 0;
        let Some(out) = Arc::get_mut(&mut block) else {
            return Err(Error::Io(io::Error::other("chunk buffer still shared")));
        };
        loop {
            if self.compressed_pos == self.compressed.len()
                && self.next_chunk < self.entry.chunks.len()
            {
                let mut buf = std::mem::take(&mut self.compressed);
                let read = self.read_verified_chunk(&mut buf);
                self.compressed = buf;
                self.compressed_pos = 0;
                read?;
            }
            let Some(decoder) = self.decoder.as_mut() else {
                break;
            };
            let input = &self.compressed[self.compressed_pos..];
            let status = {
                use zstd::stream::raw::Operation as _;
                let mut inb = zstd::stream::raw::InBuffer::around(input);
                let mut outb = zstd::stream::raw::OutBuffer::around(&mut out[written..]);
                let hint = decoder
                    .run(&mut inb, &mut outb)
                    .map_err(|e| Error::Decompress {
                        payload: self.entry.name.clone(),
                        reason: e.to_string(),
                    })?;
                (inb.pos(), outb.pos(), hint)
            };
            let (consumed, produced, hint) = status;
            self.compressed_pos += consumed;
            written += produced;
            if consumed > 0 || produced > 0 {
                // zstd's hint is 0 exactly when a frame is complete and flushed.
                self.frame_open = hint != 0;
            }
            if self.produced + written as u64 > self.entry.size {
                return Err(Error::DecompressedTooLarge {
                    payload: self.entry.name.clone(),
                    limit: self.entry.size,
                });
            }
            if written == out.len() {
                break;
            }
            let input_done = self.compressed_pos == self.compressed.len()
                && self.next_chunk == self.entry.chunks.len();
            if consumed == 0 && produced == 0 && input_done {
                break;
            }
        }
        out.truncate(written);
        if written > 0 {
            return self.emit(block);
        }
        self.bundle.pool.give_back(block);
        if self.frame_open {
            return Err(Error::Decompress {
                payload: self.entry.name.clone(),
                reason: "the data ends inside a zstd frame".into(),
            });
        }
        self.end_checks()
    }

    /// Reads the next stored chunk into `buf` and checks its BLAKE3.
    fn read_verified_chunk(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let index = self.next_chunk;
        let start = index as u64 * self.chunk_size;
        let len = self.chunk_size.min(self.entry.stored_size - start) as usize;
        buf.resize(len, 0);
        self.bundle.source.read_exact(buf).map_err(|e| {
            Error::from_read(e, format!("payload `{}` chunk {index}", self.entry.name))
        })?;
        self.bundle.unread -= len as u64;
        if self.entry.chunks.get(index) != Some(&crate::manifest::content_hash(buf)) {
            return Err(Error::ChunkHashMismatch {
                payload: self.entry.name.clone(),
                chunk: index as u64,
            });
        }
        self.next_chunk += 1;
        Ok(())
    }

    fn emit(&mut self, block: Arc<Vec<u8>>) -> Result<()> {
        self.produced += block.len() as u64;
        if self.produced > self.entry.size {
            return Err(Error::PayloadSizeMismatch {
                payload: self.entry.name.clone(),
                expected: self.entry.size,
                actual: self.produced,
            });
        }
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.send(Arc::clone(&block))?;
        }
        if let Some(old) = self.out.replace(block) {
            self.bundle.pool.give_back(old);
        }
        self.out_pos = 0;
        Ok(())
    }

    fn end_checks(&mut self) -> Result<()> {
        let digest = match self.hasher.as_mut() {
            Some(hasher) => Some(hasher.finish()?),
            None => None,
        };
        if self.produced != self.entry.size {
            return Err(Error::PayloadSizeMismatch {
                payload: self.entry.name.clone(),
                expected: self.entry.size,
                actual: self.produced,
            });
        }
        if digest.is_some_and(|d| d != self.entry.blake3.0) {
            return Err(Error::PayloadHashMismatch {
                payload: self.entry.name.clone(),
            });
        }
        self.state = State::Done(digest.unwrap_or(self.entry.blake3.0));
        Ok(())
    }
}

impl<R: Read> Read for PayloadReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let block = io::BufRead::fill_buf(self)?;
        let n = buf.len().min(block.len());
        buf[..n].copy_from_slice(&block[..n]);
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl<R: Read> io::BufRead for PayloadReader<'_, R> {
    /// The rest of the current verified block (empty only at the verified end).
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            let has_bytes = self
                .out
                .as_ref()
                .is_some_and(|out| self.out_pos < out.len());
            if has_bytes {
                break;
            }
            match &self.state {
                State::Done(_) => return Ok(&[]),
                State::Failed(reason) => {
                    let err = Error::PayloadFailed {
                        payload: self.entry.name.clone(),
                        reason: reason.clone(),
                    };
                    return Err(io::Error::new(io::ErrorKind::InvalidData, err));
                }
                State::Streaming => {
                    self.step_guarded()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
            }
        }
        Ok(self
            .out
            .as_ref()
            .map_or(&[][..], |out| &out[self.out_pos..]))
    }

    fn consume(&mut self, amount: usize) {
        let len = self.out.as_ref().map_or(0, |out| out.len());
        self.out_pos = (self.out_pos + amount).min(len);
    }
}
