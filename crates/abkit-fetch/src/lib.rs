//! Stream an update bundle from an http(s) URL without storing it: [`HttpSource`]
//! is a plain `Read` over the body of one GET that retries with backoff and resumes
//! a broken transfer with a `Range` request, byte-exact, and gives up on a
//! server that stalls or drips (minimum speed). The same source reads byte
//! ranges for delta installs ([`ByteRanges`]). Rules: docs/fetch.md.

mod error;
mod multipart;
mod policy;
mod source;
mod speed;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::FetchError;
pub use policy::RetryPolicy;
pub use source::{
    ByteRanges, FileRanges, HttpSource, Opener, RetryEvent, TrustRoots, is_retryable_status,
};
