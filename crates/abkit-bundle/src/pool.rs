//! Reusable chunk buffers for the reader and the writer: a block handed to
//! worker threads (`Arc`) comes back here and is reused once every worker
//! let go of it, so streaming a payload allocates a few buffers, not one
//! per block.

use std::sync::Arc;

/// Buffers kept for reuse, at most `limit` of them.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Vec<Arc<Vec<u8>>>,
    limit: usize,
}

impl BufferPool {
    /// A pool that keeps at most `limit` buffers.
    pub(crate) fn new(limit: usize) -> BufferPool {
        BufferPool {
            free: Vec::new(),
            limit,
        }
    }

    /// A buffer of `len` zero-or-stale bytes that no one else holds: a kept
    /// one no longer shared, else a new one.
    pub(crate) fn take(&mut self, len: usize) -> Arc<Vec<u8>> {
        let reusable = self
            .free
            .iter()
            .position(|b| Arc::strong_count(b) == 1 && Arc::weak_count(b) == 0);
        let mut buf = match reusable {
            Some(i) => self.free.swap_remove(i),
            None => Arc::new(Vec::new()),
        };
        match Arc::get_mut(&mut buf) {
            Some(v) => v.resize(len, 0),
            None => buf = Arc::new(vec![0; len]),
        }
        buf
    }

    /// Keeps `buf` for a later [`BufferPool::take`] (it is reused only once
    /// every other holder dropped it), unless the pool is full.
    pub(crate) fn give_back(&mut self, buf: Arc<Vec<u8>>) {
        if self.free.len() < self.limit {
            self.free.push(buf);
        }
    }
}
