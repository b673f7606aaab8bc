//! How hard [`crate::HttpSource`] tries: the attempt budget, the backoff between
//! attempts, how far a server's `Retry-After` is honoured, the socket timeouts
//! and the lowest speed a body may fall to before the attempt counts as stalled.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Retry, backoff and timeout settings for one transfer.
///
/// The budget covers the whole transfer: the first request, every retry of a
/// failed request and every reconnection to resume a body that broke off each
/// use one attempt. Raise `attempts` for long downloads over flaky links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests allowed for the whole transfer, the first one included
    /// (0 is treated as 1).
    pub attempts: u32,
    /// Wait before the first retry; it doubles for each further retry.
    pub initial_delay: Duration,
    /// Upper bound of the doubling wait.
    pub max_delay: Duration,
    /// Upper bound for a server's `Retry-After: <seconds>`, which replaces the
    /// computed wait when present.
    pub max_retry_after: Duration,
    /// Randomise each computed wait to between half and all of it, so that a
    /// fleet of machines does not retry in lock step. `Retry-After` is never
    /// randomised.
    pub jitter: bool,
    /// Limit for setting up a connection (DNS, TCP and TLS).
    pub connect_timeout: Duration,
    /// Limit for one read from the socket to deliver anything, and for the
    /// whole wait for the response headers (so a server that accepts and
    /// never answers, or drips its headers, fails the attempt).
    pub read_timeout: Duration,
    /// The lowest average speed, in bytes per second, a body may fall to for
    /// `speed_time` (curl's `--speed-limit`): a slower body fails the attempt
    /// as stalled and the transfer resumes on a new connection, within the
    /// attempt budget. Only time spent waiting for the network counts, not
    /// time the reader spends elsewhere between reads. 0 turns the check off.
    pub speed_limit: u64,
    /// How long the body may stay below `speed_limit` (curl's `--speed-time`).
    /// Zero turns the check off.
    pub speed_time: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, waits of 0.5 s doubling to 8 s (0.5, 1, 2, 4, 8),
    /// `Retry-After` honoured up to 60 s, 15 s to connect, 30 s per read,
    /// at least 1 KiB/s over any 30 s of waiting for the body.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            jitter: true,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            speed_limit: 1024,
            speed_time: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The attempt budget, at least 1.
    pub fn max_attempts(&self) -> u32 {
        self.attempts.max(1)
    }

    /// The speed check, when it is on: (bytes per second, window).
    pub(crate) fn min_speed(&self) -> Option<(u64, Duration)> {
        (self.speed_limit > 0 && !self.speed_time.is_zero())
            .then_some((self.speed_limit, self.speed_time))
    }

    /// The longest a single socket read may wait: `read_timeout`, or
    /// `speed_time` when the speed check is on and that is shorter, so a
    /// silent server is noticed within one speed window.
    pub(crate) fn read_wait(&self) -> Duration {
        match self.min_speed() {
            Some((_, window)) => self.read_timeout.min(window),
            None => self.read_timeout,
        }
    }

    /// The computed wait before retry number `retry` (1 for the first retry):
    /// `initial_delay * 2^(retry-1)`, capped at `max_delay`, without jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        let delay = self
            .initial_delay
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max_delay);
        delay.min(self.max_delay)
    }

    /// The wait actually slept before retry number `retry`: the server's
    /// `Retry-After` (capped) when it sent one, else the backoff with jitter.
    pub(crate) fn wait_before(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(server_wait) = retry_after {
            return server_wait.min(self.max_retry_after);
        }
        let delay = self.backoff(retry);
        if self.jitter {
            // Between 50% and 100% of the delay ("equal jitter").
            let fraction = 0.5 + 0.5 * random_unit();
            delay.mul_f64(fraction)
        } else {
            delay
        }
    }
}

/// A random number in [0, 1) from the standard library's per-process random
/// hash keys; good enough to spread retries, no extra dependency.
fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_initial_and_stops_at_max() {
        let policy = RetryPolicy::default();
        let waits: Vec<u128> = (1..=7).map(|r| policy.backoff(r).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(8));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff() {
        let policy = RetryPolicy::default();
        for retry in 1..=5 {
            let full = policy.backoff(retry);
            for _ in 0..50 {
                let wait = policy.wait_before(retry, None);
                assert!(wait >= full / 2 && wait <= full, "{wait:?} vs {full:?}");
            }
        }
        let fixed = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        assert_eq!(fixed.wait_before(3, None), Duration::from_secs(2));
    }

    #[test]
    fn retry_after_replaces_the_backoff_and_is_capped() {
        let policy = RetryPolicy {
            max_retry_after: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        let wait = policy.wait_before(1, Some(Duration::from_secs(3)));
        assert_eq!(wait, Duration::from_secs(3));
        let wait = policy.wait_before(1, Some(Duration::from_secs(3600)));
        assert_eq!(wait, Duration::from_secs(10));
    }

    #[test]
    fn the_speed_check_is_off_when_either_half_is_zero_and_bounds_each_read() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.min_speed(), Some((1024, Duration::from_secs(30))));
        assert_eq!(policy.read_wait(), Duration::from_secs(30));
        let short = RetryPolicy {
            speed_time: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        assert_eq!(short.read_wait(), Duration::from_secs(2));
        for off in [
            RetryPolicy {
                speed_limit: 0,
                ..short.clone()
            },
            RetryPolicy {
                speed_time: Duration::ZERO,
                ..short.clone()
            },
        ] {
            assert_eq!(off.min_speed(), None);
            assert_eq!(off.read_wait(), Duration::from_secs(30));
        }
    }

    #[test]
    fn zero_attempts_still_makes_one_request() {
        let policy = RetryPolicy {
            attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.max_attempts(), 1);
    }
}
