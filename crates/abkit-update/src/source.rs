//! Where a bundle comes from: a file, or an http(s) URL streamed as it
//! downloads (abkit-fetch: retries with backoff, resumes with Range), or
//! read by ranges for a delta install ([`install_from`]).

use std::fs::File;
use std::io::Read;

use abkit_bundle::Keyring;

use crate::install::{InstallOptions, InstallReport, install, install_delta};
use crate::machine::Machine;
use crate::progress::{Event, Reporter};
use crate::{Result, UpdateError};

/// Whether SOURCE is a URL (else a path).
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// Installs SOURCE the best way: an http(s) URL as a delta when `delta` is
/// set and the server honours Range requests (a server that ignores them
/// gets a full download, with a warning, from the answer already under
/// way); a file, or a URL without `delta`, streamed whole.
pub fn install_from(
    m: &mut dyn Machine,
    source: &str,
    opener: abkit_fetch::Opener,
    keyring: &Keyring,
    opts: &InstallOptions,
    delta: bool,
    rep: &mut dyn Reporter,
) -> Result<InstallReport> {
    if delta && is_url(source) {
        let mut http = opener.open_ranged(source, crate::delta::HEAD_WINDOW)?;
        if http.ranges_honoured() {
            return install_delta(m, &mut http, keyring, opts, rep);
        }
        let message = format!(
            "the server of {source} ignores Range requests: no delta install, downloading the whole bundle"
        );
        log::warn!("{message}");
        rep.event(Event::Warning { message });
        return install(m, http, keyring, opts, rep);
    }
    install(m, open_source_with(source, opener)?, keyring, opts, rep)
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
    if is_url(source) {
        return Ok(Box::new(opener.open(source)?));
    }
    let file = File::open(source).map_err(UpdateError::io(format!("open bundle {source}")))?;
    Ok(Box::new(file))
}
