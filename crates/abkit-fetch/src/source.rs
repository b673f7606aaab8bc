//! [`HttpSource`]: the body of one HTTP GET as a plain `Read`, which retries
//! failed requests and resumes a body that broke off with a `Range` request,
//! handing out every byte of the file exactly once and in order. Opened
//! with [`Opener::open_ranged`], it reads any byte range of the file
//! instead ([`HttpSource::set_range`], [`ByteRanges`]), with the same
//! retries, over one kept-alive connection.

use std::io::{self, Read};
use std::thread;
use std::time::Duration;

use ureq::http::{HeaderMap, StatusCode, Uri, header};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, parse_pem};
use ureq::{Agent, BodyReader};

use crate::multipart::{self, Piece};
use crate::speed::{Metered, Stalled};
use crate::{FetchError, RetryPolicy};

/// Statuses worth another attempt: timeouts, rate limits and server trouble.
/// Any other non-2xx status ends the transfer at once.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504 | 520..=599)
}

/// One retry about to happen, as told to an observer (see
/// [`Opener::observe`]); the same text also goes to `log::warn!`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryEvent {
    /// The attempt about to be made, 2 or more.
    pub attempt: u32,
    /// The attempt budget.
    pub max_attempts: u32,
    /// The byte the new request starts at (0: from the start).
    pub position: u64,
    /// The wait before the new request.
    pub wait: Duration,
    /// What went wrong with the previous attempt.
    pub problem: String,
}

type RetryObserver = Box<dyn FnMut(&RetryEvent) + Send>;

/// Gives the `Authorization` header value for the next request, if any.
/// Shared by a source and its forks (delta installs read ranges on several
/// connections), so a renewed token serves them all.
type Authorizer = std::sync::Arc<std::sync::Mutex<dyn FnMut() -> Option<String> + Send>>;

/// What identifies the file on the server, from the first good response;
/// every later response must agree so that the bytes join up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FileIdentity {
    total: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl FileIdentity {
    /// The `If-Range` validator: a strong ETag, else Last-Modified (RFC 9110
    /// 13.1.5 forbids weak ETags there).
    fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(etag) if !etag.starts_with("W/") => Some(etag),
            _ => self.last_modified.as_deref(),
        }
    }

    /// How `other` differs from `self`, if it does where both are known.
    fn difference(&self, other: &FileIdentity) -> Option<String> {
        if let (Some(before), Some(now)) = (self.total, other.total)
            && before != now
        {
            return Some(format!("size was {before} bytes, now {now}"));
        }
        if let (Some(before), Some(now)) = (&self.etag, &other.etag)
            && before != now
        {
            return Some(format!("ETag was {before}, now {now}"));
        }
        if let (Some(before), Some(now)) = (&self.last_modified, &other.last_modified)
            && before != now
        {
            return Some(format!("Last-Modified was {before}, now {now}"));
        }
        None
    }
}

/// Most ranges asked for in one request at first.
const MAX_PARTS: usize = 128;
/// Longest `Range` header sent (lighttpd refuses header lines beyond 8 KiB
/// with 431).
const MAX_RANGE_HEADER: usize = 4000;

/// Why a request for several ranges brought nothing to keep.
enum MultiFailure {
    Retry {
        problem: String,
        retry_after: Option<Duration>,
    },
    /// The server does not answer several ranges as multipart: ask range
    /// by range.
    Unsupported(String),
    Fatal(FetchError),
}

/// A reader that counts the bytes it hands out into `count`.
struct Counted<'a, R> {
    inner: R,
    count: &'a mut u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.count += n as u64;
        Ok(n)
    }
}

