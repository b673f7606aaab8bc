//! The minimum-speed check (curl's `--speed-limit` / `--speed-time`): a
//! `Read` wrapper around one response body that fails a read with
//! [`Stalled`] once a window of `speed_time` spent waiting for the network
//! brought fewer than `speed_limit` bytes per second. Without it, a server
//! that drips a byte now and then never trips the per-read timeout and keeps
//! a transfer alive forever.
//!
//! Only the time spent inside the wrapped `read` counts: when the reader
//! pauses between reads (writing to a slow disk), the bytes pile up in the
//! socket buffer and the next reads return at once, so a pause is never
//! mistaken for a slow server. Windows follow each other without overlap; a
//! read waits at most `speed_time` (see `RetryPolicy::read_wait`), so a slow
//! body is caught between one and two windows after it slowed down.

use std::fmt;
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Why a read failed: the body was slower than the policy allows. Carried
/// inside an `io::Error` of kind `TimedOut`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stalled {
    /// Bytes that arrived in the window.
    pub bytes: u64,
    /// The window: time spent waiting for them.
    pub waited: Duration,
    /// The lowest speed allowed, bytes per second.
    pub limit: u64,
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in the last {:.1} s, below the minimum of {} bytes/s (--speed-limit)",
            self.bytes,
            self.waited.as_secs_f64(),
            self.limit
        )
    }
}

impl std::error::Error for Stalled {}

impl Stalled {
    /// The `Stalled` inside an error returned by [`Metered::read`], if any.
    pub(crate) fn from_io(error: &io::Error) -> Option<&Stalled> {
        error.get_ref()?.downcast_ref::<Stalled>()
    }
}

/// A body whose reads are timed against a minimum speed.
pub(crate) struct Metered<R> {
    inner: R,
    /// (bytes per second, window); `None`: no check.
    check: Option<(u64, Duration)>,
    /// Time spent in `inner.read` in the current window.
    waited: Duration,
    /// Bytes delivered in the current window.
    bytes: u64,
}

impl<R: Read> Metered<R> {
    pub(crate) fn new(inner: R, check: Option<(u64, Duration)>) -> Metered<R> {
        Metered {
            inner,
            check,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((limit, window)) = self.check else {
            return self.inner.read(buf);
        };
        let started = Instant::now();
        let result = self.inner.read(buf);
        self.waited += started.elapsed();
        match result {
            // The end of the body is never a stall.
            Ok(0) => return result,
            Ok(n) => self.bytes += n as u64,
            Err(_) => {}
        }
        if self.waited >= window {
            // Below `limit` on average over the whole window. The bytes of
            // this last read are dropped with the error: the transfer
            // resumes at the position of the bytes handed out.
            if (self.bytes as f64) < limit as f64 * self.waited.as_secs_f64() {
                let stalled = Stalled {
                    bytes: self.bytes,
                    waited: self.waited,
                    limit,
                };
                return Err(io::Error::new(io::ErrorKind::TimedOut, stalled));
            }
            self.waited = Duration::ZERO;
            self.bytes = 0;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivers `chunk` bytes per read after sleeping `delay`, for ever.
    struct Slow {
        chunk: usize,
        delay: Duration,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.delay);
            let n = self.chunk.min(buf.len());
            buf[..n].fill(7);
            Ok(n)
        }
    }

    fn reads_until_error(mut reader: impl Read, max_reads: usize) -> (usize, Option<io::Error>) {
        let mut buf = [0u8; 64];
        for done in 0..max_reads {
            if let Err(e) = reader.read(&mut buf) {
                return (done, Some(e));
            }
        }
        (max_reads, None)
    }

    #[test]
    fn a_slow_body_fails_after_one_window_naming_what_arrived() {
        let slow = Slow {
            chunk: 1,
            delay: Duration::from_millis(20),
        };
        let check = Some((1000, Duration::from_millis(100)));
        let (reads, error) = reads_until_error(Metered::new(slow, check), 100);
        let error = error.expect("a stall");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let stalled = Stalled::from_io(&error).expect("Stalled inside");
        assert_eq!(stalled.limit, 1000);
        assert!(stalled.waited >= Duration::from_millis(100));
        // About five reads of a byte fill the window; the one that closes
        // it fails, and its byte is counted.
        assert!((1..=4).contains(&reads), "{reads} reads, {stalled}");
        assert_eq!(stalled.bytes, reads as u64 + 1, "{stalled}");
    }

    #[test]
    fn a_fast_body_or_no_check_never_stalls() {
        let fast = Slow {
            chunk: 64,
            delay: Duration::from_millis(5),
        };
        let check = Some((1000, Duration::from_millis(20)));
        assert!(reads_until_error(Metered::new(fast, check), 30).1.is_none());
        let slow = Slow {
            chunk: 1,
            delay: Duration::from_millis(5),
        };
        assert!(reads_until_error(Metered::new(slow, None), 30).1.is_none());
    }

    #[test]
    fn pauses_between_reads_do_not_count() {
        let fast = Slow {
            chunk: 64,
            delay: Duration::ZERO,
        };
        // 64 bytes per 15 ms of wall time is far below 100 kB/s, but the
        // reads themselves take no time: no window ever fills.
        let mut reader = Metered::new(fast, Some((100_000, Duration::from_millis(10))));
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(15));
            assert_eq!(reader.read(&mut buf).unwrap(), 64);
        }
    }
}
