//! `abkit bundle push`: store a bundle file as an OCI artifact. The bundle
//! is one blob (uploaded in one `PUT`, or in `PATCH` chunks that resume
//! after a broken connection), the empty config another, and the manifest
//! is put under the tag last, so a tag never names a half-uploaded bundle.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::thread;

use sha2::{Digest as _, Sha256};
use ureq::http::{Method, header};

use crate::client::{
    CHUNK_MIN_LENGTH, CONTENT_DIGEST, Payload, Registry, RegistryOptions, header_text,
};
use crate::manifest::{
    BUNDLE_MEDIA_TYPE, Descriptor, EMPTY_CONFIG, MANIFEST_MEDIA_TYPE, Manifest, TITLE_ANNOTATION,
};
use crate::{Digest, OciError, Reference};

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Upload the bundle in chunks of this many bytes (`PATCH`), resuming a
    /// chunk that failed where the registry says the upload stands (or
    /// from the start in a new session, if the registry dropped it); `None`
    /// uploads it in one `PUT` (some proxies limit request bodies: then use
    /// chunks).
    pub chunk_size: Option<u64>,
    /// Annotations of the manifest (abkit puts the bundle's version and
    /// product there).
    pub annotations: BTreeMap<String, String>,
    /// The layer's `org.opencontainers.image.title` (the file name).
    pub title: Option<String>,
}

/// What a push stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    /// The reference pushed to, and the same pinned by digest.
    pub reference: String,
    pub pinned: String,
    /// The digest of the manifest: what `@sha256:...` pulls.
    pub manifest_digest: Digest,
    /// The digest and size of the bundle blob.
    pub bundle_digest: Digest,
    pub size: u64,
    /// False when the registry already had the bundle blob.
    pub uploaded: bool,
}

/// Hashes the file and returns its digest and size.
fn hash_file(path: &Path) -> Result<(Digest, u64), OciError> {
    let mut file = File::open(path).map_err(OciError::io(format!("open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(OciError::io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Digest::from_sha256(hasher.finalize().into()), size))
}

/// `url` with `name=value` added to its query.
fn with_query(url: &str, name: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{name}={value}")
}

/// A reader that reports how far it got.
struct Counted<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done, self.total);
        Ok(n)
    }
}

/// Pushes the bundle file at `path` to `reference` (which must name a tag)
/// and returns the manifest digest. `progress` gets (bytes sent, total)
/// while the bundle uploads.
pub fn push_bundle(
    reference: &Reference,
    options: &RegistryOptions,
    path: &Path,
    push: &PushOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PushReport, OciError> {
    let Some(tag) = reference.tag.clone().filter(|_| reference.digest.is_none()) else {
        return Err(OciError::BadReference {
            reference: reference.to_string(),
            reason: "a push needs a tag and no digest (oci://HOST/REPO:TAG); the digest is \
                     what the push prints"
                .into(),
        });
    };
    if push.chunk_size == Some(0) {
        return Err(OciError::BadReference {
            reference: reference.to_string(),
            reason: "the chunk size must be at least 1 byte".into(),
        });
    }
    let registry = Registry::new(reference, options, true)?;
    let (bundle_digest, size) = hash_file(path)?;
    upload_small(&registry, EMPTY_CONFIG)?;
    let uploaded = if blob_exists(&registry, &bundle_digest)? {
        log::info!("{reference}: the registry already has blob {bundle_digest}");
        progress(size, size);
        false
    } else {
        upload_file(
            &registry,
            path,
            &bundle_digest,
            size,
            push.chunk_size,
            progress,
        )?;
        true
    };
    let mut layer_annotations = BTreeMap::new();
    if let Some(title) = &push.title {
        layer_annotations.insert(TITLE_ANNOTATION.to_owned(), title.clone());
    }
    let manifest = Manifest::for_bundle(
        Descriptor {
            media_type: BUNDLE_MEDIA_TYPE.into(),
            digest: bundle_digest.clone(),
            size,
            data: None,
            annotations: layer_annotations,
        },
        push.annotations.clone(),
    );
    let bytes = manifest.to_bytes();
    let manifest_digest = Digest::of(&bytes);
    let url = registry.url(&format!("manifests/{tag}"));
    let response = registry.call_expecting(
        201,
        "repository",
        Method::PUT,
        &url,
        &[("Content-Type", MANIFEST_MEDIA_TYPE.to_owned())],
        Payload::Bytes(&bytes),
    )?;
    if let Some(announced) = header_text(&response, CONTENT_DIGEST)
        && announced != manifest_digest.as_str()
    {
        return Err(OciError::DigestMismatch {
            reference: reference.to_string(),
            expected: manifest_digest.to_string(),
            actual: announced,
        });
    }
    let pinned = Reference {
        tag: None,
        digest: Some(manifest_digest.clone()),
        ..reference.clone()
    };
    Ok(PushReport {
        reference: reference.to_string(),
        pinned: pinned.to_string(),
        manifest_digest,
        bundle_digest,
        size,
        uploaded,
    })
}

/// Whether the repository has the blob already (`HEAD`).
fn blob_exists(registry: &Registry, digest: &Digest) -> Result<bool, OciError> {
    let url = registry.url(&format!("blobs/{digest}"));
    let response = registry.call(Method::HEAD, &url, &[], Payload::Empty)?;
    match response.status().as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(registry.failure(Method::HEAD, &url, response, "repository")),
    }
}