/// Why one attempt did not produce a body to read.
enum Failure {
    /// Worth another attempt after a wait (`retry_after` when the server said so).
    Retry {
        problem: String,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help.
    Fatal(FetchError),
}

impl From<FetchError> for Failure {
    fn from(error: FetchError) -> Self {
        Failure::Fatal(error)
    }
}

/// The body of `GET url`, streamed through a small buffer and never stored.
///
/// [`HttpSource::open`] makes the first request (retrying as the policy
/// allows) so that a bad URL, a 404 or an unreachable server fail there.
/// `read` then streams the body; when it breaks off (connection reset,
/// timeout, end of stream before `Content-Length`), the next request asks for
/// `Range: bytes=<position>-` and the stream continues where it stopped. See
/// docs/fetch.md for the rules.
pub struct HttpSource {
    url: String,
    agent: Agent,
    policy: RetryPolicy,
    body: Option<Metered<BodyReader<'static>>>,
    position: u64,
    identity: Option<FileIdentity>,
    attempts: u32,
    /// Why the current body went away, for the next connection attempt.
    broken: Option<String>,
    /// A fatal error, handed out again by every later `read`.
    failure: Option<FetchError>,
    observer: Option<RetryObserver>,
    authorizer: Option<Authorizer>,
    /// Range mode: the end (exclusive) of the range being read.
    end: Option<u64>,
    /// Range mode was asked for and the server answered with ranges.
    ranged: bool,
    /// Body bytes handed out over all requests.
    received: u64,
    /// Several ranges may go into one request (multipart/byteranges);
    /// false once the server answered such a request with the whole file
    /// or with a body that is not multipart as the RFCs define it.
    multi: bool,
    /// Most ranges asked for in one request: lowered to what the server
    /// answered when it answers fewer than asked (lighttpd: 10).
    max_parts: usize,
    /// HTTP requests made (every attempt counted).
    requests: u64,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("url", &self.url)
            .field("position", &self.position)
            .field("identity", &self.identity)
            .field("attempts", &self.attempts)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// Which certificate authorities an HTTPS server must chain to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TrustRoots {
    /// The Mozilla roots built in (webpki-roots): for public servers.
    #[default]
    Builtin,
    /// Only the certificates in this PEM text: a private update server's CA,
    /// or a system bundle such as /etc/ssl/certs/ca-certificates.crt.
    Pem(Vec<u8>),
}

impl TrustRoots {
    /// The TLS settings that trust these roots, for another client of the
    /// same servers (abkit-oci's registry requests); `url` names the
    /// transfer in errors.
    pub fn tls_config(&self, url: &str) -> Result<TlsConfig, FetchError> {
        let mut tls = TlsConfig::builder();
        if let TrustRoots::Pem(pem) = self {
            tls = tls.root_certs(RootCerts::from(pem_certificates(url, pem)?));
        }
        Ok(tls.build())
    }
}

/// Settings for opening an [`HttpSource`] beyond the retry policy.
#[derive(Default)]
pub struct Opener {
    policy: RetryPolicy,
    roots: TrustRoots,
    observer: Option<RetryObserver>,
    authorizer: Option<Authorizer>,
}

impl Opener {
    pub fn new(policy: &RetryPolicy) -> Opener {
        Opener {
            policy: policy.clone(),
            ..Opener::default()
        }
    }

    /// Trust these roots for HTTPS instead of the built-in ones.
    pub fn trust(mut self, roots: TrustRoots) -> Opener {
        self.roots = roots;
        self
    }

    /// Call `observer` before every retry (e.g. to show "retrying in 2 s").
    pub fn observe(mut self, observer: impl FnMut(&RetryEvent) + Send + 'static) -> Opener {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Call `authorizer` before every request (the first, each retry and
    /// each resume) and send what it gives as the `Authorization` header:
    /// a registry's bearer token, renewed when it expires (abkit-oci).
    /// The header is never sent on after a redirect (ureq drops it), so a
    /// registry redirecting to a storage URL does not leak the token.
    pub fn authorize(
        mut self,
        authorizer: impl FnMut() -> Option<String> + Send + 'static,
    ) -> Opener {
        self.authorizer = Some(std::sync::Arc::new(std::sync::Mutex::new(authorizer)));
        self
    }

    /// Start `GET url` and return once the server answered 200 with a body.
    pub fn open(self, url: &str) -> Result<HttpSource, FetchError> {
        self.start(url, None)
    }

    /// Open `url` for range reads: the first request asks for bytes
    /// `0..first_len`. If the server answers with that range,
    /// [`HttpSource::ranges_honoured`] is true and `read` hands out those
    /// bytes; [`HttpSource::set_range`] then moves to any other range. If
    /// it ignores the Range (200 with the whole file), the source streams
    /// the whole file from byte 0 as [`Opener::open`] would, and
    /// `ranges_honoured` is false: the caller falls back to a full download
    /// without a second request.
    pub fn open_ranged(self, url: &str, first_len: u64) -> Result<HttpSource, FetchError> {
        self.start(url, Some(first_len.max(1)))
    }

    fn start(self, url: &str, first_range: Option<u64>) -> Result<HttpSource, FetchError> {
        check_url(url)?;
        let tls = self.roots.tls_config(url)?;
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            // An https transfer never continues over plain http: a redirect
            // there fails with RequireHttpsOnly (see `classify`).
            .https_only(url.starts_with("https://"))
            .timeout_connect(Some(self.policy.connect_timeout))
            .timeout_per_read(Some(self.policy.read_wait()))
            .timeout_per_write(Some(self.policy.read_timeout))
            .timeout_recv_response(Some(self.policy.read_timeout))
            .user_agent(concat!("abkit/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        let mut source = HttpSource {
            url: url.to_owned(),
            agent,
            policy: self.policy,
            body: None,
            position: 0,
            identity: None,
            attempts: 0,
            broken: None,
            failure: None,
            observer: self.observer,
            authorizer: self.authorizer,
            end: first_range,
            ranged: false,
            received: 0,
            multi: true,
            max_parts: MAX_PARTS,
            requests: 0,
        };
        source.connect()?;
        Ok(source)
    }
}

/// The certificates in `pem`; at least one, and nothing unreadable.
fn pem_certificates(url: &str, pem: &[u8]) -> Result<Vec<Certificate<'static>>, FetchError> {
    let bad = |problem: String| FetchError::Trust {
        url: url.to_owned(),
        problem,
    };
    let mut certificates = Vec::new();
    for item in parse_pem(pem) {
        match item.map_err(|e| bad(format!("unreadable PEM: {e}")))? {
            PemItem::Certificate(certificate) => certificates.push(certificate),
            _ => {
                return Err(bad(
                    "the PEM data holds something other than certificates".into()
                ));
            }
        }
    }
    if certificates.is_empty() {
        return Err(bad("no certificate in the PEM data".into()));
    }
    Ok(certificates)
}

impl HttpSource {
    /// Start `GET url` with `policy` and the built-in HTTPS roots, and return
    /// once the server answered 200 with a body. [`Opener`] sets more.
    pub fn open(url: &str, policy: &RetryPolicy) -> Result<HttpSource, FetchError> {
        Opener::new(policy).open(url)
    }

