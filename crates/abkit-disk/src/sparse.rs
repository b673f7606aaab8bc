//! In-memory sparse disk and byte-range views, the plumbing under `build`
//! and `Esp`.
//!
//! `SparseDisk` is a disk of any size that holds only the 4 KiB blocks
//! written to it (everything else reads as zero): the builder lets the GPT
//! and FAT libraries write into it, then copies just those blocks out.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Granularity of the sparse map and of zero-block skipping.
pub(crate) const BLOCK: usize = 4096;

/// Where a seek from `base` lands; `len` is the stream's length, when it
/// has one (without, a seek from the end is refused).
pub(crate) fn seek_position(base: u64, len: Option<u64>, pos: SeekFrom) -> io::Result<u64> {
    let target = match (pos, len) {
        (SeekFrom::Start(p), _) => Some(p),
        (SeekFrom::Current(d), _) => base.checked_add_signed(d),
        (SeekFrom::End(d), Some(len)) => len.checked_add_signed(d),
        (SeekFrom::End(_), None) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "seek from the end of a stream without a length",
            ));
        }
    };
    target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before byte 0"))
}

/// A zero-filled disk of `len` bytes that stores only written blocks.
#[derive(Debug, Default)]
pub(crate) struct SparseDisk {
    len: u64,
    pos: u64,
    blocks: BTreeMap<u64, Box<[u8; BLOCK]>>,
}

impl SparseDisk {
    pub(crate) fn new(len: u64) -> Self {
        SparseDisk {
            len,
            pos: 0,
            blocks: BTreeMap::new(),
        }
    }

    /// The written blocks as (byte offset, bytes), in disk order. The last
    /// block may extend past `len` only if `len` is not a block multiple;
    /// it is cut to `len`.
    pub(crate) fn blocks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.blocks.iter().map(|(index, block)| {
            let offset = index * BLOCK as u64;
            let used = (self.len - offset).min(BLOCK as u64) as usize;
            (offset, &block[..used])
        })
    }
}

impl SparseDisk {
    /// A `read` at `offset` (the stream position moves there).
    pub(crate) fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.pos = offset;
        self.read(buf)
    }

    /// A `write` at `offset` (the stream position moves there).
    pub(crate) fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.pos = offset;
        self.write(buf)
    }

    /// For an access of `want` bytes at the position (which is before the
    /// end): the block index, the offset in it, and how many bytes of the
    /// access that block serves.
    fn span(&self, want: usize) -> (u64, usize, usize) {
        let index = self.pos / BLOCK as u64;
        let within = (self.pos % BLOCK as u64) as usize;
        let n = want
            .min(BLOCK - within)
            .min((self.len - self.pos).min(usize::MAX as u64) as usize);
        (index, within, n)
    }
}

impl Read for SparseDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let (index, within, n) = self.span(buf.len());
        match self.blocks.get(&index) {
            Some(block) => buf[..n].copy_from_slice(&block[within..within + n]),
            None => buf[..n].fill(0),
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the disk",
            ));
        }
        let (index, within, n) = self.span(buf.len());
        let block = self
            .blocks
            .entry(index)
            .or_insert_with(|| Box::new([0; BLOCK]));
        block[within..within + n].copy_from_slice(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseDisk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = seek_position(self.pos, Some(self.len), pos)?;
        Ok(self.pos)
    }
}

/// The bytes `start..start + len` of `inner`, seen as a stream of its own
/// (a partition of a disk). Reads stop and writes fail at its end.
#[derive(Debug)]
pub(crate) struct Slice<T> {
    inner: T,
    start: u64,
    len: u64,
    pos: u64,
}

impl<T: Seek> Slice<T> {
    pub(crate) fn new(inner: T, start: u64, len: u64) -> Self {
        Slice {
            inner,
            start,
            len,
            pos: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn inner(&self) -> &T {
        &self.inner
    }

    fn place(&mut self) -> io::Result<()> {
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(())
    }
}

impl<T: Read + Seek> Read for Slice<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.place()?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<T: Write + Seek> Write for Slice<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = (buf.len() as u64).min(left) as usize;
        self.place()?;
        let done = self.inner.write(&buf[..n])?;
        self.pos += done as u64;
        Ok(done)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Seek> Seek for Slice<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = seek_position(self.pos, Some(self.len), pos)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_disk_keeps_only_written_blocks() {
        let mut disk = SparseDisk::new(10 * BLOCK as u64 + 100);
        disk.seek(SeekFrom::Start(BLOCK as u64 - 2)).unwrap();
        disk.write_all(b"abcd").unwrap();
        disk.seek(SeekFrom::End(-1)).unwrap();
        disk.write_all(b"z").unwrap();
        assert!(disk.write(b"x").is_err());
        let blocks: Vec<_> = disk.blocks().map(|(o, b)| (o, b.len())).collect();
        assert_eq!(
            blocks,
            [(0, BLOCK), (BLOCK as u64, BLOCK), (10 * BLOCK as u64, 100)]
        );
        let mut all = Vec::new();
        disk.seek(SeekFrom::Start(0)).unwrap();
        disk.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 10 * BLOCK + 100);
        assert_eq!(&all[BLOCK - 2..BLOCK + 2], b"abcd");
        assert_eq!(all[all.len() - 1], b'z');
        assert_eq!(all.iter().filter(|&&b| b != 0).count(), 5);
    }

    #[test]
    fn slice_confines_reads_and_writes() {
        let mut slice = Slice::new(io::Cursor::new(vec![0u8; 32]), 8, 16);
        slice.write_all(&[1; 16]).unwrap();
        assert!(slice.write(&[2]).is_err());
        slice.seek(SeekFrom::Start(12)).unwrap();
        let mut rest = Vec::new();
        slice.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, [1; 4]);
        let bytes = slice.inner().get_ref();
        assert_eq!(&bytes[..8], &[0; 8]);
        assert_eq!(&bytes[8..24], &[1; 16]);
        assert_eq!(&bytes[24..], &[0; 8]);
    }
}
