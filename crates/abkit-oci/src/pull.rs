//! Pulling a bundle: resolve the tag or digest to a manifest whose bytes
//! hash to the digest asked for, check it is an abkit bundle artifact, and
//! stream its blob through abkit-fetch (retries, resume, the same bearer
//! token renewed as needed) inside a [`BlobReader`] that checks the blob's
//! size and digest at its end.

use std::io::{self, Read};
use std::sync::PoisonError;

use abkit_fetch::Opener;
use sha2::{Digest as _, Sha256};
use ureq::http::Method;

use crate::client::{CONTENT_DIGEST, Payload, Registry, RegistryOptions, header_text};
use crate::manifest::{Descriptor, MANIFEST_MEDIA_TYPE, MAX_MANIFEST_SIZE, Manifest};
use crate::{Digest, OciError, Reference};

/// A bundle artifact found in a registry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Artifact {
    /// The reference as asked for.
    pub reference: String,
    /// The digest of the manifest (checked against the bytes served).
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    /// The bundle's layer: its digest and size.
    pub bundle: Descriptor,
}

/// Fetches and checks the manifest `registry.reference` names.
pub fn resolve(registry: &Registry) -> Result<Artifact, OciError> {
    let reference = &registry.reference;
    let url = registry.url(&format!("manifests/{}", reference.target()));
    let what = if reference.digest.is_some() {
        "manifest"
    } else {
        "tag"
    };
    let response = registry.call_expecting(
        200,
        what,
        Method::GET,
        &url,
        &[("Accept", MANIFEST_MEDIA_TYPE.to_owned())],
        Payload::Empty,
    )?;
    let announced = header_text(&response, CONTENT_DIGEST);
    let content_type = header_text(&response, ureq::http::header::CONTENT_TYPE);
    let bytes = response
        .into_body()
        .with_config()
        .limit(MAX_MANIFEST_SIZE)
        .read_to_vec()
        .map_err(|e| OciError::Protocol {
            method: "GET",
            url: url.clone(),
            problem: format!("cannot read the manifest (at most {MAX_MANIFEST_SIZE} bytes): {e}"),
        })?;
    let actual = Digest::of(&bytes);
    let mismatch = |expected: String| OciError::DigestMismatch {
        reference: reference.to_string(),
        expected,
        actual: actual.to_string(),
    };
    if let Some(expected) = &reference.digest
        && *expected != actual
    {
        return Err(mismatch(expected.to_string()));
    }
    // The spec: a client that uses Docker-Content-Digest must check it.
    if let Some(announced) = announced
        && announced != actual.as_str()
    {
        return Err(mismatch(announced));
    }
    let not_bundle = |reason: String| OciError::NotABundle {
        reference: reference.to_string(),
        reason,
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| not_bundle(format!("its manifest is not an OCI image manifest: {e}")))?;
    if let (Some(declared), Some(served)) = (&manifest.media_type, &content_type) {
        let served = served.split(';').next().unwrap_or("").trim();
        if declared != served {
            return Err(not_bundle(format!(
                "served as {served} but its mediaType is {declared}"
            )));
        }
    }
    let bundle = manifest.bundle_layer().map_err(not_bundle)?.clone();
    Ok(Artifact {
        reference: reference.to_string(),
        manifest_digest: actual,
        manifest,
        bundle,
    })
}

/// Resolves `reference` and opens its bundle blob for streaming, through
/// `opener` (retry policy, progress observer). The reader hands out at
/// most the blob's size and fails at the end unless size and digest match
/// the manifest.
pub fn open_bundle(
    reference: &Reference,
    options: &RegistryOptions,
    opener: Opener,
) -> Result<(Artifact, BlobReader<abkit_fetch::HttpSource>), OciError> {
    let (artifact, url, opener) = blob_opener(reference, options, opener)?;
    let source = opener
        .open(&url)
        .map_err(|e| blob_error(e, reference, &artifact))?;
    check_blob_length(&source, &artifact)?;
    let reader = BlobReader::new(source, artifact.bundle.digest.clone(), artifact.bundle.size);
    Ok((artifact, reader))
}

/// Like [`open_bundle`], but the blob is opened for range reads (a delta
/// install) with a first request for bytes `0..first_len`; when the
/// registry ignores Range the source streams the whole blob, which the
/// caller should read through [`BlobReader`] so its digest is checked.
/// Read by ranges, the blob's digest cannot be checked as a whole: the
/// bundle's signature and signed block index cover every byte used.
pub fn open_bundle_ranged(
    reference: &Reference,
    options: &RegistryOptions,
    opener: Opener,
    first_len: u64,
) -> Result<(Artifact, abkit_fetch::HttpSource), OciError> {
    let (artifact, url, opener) = blob_opener(reference, options, opener)?;
    let source = opener
        .open_ranged(&url, first_len)
        .map_err(|e| blob_error(e, reference, &artifact))?;
    check_blob_length(&source, &artifact)?;
    Ok((artifact, source))
}