    /// The size of the file in bytes, when the server said (`Content-Length`
    /// of the 200 answer or the total of a `Content-Range`).
    pub fn content_length(&self) -> Option<u64> {
        self.identity.as_ref().and_then(|id| id.total)
    }

    /// Bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Requests made so far (the first one included; counted per range in
    /// range mode).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Body bytes handed out so far, over all requests and ranges.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Whether the server answered the ranged open with a range (see
    /// [`Opener::open_ranged`]); false for a source opened with `open`.
    pub fn ranges_honoured(&self) -> bool {
        self.ranged
    }

    /// Range mode: from now on `read` hands out bytes `start..start + len`
    /// of the file and then end of file. The next read makes the request
    /// (the connection is reused); retries and resumes work as for a whole
    /// file, with a fresh attempt budget per range. A server that answers
    /// one with the whole file fails with [`FetchError::RangeIgnored`].
    pub fn set_range(&mut self, start: u64, len: u64) {
        let end = Some(start.saturating_add(len));
        if self.position == start && self.end == end && self.failure.is_none() {
            // Already there (the ranged open asked for this range).
            return;
        }
        self.body = None;
        self.broken = None;
        self.attempts = 0;
        self.position = start;
        self.end = end;
    }

    /// HTTP requests made so far, over all ranges and retries.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Whether several ranges still go into one request (false once the
    /// server showed it does not answer them as multipart/byteranges).
    pub fn multi_ranges(&self) -> bool {
        self.multi
    }

