//! Where a bundle comes from: a file, or an http(s) URL streamed as it
//! downloads (abkit-fetch: retries with backoff, resumes with Range).

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
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(Box::new(opener.open(source)?));
    }
    let file = File::open(source).map_err(UpdateError::io(format!("open bundle {source}")))?;
    Ok(Box::new(file))
}