/// Resolves the reference to the artifact and returns the blob's URL with
/// an opener that trusts the registry's roots and sends its credentials.
fn blob_opener(
    reference: &Reference,
    options: &RegistryOptions,
    opener: Opener,
) -> Result<(Artifact, String, Opener), OciError> {
    let registry = Registry::new(reference, options, false)?;
    let artifact = resolve(&registry)?;
    let url = registry.url(&format!("blobs/{}", artifact.bundle.digest));
    let auth = registry.auth.clone();
    let agent = registry.agent.clone();
    let opener = opener.trust(options.roots.clone()).authorize(move || {
        let mut auth = auth.lock().unwrap_or_else(PoisonError::into_inner);
        auth.header(&agent).unwrap_or_else(|e| {
            log::warn!("cannot renew the registry token: {e}");
            None
        })
    });
    Ok((artifact, url, opener))
}

fn blob_error(e: abkit_fetch::FetchError, reference: &Reference, artifact: &Artifact) -> OciError {
    match e.status() {
        Some(404) => OciError::NotFound {
            reference: reference.to_string(),
            what: "bundle blob",
            detail: format!(": {}", artifact.bundle.digest),
        },
        Some(401 | 403) => OciError::Unauthorized {
            registry: reference.registry.clone(),
            detail: format!(": {e}"),
        },
        _ => OciError::Fetch(e),
    }
}

/// The registry's Content-Length must be the manifest's size.
fn check_blob_length(
    source: &abkit_fetch::HttpSource,
    artifact: &Artifact,
) -> Result<(), OciError> {
    if let Some(length) = source.content_length()
        && length != artifact.bundle.size
    {
        return Err(OciError::BlobSize {
            digest: artifact.bundle.digest.to_string(),
            detail: format!(
                "the registry serves {length} bytes but the manifest says {}",
                artifact.bundle.size
            ),
        });
    }
    Ok(())
}

/// A blob's bytes, checked: never more than `size` bytes, and the end of
/// the stream is an error unless exactly `size` bytes hashing to `digest`
/// came. Errors are `io::Error`s carrying an [`OciError`]
/// ([`OciError::from_io`]).
pub struct BlobReader<R> {
    inner: R,
    digest: Digest,
    size: u64,
    read: u64,
    hasher: Sha256,
    checked: bool,
}

impl<R: Read> BlobReader<R> {
    pub fn new(inner: R, digest: Digest, size: u64) -> BlobReader<R> {
        BlobReader {
            inner,
            digest,
            size,
            read: 0,
            hasher: Sha256::new(),
            checked: false,
        }
    }

    /// Bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.read
    }

    fn fail(error: OciError) -> io::Error {
        io::Error::other(error)
    }

    /// At the blob's end: nothing more may come, and the digest must match.
    fn check_end(&mut self) -> io::Result<()> {
        let mut probe = [0u8; 1];
        let extra = loop {
            match self.inner.read(&mut probe) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if extra > 0 {
            return Err(Self::fail(OciError::BlobSize {
                digest: self.digest.to_string(),
                detail: format!(
                    "the registry sent more than the {} bytes of the manifest",
                    self.size
                ),
            }));
        }
        let actual = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize().into());
        if actual != self.digest {
            return Err(Self::fail(OciError::BlobDigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            }));
        }
        self.checked = true;
        Ok(())
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.checked || buf.is_empty() {
            return Ok(0);
        }
        let left = self.size - self.read;
        if left == 0 {
            self.check_end()?;
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(Self::fail(OciError::BlobSize {
                digest: self.digest.to_string(),
                detail: format!(
                    "the blob ended after {} of the manifest's {} bytes",
                    self.read, self.size
                ),
            }));
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_blob_reader_hands_out_the_blob_and_checks_size_and_digest() {
        let blob = b"bundle bytes".to_vec();
        let digest = Digest::of(&blob);
        let mut ok = BlobReader::new(&blob[..], digest.clone(), blob.len() as u64);
        assert_eq!(read_all(&mut ok).unwrap(), blob);

        let code = |e: io::Error| OciError::from_io(&e).map(OciError::code);
        let mut flipped = blob.clone();
        flipped[3] ^= 1;
        let mut bad = BlobReader::new(&flipped[..], digest.clone(), blob.len() as u64);
        assert_eq!(
            code(read_all(&mut bad).unwrap_err()),
            Some("oci-blob-digest-mismatch")
        );

        let mut short = BlobReader::new(&blob[..5], digest.clone(), blob.len() as u64);
        assert_eq!(
            code(read_all(&mut short).unwrap_err()),
            Some("oci-blob-size-mismatch")
        );

        let mut long = blob.clone();
        long.push(b'!');
        let mut bad = BlobReader::new(&long[..], digest, blob.len() as u64);
        let mut got = vec![0u8; blob.len()];
        bad.read_exact(&mut got).unwrap();
        assert_eq!(
            got, blob,
            "never more than the manifest's size is handed out"
        );
        assert_eq!(
            code(read_all(&mut bad).unwrap_err()),
            Some("oci-blob-size-mismatch")
        );
    }
}