    /// Range mode: fills `out` with the bytes of `ranges` (offset, length;
    /// sorted, disjoint), one after the other. Several ranges go into one
    /// request (`Range: bytes=a-b,c-d,...`) answered as
    /// multipart/byteranges; whatever the answer leaves out (a server that
    /// serves only the first few ranges, a body that broke off) is asked
    /// for again. A server that answers with the whole file or with a body
    /// that is not multipart is asked range by range from then on. See
    /// docs/fetch.md, "Several ranges in one request".
    pub fn read_ranges(&mut self, ranges: &[(u64, u64)], out: &mut [u8]) -> io::Result<()> {
        let mut pending = Vec::with_capacity(ranges.len());
        let mut out_at = 0usize;
        for &(start, len) in ranges {
            if len == 0 {
                continue;
            }
            if pending
                .last()
                .is_some_and(|p: &Piece| p.start + p.len > start)
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "ranges must be sorted and disjoint",
                ));
            }
            pending.push(Piece { start, len, out_at });
            out_at += len as usize;
        }
        if out_at != out.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the buffer is not as long as the ranges",
            ));
        }
        if let Some(error) = &self.failure {
            return Err(error.clone().into_io());
        }
        let max_attempts = self.policy.max_attempts();
        let mut attempts = 0u32;
        while !pending.is_empty() {
            if !self.multi || !self.ranged || pending.len() == 1 {
                for p in std::mem::take(&mut pending) {
                    self.read_range(p.start, &mut out[p.out_at..p.out_at + p.len as usize])?;
                }
                break;
            }
            let batch = self.batch(&pending);
            attempts += 1;
            let (problem, retry_after) = match self.multi_attempt(&pending[..batch], out) {
                Ok((mut covered, whole)) => {
                    let parts = covered.len();
                    let left = multipart::uncovered(&pending[..batch], &mut covered);
                    let wanted = |pieces: &[Piece]| pieces.iter().map(|p| p.len).sum::<u64>();
                    if wanted(&left) == wanted(&pending[..batch]) {
                        // Nothing of what was asked came back: not a
                        // server to ask for several ranges at once.
                        log::warn!(
                            "GET {}: a request for {batch} ranges brought none of them; \
                             asking range by range",
                            self.url
                        );
                        self.multi = false;
                        continue;
                    }
                    if whole && !left.is_empty() && parts < batch {
                        // Served fewer ranges than asked (lighttpd: 10):
                        // ask for no more than that from now on.
                        self.max_parts = self.max_parts.min(parts).max(2);
                    }
                    pending.splice(..batch, left);
                    attempts = 0;
                    continue;
                }
                Err(MultiFailure::Unsupported(why)) => {
                    log::info!("GET {}: {why}; asking range by range", self.url);
                    self.multi = false;
                    continue;
                }
                Err(MultiFailure::Fatal(error)) => return Err(self.fail(error)),
                Err(MultiFailure::Retry {
                    problem,
                    retry_after,
                }) => (problem, retry_after),
            };
            if attempts >= max_attempts {
                let error = FetchError::GaveUp {
                    url: self.url.clone(),
                    attempts,
                    last: problem,
                };
                return Err(self.fail(error));
            }
            let wait = self.policy.wait_before(attempts, retry_after);
            let event = RetryEvent {
                attempt: attempts + 1,
                max_attempts,
                position: pending[0].start,
                wait,
                problem,
            };
            log::warn!(
                "GET {}: {}; attempt {} of {} for {} ranges from byte {} in {:.1} s",
                self.url,
                event.problem,
                event.attempt,
                event.max_attempts,
                pending.len(),
                event.position,
                wait.as_secs_f64()
            );
            if let Some(observer) = self.observer.as_mut() {
                observer(&event);
            }
            thread::sleep(wait);
        }
        Ok(())
    }

    /// How many of `pending` go into the next request: at most
    /// `max_parts`, and a `Range` header of at most [`MAX_RANGE_HEADER`].
    fn batch(&self, pending: &[Piece]) -> usize {
        let digits = |n: u64| n.checked_ilog10().unwrap_or(0) as usize + 1;
        let mut header = "bytes=".len();
        let mut n = 0;
        for p in pending.iter().take(self.max_parts) {
            // `start-end,`
            header += digits(p.start) + digits(p.start + p.len - 1) + 2;
            if header > MAX_RANGE_HEADER && n > 0 {
                break;
            }
            n += 1;
        }
        n.max(1)
    }

    /// One request for the ranges `pieces`; their bytes go to `out`.
    /// Returns the ranges (start, len) the answer held in full, and
    /// whether the answer arrived whole (not cut short).
    fn multi_attempt(
        &mut self,
        pieces: &[Piece],
        out: &mut [u8],
    ) -> Result<(Vec<(u64, u64)>, bool), MultiFailure> {
        let spec: Vec<String> = pieces
            .iter()
            .map(|p| format!("{}-{}", p.start, p.start + p.len - 1))
            .collect();
        let mut request = self
            .get()
            .header(header::RANGE, format!("bytes={}", spec.join(",")));
        if let Some(validator) = self.identity.as_ref().and_then(FileIdentity::if_range) {
            request = request.header(header::IF_RANGE, validator);
        }
        let response = request.call().map_err(|e| match self.classify(e) {
            Failure::Retry {
                problem,
                retry_after,
            } => MultiFailure::Retry {
                problem,
                retry_after,
            },
            Failure::Fatal(error) => MultiFailure::Fatal(error),
        })?;
        let status = response.status();
        let code = status.as_u16();
        if is_retryable_status(code) {
            return Err(MultiFailure::Retry {
                problem: format!("HTTP {} for {} ranges", status_text(status), pieces.len()),
                retry_after: retry_after(response.headers()),
            });
        }
        if code == 200 {
            // The whole file: do not read it; the connection is dropped.
            return Err(MultiFailure::Unsupported(format!(
                "the server answered a request for {} ranges with the whole file",
                pieces.len()
            )));
        }
        if matches!(code, 400 | 416 | 431 | 501) {
            // Servers that take only one range refuse several this way
            // (abkit-vmtest's server: 416); a single range will tell
            // whether the request itself was wrong.
            return Err(MultiFailure::Unsupported(format!(
                "the server refused a request for {} ranges with HTTP {}",
                pieces.len(),
                status_text(status)
            )));
        }
        if code != 206 {
            return Err(MultiFailure::Fatal(FetchError::Status {
                url: self.url.clone(),
                status: code,
                reason: reason(status),
                context: format!(" (for {} ranges)", pieces.len()),
            }));
        }
        let headers = response.headers();
        let content_type = header_text(headers, header::CONTENT_TYPE).unwrap_or_default();
        let single = header_text(headers, header::CONTENT_RANGE);
        let seen = FileIdentity {
            total: None,
            etag: header_text(headers, header::ETAG),
            last_modified: header_text(headers, header::LAST_MODIFIED),
        };
        self.agree(seen).map_err(MultiFailure::Fatal)?;
        let total = self.content_length();
        let boundary = multipart::boundary(&content_type);
        let mut body = io::BufReader::with_capacity(
            64 * 1024,
            Counted {
                inner: Metered::new(response.into_body().into_reader(), self.policy.min_speed()),
                count: &mut self.received,
            },
        );
        let mut covered = Vec::new();
        let result = match (boundary, single) {
            (Some(boundary), _) => multipart::read_parts(
                &mut body,
                &boundary,
                total,
                &mut |start, len, part| multipart::scatter(pieces, start, len, part, out),
                &mut |start, len| covered.push((start, len)),
            ),
            // The server merged everything into one range.
            (None, Some(text)) => match ContentRange::parse(&text) {
                Some(r) if r.total.is_none_or(|t| Some(t) == total) => {
                    let len = r.end - r.start + 1;
                    let mut part = (&mut body).take(len);
                    match multipart::scatter(pieces, r.start, len, &mut part, out) {
                        Ok(()) => {
                            covered.push((r.start, len));
                            Ok(())
                        }
                        Err(e) => Err(multipart::PartsError::Truncated(describe_io(&e))),
                    }
                }
                _ => Err(multipart::PartsError::Malformed(format!(
                    "unreadable Content-Range {text:?}"
                ))),
            },
            (None, None) => Err(multipart::PartsError::Malformed(format!(
                "206 with neither multipart/byteranges nor Content-Range (Content-Type {content_type:?})"
            ))),
        };
        match result {
            Ok(()) => {
                // Read to the end, so that the connection can be reused.
                let _ = io::copy(&mut body, &mut io::sink());
                Ok((covered, true))
            }
            // What arrived whole is kept; the rest is asked for again.
            Err(multipart::PartsError::Truncated(problem)) if !covered.is_empty() => {
                log::warn!("GET {}: {problem}; asking again for the rest", self.url);
                Ok((covered, false))
            }
            Err(multipart::PartsError::Truncated(problem)) => Err(MultiFailure::Retry {
                problem,
                retry_after: None,
            }),
            Err(multipart::PartsError::Malformed(problem)) => {
                Err(MultiFailure::Unsupported(format!(
                    "the answer to a request for several ranges is not multipart/byteranges: {problem}"
                )))
            }
        }
    }

    /// The URL being fetched.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Make requests until one yields a body positioned at `self.position`,
    /// or the budget runs out, or a failure is fatal.
    fn connect(&mut self) -> Result<(), FetchError> {
        let max_attempts = self.policy.max_attempts();
        let mut last_problem = self.broken.take();
        let mut retry_after = None;
        loop {
            if let Some(problem) = last_problem.take() {
                if self.attempts >= max_attempts {
                    return Err(FetchError::GaveUp {
                        url: self.url.clone(),
                        attempts: self.attempts,
                        last: problem,
                    });
                }
                let wait = self.policy.wait_before(self.attempts, retry_after.take());
                let event = RetryEvent {
                    attempt: self.attempts + 1,
                    max_attempts,
                    position: self.position,
                    wait,
                    problem,
                };
                log::warn!(
                    "GET {}: {}; attempt {} of {} at byte {} in {:.1} s",
                    self.url,
                    event.problem,
                    event.attempt,
                    event.max_attempts,
                    event.position,
                    wait.as_secs_f64()
                );
                if let Some(observer) = self.observer.as_mut() {
                    observer(&event);
                }
                thread::sleep(wait);
            }
            self.attempts += 1;
            match self.attempt() {
                Ok(body) => {
                    self.body = Some(body);
                    return Ok(());
                }
                Err(Failure::Retry {
                    problem,
                    retry_after: server_wait,
                }) => {
                    last_problem = Some(problem);
                    retry_after = server_wait;
                }
                Err(Failure::Fatal(error)) => return Err(error),
            }
        }
    }

    /// A GET of the URL with the `Authorization` header, if any; counted.
    fn get(&mut self) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.requests += 1;
        let request = self.agent.get(&self.url);
        let authorization = self.authorizer.as_ref().and_then(|authorize| {
            (authorize
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner))()
        });
        match authorization {
            Some(value) => request.header(header::AUTHORIZATION, value),
            None => request,
        }
    }

    /// One request for the bytes from `self.position` on.
    fn attempt(&mut self) -> Result<Metered<BodyReader<'static>>, Failure> {
        let position = self.position;
        let mut request = self.get();
        if let Some(end) = self.end {
            request = request.header(header::RANGE, format!("bytes={position}-{}", end - 1));
            if let Some(validator) = self.identity.as_ref().and_then(FileIdentity::if_range) {
                request = request.header(header::IF_RANGE, validator);
            }
        } else if position > 0 {
            request = request.header(header::RANGE, format!("bytes={position}-"));
            if let Some(validator) = self.identity.as_ref().and_then(FileIdentity::if_range) {
                request = request.header(header::IF_RANGE, validator);
            }
        }
        let response = request.call().map_err(|e| self.classify(e))?;
        let status = response.status();
        let code = status.as_u16();
        let context = if position > 0 {
            format!(" (resuming at byte {position})")
        } else {
            String::new()
        };
        if is_retryable_status(code) {
            return Err(Failure::Retry {
                problem: format!("HTTP {}{context}", status_text(status)),
                retry_after: retry_after(response.headers()),
            });
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: self.url.clone(),
                status: code,
                reason: reason(status),
                context,
            }
            .into());
        }
        let headers = response.headers();
        let etag = header_text(headers, header::ETAG);
        let last_modified = header_text(headers, header::LAST_MODIFIED);
        match (code, position) {
            (200, _) => {
                let total = match header_text(headers, header::CONTENT_LENGTH) {
                    Some(text) => Some(text.parse::<u64>().map_err(|_| FetchError::Request {
                        url: self.url.clone(),
                        problem: format!("unreadable Content-Length {text:?}"),
                    })?),
                    None => None,
                };
                self.agree(FileIdentity {
                    total,
                    etag,
                    last_modified,
                })?;
                if self.end.is_some() {
                    if self.ranged || position > 0 {
                        return Err(FetchError::RangeIgnored {
                            url: self.url.clone(),
                            position,
                        }
                        .into());
                    }
                    // The ranged open got the whole file: stream it.
                    self.end = None;
                }
                let mut body =
                    Metered::new(response.into_body().into_reader(), self.policy.min_speed());
                if position > 0 {
                    // The server ignored the Range (or If-Range no longer
                    // matched, but then `agree` failed above): read the new
                    // body up to where the old one stopped and drop that part.
                    skip(&mut body, position).map_err(|problem| Failure::Retry {
                        problem: format!(
                            "server answered the resume with 200 and the new body broke off \
                             while skipping to byte {position}: {problem}"
                        ),
                        retry_after: None,
                    })?;
                }
                Ok(body)
            }
            (206, _) if position > 0 || self.end.is_some() => {
                let text = header_text(headers, header::CONTENT_RANGE).ok_or_else(|| {
                    FetchError::BadResume {
                        url: self.url.clone(),
                        position,
                        detail: "206 without Content-Range".into(),
                    }
                })?;
                let range = ContentRange::parse(&text).ok_or_else(|| FetchError::BadResume {
                    url: self.url.clone(),
                    position,
                    detail: format!("unreadable Content-Range {text:?}"),
                })?;
                self.agree(FileIdentity {
                    total: range.total,
                    etag,
                    last_modified,
                })?;
                if range.start != position {
                    return Err(FetchError::BadResume {
                        url: self.url.clone(),
                        position,
                        detail: format!("the server sent {text:?}"),
                    }
                    .into());
                }
                if self.end.is_some() {
                    self.ranged = true;
                }
                Ok(Metered::new(
                    response.into_body().into_reader(),
                    self.policy.min_speed(),
                ))
            }
            _ => Err(FetchError::UnexpectedStatus {
                url: self.url.clone(),
                status: code,
                reason: reason(status),
                context,
            }
            .into()),
        }
    }

    /// Record the file's identity from the first good response; check every
    /// later one against it, learning a size that was not known before.
    fn agree(&mut self, seen: FileIdentity) -> Result<(), FetchError> {
        match &mut self.identity {
            None => {
                self.identity = Some(seen);
                Ok(())
            }
            Some(known) => {
                if let Some(detail) = known.difference(&seen) {
                    return Err(FetchError::Changed {
                        url: self.url.clone(),
                        detail,
                    });
                }
                if known.total.is_none() {
                    known.total = seen.total;
                }
                Ok(())
            }
        }
    }

    fn classify(&self, error: ureq::Error) -> Failure {
        let retry = |problem: String| Failure::Retry {
            problem,
            retry_after: None,
        };
        match error {
            // TLS refusals (certificate, handshake) come as InvalidData:
            // retrying will not change them.
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
                Failure::Fatal(FetchError::Request {
                    url: self.url.clone(),
                    problem: e.to_string(),
                })
            }
            ureq::Error::Io(e) => retry(describe_io(&e)),
            ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => retry(error.to_string()),
            ureq::Error::HostNotFound => retry("host not found".into()),
            ureq::Error::BadUri(reason) => Failure::Fatal(FetchError::BadUrl {
                url: self.url.clone(),
                reason,
            }),
            // Only set for https URLs: a redirect pointed to plain http.
            ureq::Error::RequireHttpsOnly(to) => Failure::Fatal(FetchError::InsecureRedirect {
                url: self.url.clone(),
                to,
            }),
            ureq::Error::Protocol(problem) => Failure::Fatal(FetchError::Malformed {
                url: self.url.clone(),
                at: String::new(),
                problem: problem.to_string(),
            }),
            other => Failure::Fatal(FetchError::Request {
                url: self.url.clone(),
                problem: other.to_string(),
            }),
        }
    }

    fn fail(&mut self, error: FetchError) -> io::Error {
        self.body = None;
        self.failure = Some(error.clone());
        error.into_io()
    }
}

