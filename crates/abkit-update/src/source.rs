//! Where a bundle comes from: a file, or an http(s) URL streamed as it
//! downloads (abkit-fetch: retries with backoff, resumes with Range).

use std::fs::File;
use std::io::Read;

use crate::{Result, UpdateError};

/// Opens SOURCE (a path or an `http://` / `https://` URL) as a stream.
pub fn open_source(source: &str) -> Result<Box<dyn Read + Send>> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let http = abkit_fetch::HttpSource::open(source, &abkit_fetch::RetryPolicy::default())
            .map_err(|e| UpdateError::Source(e.to_string()))?;
        return Ok(Box::new(http));
    }
    let file = File::open(source).map_err(UpdateError::io(format!("open bundle {source}")))?;
    Ok(Box::new(file))
}
