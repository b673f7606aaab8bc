//! Where a bundle comes from: a file, or an http(s) URL streamed as it
//! downloads.

use std::fs::File;
use std::io::Read;

use crate::{Result, UpdateError};

/// Opens SOURCE (a path or an `http://` / `https://` URL) as a stream.
pub fn open_source(source: &str) -> Result<Box<dyn Read + Send>> {
    if source.starts_with("http://") || source.starts_with("https://") {
        return Err(UpdateError::Source(format!(
            "{source}: downloading is not available in this build"
        )));
    }
    let file = File::open(source).map_err(UpdateError::io(format!("open bundle {source}")))?;
    Ok(Box::new(file))
}