impl Read for HttpSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(error) = &self.failure {
                return Err(error.clone().into_io());
            }
            let end = self.end.or(self.content_length());
            let remaining = end.map(|end| end.saturating_sub(self.position));
            if remaining == Some(0) {
                if let Some(mut body) = self.body.take() {
                    // Let the client see the end of the body, so that the
                    // connection goes back to its pool for the next range.
                    let _ = body.read(&mut [0u8; 1]);
                }
                return Ok(0);
            }
            let Some(body) = self.body.as_mut() else {
                if let Err(error) = self.connect() {
                    return Err(self.fail(error));
                }
                continue;
            };
            // Never take more than the file holds, whatever the server sends.
            let limit = remaining.map_or(buf.len(), |left| left.min(buf.len() as u64) as usize);
            match body.read(&mut buf[..limit]) {
                Ok(0) => match end {
                    // No length known: a clean end of the body is the end.
                    None => return Ok(0),
                    Some(total) => {
                        self.body = None;
                        self.broken = Some(format!(
                            "the body ended at byte {} of {total}",
                            self.position
                        ));
                    }
                },
                Ok(n) => {
                    self.position += n as u64;
                    self.received += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if let Some(problem) = protocol_error(&e) {
                        let error = FetchError::Malformed {
                            url: self.url.clone(),
                            at: format!(" body at byte {}", self.position),
                            problem,
                        };
                        return Err(self.fail(error));
                    }
                    self.body = None;
                    self.broken = Some(match Stalled::from_io(&e) {
                        Some(stalled) => {
                            format!("download stalled at byte {}: {stalled}", self.position)
                        }
                        None => format!(
                            "the body broke off at byte {}: {}",
                            self.position,
                            describe_io(&e)
                        ),
                    });
                }
            }
        }
    }
}

