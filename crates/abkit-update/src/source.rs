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
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(Box::new(abkit_fetch::HttpSource::open(source, policy)?));
    }
    let file = File::open(source).map_err(UpdateError::io(format!("open bundle {source}")))?;
    Ok(Box::new(file))
}