/// Starts an upload session (`POST .../blobs/uploads/`); returns its URL
/// and the registry's minimum chunk size, if it has one.
fn start_upload(registry: &Registry) -> Result<(String, Option<u64>), OciError> {
    let url = registry.url("blobs/uploads/");
    let response = registry.call_expecting(
        202,
        "repository",
        Method::POST,
        &url,
        &[("Content-Length", "0".to_owned())],
        Payload::Empty,
    )?;
    let location = next_location(registry, &url, &response)?;
    let min_chunk = header_text(&response, CHUNK_MIN_LENGTH).and_then(|v| v.parse().ok());
    Ok((location, min_chunk))
}

fn next_location(
    registry: &Registry,
    url: &str,
    response: &ureq::http::Response<ureq::Body>,
) -> Result<String, OciError> {
    header_text(response, header::LOCATION)
        .map(|l| registry.absolute(&l))
        .ok_or_else(|| OciError::Protocol {
            method: "POST",
            url: url.to_owned(),
            problem: "the upload answer has no Location".into(),
        })
}

/// Uploads a small blob (the empty config) unless the registry has it.
fn upload_small(registry: &Registry, bytes: &[u8]) -> Result<(), OciError> {
    let digest = Digest::of(bytes);
    if blob_exists(registry, &digest)? {
        return Ok(());
    }
    let (location, _) = start_upload(registry)?;
    finish_upload(registry, &location, &digest, Some(bytes))
}

/// Closes the upload session at `location` as the blob `digest`
/// (`PUT <location>?digest=`), carrying the `last` bytes if any.
fn finish_upload(
    registry: &Registry,
    location: &str,
    digest: &Digest,
    last: Option<&[u8]>,
) -> Result<(), OciError> {
    let url = with_query(location, "digest", digest.as_str());
    let (header, payload) = match last {
        Some(bytes) => (
            ("Content-Type", "application/octet-stream".to_owned()),
            Payload::Bytes(bytes),
        ),
        None => (("Content-Length", "0".to_owned()), Payload::Empty),
    };
    registry.call_expecting(201, "repository", Method::PUT, &url, &[header], payload)?;
    Ok(())
}