/// Something that reads byte ranges of one file: an [`HttpSource`] opened
/// with [`Opener::open_ranged`] (a URL: a bundle on a web server, an OCI
/// blob), or a local file. Delta installs fetch the blocks they miss
/// through it.
pub trait ByteRanges: Send {
    /// Fills `buf` with the bytes at `offset`; a file too short is an
    /// `UnexpectedEof` error.
    fn read_range(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Fills `out` with the bytes of `ranges` (offset, length; sorted and
    /// disjoint), one after the other; an HTTP source asks for several in
    /// one request.
    fn read_ranges(&mut self, ranges: &[(u64, u64)], out: &mut [u8]) -> io::Result<()> {
        let mut at = 0usize;
        for &(offset, len) in ranges {
            let len = usize::try_from(len).map_err(io::Error::other)?;
            let to = out
                .get_mut(at..at + len)
                .ok_or_else(|| io::Error::other("the buffer is shorter than the ranges"))?;
            self.read_range(offset, to)?;
            at += len;
        }
        Ok(())
    }
    /// Bytes read so far through this source.
    fn bytes_read(&self) -> u64;
    /// Requests made so far (0 for a source that makes none).
    fn requests(&self) -> u64 {
        0
    }
    /// Size of the whole file, when known.
    fn total_len(&self) -> Option<u64>;
    /// Another reader of the same file on a connection (or handle) of its
    /// own, for fetching ranges in parallel; `None` if it cannot be had.
    fn fork(&self) -> Option<Box<dyn ByteRanges>> {
        None
    }
}

impl ByteRanges for HttpSource {
    fn read_range(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.set_range(offset, buf.len() as u64);
        self.read_exact(buf)
    }
    fn read_ranges(&mut self, ranges: &[(u64, u64)], out: &mut [u8]) -> io::Result<()> {
        HttpSource::read_ranges(self, ranges, out)
    }
    fn bytes_read(&self) -> u64 {
        self.received
    }
    fn requests(&self) -> u64 {
        self.requests
    }
    fn total_len(&self) -> Option<u64> {
        self.content_length()
    }
    fn fork(&self) -> Option<Box<dyn ByteRanges>> {
        if !self.ranged {
            return None;
        }
        Some(Box::new(HttpSource {
            url: self.url.clone(),
            agent: self.agent.clone(),
            policy: self.policy.clone(),
            body: None,
            position: 0,
            identity: self.identity.clone(),
            attempts: 0,
            broken: None,
            failure: None,
            observer: None,
            authorizer: self.authorizer.clone(),
            end: Some(0),
            ranged: true,
            received: 0,
            multi: self.multi,
            max_parts: self.max_parts,
            requests: 0,
        }))
    }
}

/// A local file read by ranges, counting what it read.
#[derive(Debug)]
pub struct FileRanges {
    pub file: std::fs::File,
    pub read: u64,
}

impl ByteRanges for FileRanges {
    fn read_range(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)?;
        self.read += buf.len() as u64;
        Ok(())
    }
    fn bytes_read(&self) -> u64 {
        self.read
    }
    fn total_len(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.len())
    }
    fn fork(&self) -> Option<Box<dyn ByteRanges>> {
        Some(Box::new(FileRanges {
            file: self.file.try_clone().ok()?,
            read: 0,
        }))
    }
}

