//! Where a bundle comes from: a file, an http(s) URL streamed as it
//! downloads (abkit-fetch: retries with backoff, resumes with Range), or an
//! OCI registry (`oci://HOST/REPO:TAG` or `@sha256:...`, abkit-oci: the
//! manifest's digest checked, the blob streamed through abkit-fetch).

use std::fs::File;
use std::io::Read;

use crate::{Result, UpdateError};

/// Opens SOURCE (a path or an `http://` / `https://` URL, downloaded
/// under `policy`) as a stream.
pub fn open_source(
    source: &str,
    policy: &abkit_fetch::RetryPolicy,
) -> Result<Box<dyn Read + Send>> {
    open_source_with(source, abkit_fetch::Opener::new(policy))
}

/// [`open_source`] with more download settings than the policy, such as an
/// observer of retries (`opener` is unused for a file).
pub fn open_source_with(source: &str, opener: abkit_fetch::Opener) -> Result<Box<dyn Read + Send>> {
    open_source_from(source, opener, &abkit_oci::RegistryOptions::default())
}

/// [`open_source_with`] with the settings for an `oci://` source
/// (`--insecure-registry`, credentials); a registry's manifest is fetched
/// and checked here, before anything else happens.
pub fn open_source_from(
    source: &str,
    opener: abkit_fetch::Opener,
    registry: &abkit_oci::RegistryOptions,
) -> Result<Box<dyn Read + Send>> {
    if abkit_oci::is_oci(source) {
        let reference = abkit_oci::Reference::parse(source)?;
        let (artifact, blob) = abkit_oci::open_bundle(&reference, registry, opener)?;
        log::info!(
            "{source}: manifest {}, bundle blob {} ({} bytes)",
            artifact.manifest_digest,
            artifact.bundle.digest,
            artifact.bundle.size
        );
        return Ok(Box::new(blob));
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(Box::new(opener.open(source)?));
    }
    let file = File::open(source).map_err(UpdateError::io(format!("open bundle {source}")))?;
    Ok(Box::new(file))
}
