//! Where a bundle comes from: a file or standard input (`-`), an http(s)
//! URL streamed as it
//! downloads (abkit-fetch: retries with backoff, resumes with Range) or
//! read by ranges for a delta install ([`install_from`]), or an OCI
//! registry (`oci://HOST/REPO:TAG` or `@sha256:...`, abkit-oci: the
//! manifest's digest checked, the blob streamed through abkit-fetch).

use std::fs::File;
use std::io::{self, Read};

use abkit_bundle::Keyring;

use crate::install::{InstallOptions, InstallReport, install, install_delta};
use crate::machine::Machine;
use crate::progress::{Event, Reporter};
use crate::{Result, UpdateError};

/// The source that names standard input (a pipe: installed whole, as a
/// stream).
pub const STDIN: &str = "-";

/// Whether SOURCE is a URL (else a path).
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// Installs SOURCE the best way: an http(s) URL or an `oci://` reference
/// (its blob URL) as a delta when `delta` is set and the server honours
/// Range requests (a server that ignores them gets a full download, with a
/// warning, from the answer already under way); a file, or any source
/// without `delta`, streamed whole.
#[allow(clippy::too_many_arguments)]
pub fn install_from(
    m: &mut dyn Machine,
    source: &str,
    opener: abkit_fetch::Opener,
    registry: &abkit_oci::RegistryOptions,
    keyring: &Keyring,
    opts: &InstallOptions,
    delta: bool,
    rep: &mut dyn Reporter,
) -> Result<InstallReport> {
    if delta && abkit_oci::is_oci(source) {
        let reference = abkit_oci::Reference::parse(source)?;
        let (artifact, mut http) =
            abkit_oci::open_bundle_ranged(&reference, registry, opener, crate::delta::HEAD_WINDOW)?;
        log::info!(
            "{source}: manifest {}, bundle blob {} ({} bytes)",
            artifact.manifest_digest,
            artifact.bundle.digest,
            artifact.bundle.size
        );
        if http.ranges_honoured() {
            return install_delta(m, &mut http, keyring, opts, rep);
        }
        ignores_range(source, rep);
        let blob = abkit_oci::BlobReader::new(http, artifact.bundle.digest, artifact.bundle.size);
        return install(m, blob, keyring, opts, rep);
    }
    if delta && is_url(source) {
        let mut http = opener.open_ranged(source, crate::delta::HEAD_WINDOW)?;
        if http.ranges_honoured() {
            return install_delta(m, &mut http, keyring, opts, rep);
        }
        ignores_range(source, rep);
        return install(m, http, keyring, opts, rep);
    }
    install(
        m,
        open_source_from(source, opener, registry)?,
        keyring,
        opts,
        rep,
    )
}

fn ignores_range(source: &str, rep: &mut dyn Reporter) {
    let message = format!(
        "the server of {source} ignores Range requests: no delta install, downloading the whole bundle"
    );
    log::warn!("{message}");
    rep.event(Event::Warning { message });
}

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
    if is_url(source) {
        return Ok(Box::new(opener.open(source)?));
    }
    if source == STDIN {
        return Ok(Box::new(std::io::stdin()));
    }
    let context = format!("open bundle {source}");
    let file = File::open(source).map_err(UpdateError::io(&context))?;
    // Linux opens a directory for reading; its first read would fail with
    // a bare "Is a directory".
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(UpdateError::io(context)(io::Error::new(
            io::ErrorKind::IsADirectory,
            "a directory, not a bundle file",
        )));
    }
    Ok(Box::new(file))
}