/// Refuse anything but `http://host...` and `https://host...` before any request.
fn check_url(url: &str) -> Result<(), FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: ureq::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => return Err(bad(&format!("scheme {other:?} is not http or https"))),
        None => return Err(bad("no scheme")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(())
}

/// Read and drop `count` bytes; a short body or a read error is the problem text.
fn skip(body: &mut impl Read, count: u64) -> Result<(), String> {
    let skipped = io::copy(&mut body.take(count), &mut io::sink()).map_err(|e| describe_io(&e))?;
    if skipped < count {
        return Err(format!("the body ended at byte {skipped}"));
    }
    Ok(())
}

/// `bytes <start>-<end>/<total or *>` (RFC 9110 14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end: u64,
    total: Option<u64>,
}

impl ContentRange {
    fn parse(text: &str) -> Option<ContentRange> {
        let rest = text.trim().strip_prefix("bytes ")?.trim_start();
        let (range, total) = rest.split_once('/')?;
        let (start, end) = range.split_once('-')?;
        let start: u64 = start.trim().parse().ok()?;
        let end: u64 = end.trim().parse().ok()?;
        let total = match total.trim() {
            "*" => None,
            digits => Some(digits.parse::<u64>().ok()?),
        };
        if end < start || total.is_some_and(|t| end >= t) {
            return None;
        }
        Some(ContentRange { start, end, total })
    }
}