/// Uploads the bundle file as the blob `digest`.
fn upload_file(
    registry: &Registry,
    path: &Path,
    digest: &Digest,
    size: u64,
    chunk_size: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), OciError> {
    let mut file = File::open(path).map_err(OciError::io(format!("open {}", path.display())))?;
    let (mut location, min_chunk) = start_upload(registry)?;
    let octets = ("Content-Type", "application/octet-stream".to_owned());
    let Some(chunk_size) = chunk_size else {
        // Monolithic: one PUT with the whole file.
        let url = with_query(&location, "digest", digest.as_str());
        let mut body = Counted {
            inner: &mut file,
            done: 0,
            total: size,
            progress,
        };
        let response = registry.send_stream(Method::PUT, &url, &[octets], &mut body, size)?;
        if response.status().as_u16() != 201 {
            return Err(registry.failure(Method::PUT, &url, response, "repository"));
        }
        return Ok(());
    };
    let chunk_size = chunk_size.max(min_chunk.unwrap_or(1));
    let mut offset = 0u64;
    let mut failures = 0u32;
    while offset < size {
        let len = chunk_size.min(size - offset);
        file.seek(SeekFrom::Start(offset))
            .map_err(OciError::io(format!("seek in {}", path.display())))?;
        let mut body = Counted {
            inner: (&mut file).take(len),
            done: offset,
            total: size,
            progress: &mut *progress,
        };
        let range = ("Content-Range", format!("{offset}-{}", offset + len - 1));
        let sent = registry.send_stream(
            Method::PATCH,
            &location,
            &[octets.clone(), range],
            &mut body,
            len,
        );
        let problem = match sent {
            Ok(response) if response.status().as_u16() == 202 => {
                location = next_location(registry, &location, &response)?;
                offset += len;
                continue;
            }
            Ok(response)
                if !abkit_fetch::is_retryable_status(response.status().as_u16())
                    && response.status().as_u16() != 416 =>
            {
                return Err(registry.failure(Method::PATCH, &location, response, "repository"));
            }
            Ok(response) => format!("HTTP {}", response.status().as_u16()),
            Err(e @ OciError::Connection { .. }) => e.to_string(),
            Err(e) => return Err(e),
        };
        failures += 1;
        if failures >= registry.policy.max_attempts() {
            return Err(OciError::Connection {
                method: "PATCH",
                url: location,
                problem: format!("gave up after {failures} failed chunks: {problem}"),
            });
        }
        let wait = registry.policy.backoff(failures);
        log::warn!(
            "PATCH chunk at byte {offset}: {problem}; asking the registry where the upload \
             stands in {:.1} s",
            wait.as_secs_f64()
        );
        thread::sleep(wait);
        (location, offset) = match upload_status(registry, &location) {
            Ok(standing) => standing,
            // The registry dropped the session (distribution refuses one
            // whose stored length no longer matches its state after a body
            // broke off): start a new one from the first byte.
            Err(OciError::NotFound { detail, .. }) => {
                log::warn!("the registry dropped the upload session{detail}; starting over");
                (start_upload(registry)?.0, 0)
            }
            Err(e) => return Err(e),
        };
    }
    finish_upload(registry, &location, digest, None)
}

/// Where an upload session stands (`GET <location>` → 204 with
/// `Range: 0-<last byte>`): its URL and the next offset to send.
fn upload_status(registry: &Registry, location: &str) -> Result<(String, u64), OciError> {
    let response = registry.call_expecting(
        204,
        "upload session",
        Method::GET,
        location,
        &[],
        Payload::Empty,
    )?;
    let next = match header_text(&response, header::RANGE) {
        None => 0,
        Some(range) => range
            .trim_start_matches("bytes=")
            .split_once('-')
            .and_then(|(_, end)| end.parse::<u64>().ok())
            .map(|end| end + 1)
            .ok_or_else(|| OciError::Protocol {
                method: "GET",
                url: location.to_owned(),
                problem: format!("unreadable upload Range {range:?}"),
            })?,
    };
    let location = match header_text(&response, header::LOCATION) {
        Some(l) => registry.absolute(&l),
        None => location.to_owned(),
    };
    Ok((location, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_join_an_existing_query() {
        assert_eq!(
            with_query("http://r/u", "digest", "sha256:ab"),
            "http://r/u?digest=sha256:ab"
        );
        assert_eq!(
            with_query("http://r/u?_state=x", "digest", "sha256:ab"),
            "http://r/u?_state=x&digest=sha256:ab"
        );
    }
}
