//! The platform calls we need beyond std: zeroing a range of a block
//! device without sending zeros, finding data and holes, and opening an
//! input without blocking on a FIFO.

use std::fs::File;
use std::io;

/// Asks the kernel to zero `len` bytes at `start` (`fallocate` with
/// `FALLOC_FL_ZERO_RANGE`; block devices turn it into a write-zeroes
/// command). Callers fall back to writing zeros when this fails.
#[cfg(target_os = "linux")]
pub(crate) fn zero_range(file: &File, start: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // valid for as long as `file` lives.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, start, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn zero_range(_file: &File, _start: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Where the next data at or after `offset` starts (`lseek(SEEK_DATA)`),
/// `None` when only a hole follows; an error when the file system cannot
/// tell (callers then read everything).
#[cfg(target_os = "linux")]
pub(crate) fn next_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_DATA).map(Some).or_else(|e| {
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    })
}

/// Where the hole at or after `offset` starts (`lseek(SEEK_HOLE)`; the end
/// of the file counts as a hole).
#[cfg(target_os = "linux")]
pub(crate) fn next_hole(file: &File, offset: u64) -> io::Result<u64> {
    seek(file, offset, libc::SEEK_HOLE)
}

#[cfg(target_os = "linux")]
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let offset = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek takes integers only; the descriptor lives as long as
    // `file`. It moves the shared file position, which our callers never
    // rely on (they use positioned reads).
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(at as u64)
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn next_data(_file: &File, _offset: u64) -> io::Result<Option<u64>> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn next_hole(_file: &File, _offset: u64) -> io::Result<u64> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// `open(2)` flag that keeps opening a FIFO from blocking until a writer
/// comes (no effect on regular files and block devices).
#[cfg(target_os = "linux")]
pub(crate) const O_NONBLOCK: i32 = libc::O_NONBLOCK;
#[cfg(not(target_os = "linux"))]
pub(crate) const O_NONBLOCK: i32 = 0;