/// `Retry-After: <seconds>`; the HTTP-date form is ignored (the backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = header_text(headers, header::RETRY_AFTER)?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    Some(value.trim().to_owned())
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("").to_owned()
}

/// `404 Not Found`, or just `599` for codes without a reason phrase.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// The HTTP framing problem behind a body read error (bad chunk size,
/// missing CRLF ...), if that is what it is: such an answer is broken, not
/// cut off, and a new connection would get the same.
fn protocol_error(error: &io::Error) -> Option<String> {
    match error.get_ref()?.downcast_ref::<ureq::Error>()? {
        ureq::Error::Protocol(problem) => Some(problem.to_string()),
        ureq::Error::Io(inner) => protocol_error(inner),
        _ => None,
    }
}

/// Short words for the usual network failures, the error's own text otherwise.
fn describe_io(error: &io::Error) -> String {
    if let Some(stalled) = Stalled::from_io(error) {
        return format!("download stalled: {stalled}");
    }
    if let Some(inner) = error.get_ref()
        && let Some(ureq_error) = inner.downcast_ref::<ureq::Error>()
    {
        return match ureq_error {
            ureq::Error::Io(e) => describe_io(e),
            other => other.to_string(),
        };
    }
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        io::ErrorKind::UnexpectedEof => "connection closed early".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses_are_exactly_the_listed_ones() {
        let retryable: Vec<u16> = (100..=999).filter(|&s| is_retryable_status(s)).collect();
        let mut expected = vec![408, 425, 429, 500, 502, 503, 504];
        expected.extend(520..=599);
        assert_eq!(retryable, expected);
    }

    #[test]
    fn content_range_parses_and_refuses_nonsense() {
        assert_eq!(
            ContentRange::parse("bytes 100-999/1000"),
            Some(ContentRange {
                start: 100,
                end: 999,
                total: Some(1000)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 5-9/*"),
            Some(ContentRange {
                start: 5,
                end: 9,
                total: None
            })
        );
        for bad in [
            "",
            "bytes */1000",
            "bytes 9-5/1000",
            "bytes 0-1000/1000",
            "items 0-1/2",
            "bytes a-b/c",
            "bytes 1-2",
            "bytes -1-2/3",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn if_range_prefers_a_strong_etag_and_skips_weak_ones() {
        let strong = FileIdentity {
            total: Some(1),
            etag: Some("\"abc\"".into()),
            last_modified: Some("Thu, 26 Nov 2026 04:00:00 GMT".into()),
        };
        assert_eq!(strong.if_range(), Some("\"abc\""));
        let weak = FileIdentity {
            etag: Some("W/\"abc\"".into()),
            ..strong.clone()
        };
        assert_eq!(weak.if_range(), Some("Thu, 26 Nov 2026 04:00:00 GMT"));
        assert_eq!(FileIdentity::default().if_range(), None);
    }

    #[test]
    fn identity_difference_names_what_changed_and_ignores_unknowns() {
        let before = FileIdentity {
            total: Some(10),
            etag: Some("\"a\"".into()),
            last_modified: None,
        };
        let bigger = FileIdentity {
            total: Some(20),
            ..before.clone()
        };
        assert_eq!(
            before.difference(&bigger).as_deref(),
            Some("size was 10 bytes, now 20")
        );
        let retagged = FileIdentity {
            etag: Some("\"b\"".into()),
            ..before.clone()
        };
        assert_eq!(
            before.difference(&retagged).as_deref(),
            Some("ETag was \"a\", now \"b\"")
        );
        assert_eq!(before.difference(&FileIdentity::default()), None);
    }

    #[test]
    fn urls_other_than_http_and_https_are_refused_before_any_request() {
        for (url, words) in [
            ("ftp://example.com/x.abb", "scheme \"ftp\""),
            ("/tmp/x.abb", "no scheme"),
            ("http://", ""),
            ("not a url", ""),
        ] {
            let error = HttpSource::open(url, &RetryPolicy::default()).unwrap_err();
            let text = error.to_string();
            assert!(matches!(error, FetchError::BadUrl { .. }), "{url}: {text}");
            assert!(
                text.starts_with(&format!("GET {url}: not an http(s) URL")),
                "{text}"
            );
            assert!(text.contains(words), "{text}");
        }
    }
}
