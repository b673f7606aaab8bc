//! Why a transfer failed: [`FetchError`], a typed error that callers can wrap
//! (`#[from]`) or match on. Every message starts with `GET <url>:` and names
//! the problem, so the CLI can print it as is.

use std::io;

/// A failed or refused transfer.
///
/// [`crate::HttpSource`]'s `Read` implementation wraps these in an
/// [`io::Error`]; [`FetchError::from_io`] gets them back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Not an `http://` or `https://` URL with a host.
    #[error("GET {url}: not an http(s) URL: {reason}")]
    BadUrl { url: String, reason: String },

    /// The server answered with a status that retrying will not change
    /// (e.g. 404), or a non-retryable status after the budget ran out.
    #[error("GET {url}: HTTP {status} {reason}{context}")]
    Status {
        url: String,
        status: u16,
        /// Canonical reason phrase, e.g. `Not Found`.
        reason: String,
        /// Empty, or ` (resuming at byte N)`.
        context: String,
    },

    /// The attempt budget ran out on retryable problems; `last` is the last one.
    #[error("GET {url}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },

    /// A request failed in a way retrying will not fix (TLS certificate,
    /// too many redirects ...).
    #[error("GET {url}: {problem}")]
    Request { url: String, problem: String },

    /// The answer breaks HTTP/1.1 framing (unreadable headers, a bad chunk
    /// size or missing CRLF in a chunked body): a broken server or
    /// middlebox, which a new connection would only repeat, so not retried.
    /// A body that merely ends early is a connection problem and is resumed.
    #[error("GET {url}: malformed response{at}: {problem}")]
    Malformed {
        url: String,
        /// Empty, or ` body at byte N` when the body was being read.
        at: String,
        problem: String,
    },

    /// An `https://` transfer was redirected to plain `http://`; following
    /// it would drop the encryption and the server authentication.
    #[error("GET {url}: refused a redirect from https to plain http: {to}")]
    InsecureRedirect {
        url: String,
        /// The `http://` URL the redirect pointed to.
        to: String,
    },

    /// The file on the server is not the one the transfer started with
    /// (size, ETag or Last-Modified differ), so the bytes cannot be joined.
    #[error("GET {url}: the file changed on the server during the transfer ({detail})")]
    Changed { url: String, detail: String },

    /// The server answered a resume request with a range that does not start
    /// where the transfer stopped, or with an unreadable `Content-Range`.
    #[error("GET {url}: cannot resume at byte {position}: {detail}")]
    BadResume {
        url: String,
        position: u64,
        detail: String,
    },

    /// In range mode, the server answered a range request with the whole
    /// file (after it had honoured ranges before, or for a range past the
    /// start): it does not serve byte ranges reliably.
    #[error(
        "GET {url}: the server ignored the Range request for byte {position} and sent the whole file"
    )]
    RangeIgnored { url: String, position: u64 },

    /// The PEM data given as HTTPS trust roots is unusable.
    #[error("GET {url}: HTTPS trust roots: {problem}")]
    Trust { url: String, problem: String },

    /// A 2xx status this client does not handle for this request.
    #[error("GET {url}: unexpected HTTP {status} {reason}{context}")]
    UnexpectedStatus {
        url: String,
        status: u16,
        reason: String,
        context: String,
    },
}

impl FetchError {
    /// The `FetchError` inside an error returned by `HttpSource::read`, if
    /// that is where it came from.
    pub fn from_io(error: &io::Error) -> Option<&FetchError> {
        error.get_ref()?.downcast_ref::<FetchError>()
    }

    /// The HTTP status that ended the transfer, if a status did.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::Status { status, .. } | FetchError::UnexpectedStatus { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}
