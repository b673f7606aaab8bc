//! [`Registry`]: the HTTP side of one repository on one registry. Every API
//! request goes through [`Registry::call`], which adds the authorization
//! (answering a 401 challenge once), retries small requests on connection
//! errors and busy servers with the fetch policy's backoff, and turns the
//! registry's error answers into [`OciError`]s.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use abkit_fetch::{RetryPolicy, TrustRoots, is_retryable_status};
use ureq::http::{Method, Request, Response, header};
use ureq::{Agent, Body, SendBody};

use crate::auth::{Auth, Credentials, credentials_from_file, default_auth_files};
use crate::{OciError, Reference};

/// How to reach a registry, beyond the reference itself.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Talk plain http instead of https (`--insecure-registry`): for a
    /// registry on a trusted network or in tests. Credentials then travel
    /// unencrypted; the bundle's signature still decides what installs.
    pub insecure: bool,
    /// Credentials given explicitly; they win over any file.
    pub credentials: Option<Credentials>,
    /// A docker-style config.json to take credentials from instead of the
    /// default files ([`default_auth_files`]); it must exist.
    pub auth_file: Option<std::path::PathBuf>,
    /// Timeouts and the retry budget (the blob download uses all of it,
    /// with resume; API requests retry within the same budget).
    pub policy: RetryPolicy,
    /// The certificate authorities the registry's https must chain to
    /// (`--registry-ca`; default: the built-in Mozilla roots). Also for the
    /// blob download and the token service.
    pub roots: TrustRoots,
}

impl RegistryOptions {
    /// The credentials for `registry`: explicit ones, else from the named
    /// file, else from the first default file that has an entry for it.
    pub fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, OciError> {
        if let Some(credentials) = &self.credentials {
            return Ok(Some(credentials.clone()));
        }
        if let Some(file) = &self.auth_file {
            return credentials_from_file(file, registry);
        }
        for file in default_auth_files() {
            if file.is_file()
                && let Some(credentials) = credentials_from_file(&file, registry)?
            {
                log::info!(
                    "registry credentials for {registry} from {}",
                    file.display()
                );
                return Ok(Some(credentials));
            }
        }
        Ok(None)
    }
}

/// A request's body.
#[derive(Clone, Copy)]
pub(crate) enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
}

/// A request's body as sent.
enum Sent<'a> {
    Empty,
    Bytes(&'a [u8]),
    Stream(&'a mut dyn std::io::Read),
}

/// One repository on one registry, with its authentication state.
pub struct Registry {
    pub(crate) agent: Agent,
    /// `https://HOST[:PORT]` (or http with `insecure`).
    base: String,
    pub(crate) reference: Reference,
    pub(crate) auth: Arc<Mutex<Auth>>,
    pub(crate) policy: RetryPolicy,
}

impl Registry {
    /// A client for `reference`'s repository; `push` asks for push rights
    /// in bearer tokens. Makes no request yet.
    pub fn new(
        reference: &Reference,
        options: &RegistryOptions,
        push: bool,
    ) -> Result<Registry, OciError> {
        let scheme = if options.insecure { "http" } else { "https" };
        let credentials = options.credentials_for(&reference.registry)?;
        if options.insecure && credentials.is_some() {
            log::warn!(
                "{}: credentials go over plain http (--insecure-registry)",
                reference.registry
            );
        }
        let policy = &options.policy;
        let base = format!("{scheme}://{}", reference.registry);
        let tls = options.roots.tls_config(&base)?;
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .https_only(!options.insecure)
            .timeout_connect(Some(policy.connect_timeout))
            .timeout_per_read(Some(policy.read_timeout))
            .timeout_per_write(Some(policy.read_timeout))
            .timeout_recv_response(Some(policy.read_timeout))
            .user_agent(concat!("abkit/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        let scope = format!(
            "repository:{}:{}",
            reference.repository,
            if push { "pull,push" } else { "pull" }
        );
        Ok(Registry {
            agent,
            base,
            reference: reference.clone(),
            auth: Arc::new(Mutex::new(Auth::new(
                &reference.registry,
                credentials,
                scope,
                options.insecure,
            ))),
            policy: policy.clone(),
        })
    }

    /// `BASE/v2/REPO/<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.reference.repository)
    }

    /// A `Location` from the registry as an absolute URL.
    pub(crate) fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    /// Whether `url` is on the registry itself (only there do credentials
    /// and tokens go).
    fn same_origin(&self, url: &str) -> bool {
        url.strip_prefix(&self.base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    }

    pub(crate) fn auth_header(&self) -> Result<Option<String>, OciError> {
        self.auth
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .header(&self.agent)
    }

    /// Sends one request with the current authorization.
    fn send_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, String)],
        body: Sent<'_>,
    ) -> Result<Response<Body>, OciError> {
        let mut request = Request::builder().method(method.clone()).uri(url);
        if self.same_origin(url)
            && let Some(value) = self.auth_header()?
        {
            request = request.header(header::AUTHORIZATION, value);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let bad = |e: ureq::http::Error| OciError::Protocol {
            method: method_name(method),
            url: url.to_owned(),
            problem: format!("cannot build the request: {e}"),
        };
        let sent = match body {
            Sent::Empty => self.agent.run(request.body(()).map_err(bad)?),
            Sent::Bytes(bytes) => self.agent.run(request.body(bytes).map_err(bad)?),
            Sent::Stream(reader) => self
                .agent
                .run(request.body(SendBody::from_reader(reader)).map_err(bad)?),
        };
        sent.map_err(|e| {
            let method = method_name(method);
            let url = url.to_owned();
            match e {
                // A certificate or handshake refusal: retrying will not
                // change it (abkit-fetch classifies it the same way).
                ureq::Error::Tls(_) | ureq::Error::Rustls(_) => OciError::Tls {
                    method,
                    url,
                    problem: e.to_string(),
                },
                ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    OciError::Tls {
                        method,
                        url,
                        problem: e.to_string(),
                    }
                }
                ureq::Error::RequireHttpsOnly(to) => OciError::Tls {
                    method,
                    url,
                    problem: format!("refused to follow a redirect to plain http: {to}"),
                },
                other => OciError::Connection {
                    method,
                    url,
                    problem: other.to_string(),
                },
            }
        })
    }

    /// Sends a request with a small body: answers one 401 challenge, and
    /// retries connection errors and busy answers (408, 429, 5xx) within
    /// the policy's attempt budget. Any final answer is returned as is.
    pub(crate) fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        payload: Payload<'_>,
    ) -> Result<Response<Body>, OciError> {
        let max = self.policy.max_attempts();
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            attempt += 1;
            let body = match payload {
                Payload::Empty => Sent::Empty,
                Payload::Bytes(bytes) => Sent::Bytes(bytes),
            };
            let problem = match self.send_once(&method, url, headers, body) {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status == 401 && !challenged && self.same_origin(url) {
                        challenged = true;
                        let value = header_text(&response, header::WWW_AUTHENTICATE);
                        let retry = self
                            .auth
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .challenge(value.as_deref(), &self.agent)?;
                        if retry {
                            attempt -= 1;
                            continue;
                        }
                        return Ok(response);
                    }
                    if !is_retryable_status(status) || attempt >= max {
                        return Ok(response);
                    }
                    format!("HTTP {status}")
                }
                Err(e @ OciError::Connection { .. }) if attempt < max => e.to_string(),
                Err(e) => return Err(e),
            };
            let wait = self.policy.backoff(attempt);
            log::warn!(
                "{} {url}: {problem}; attempt {} of {max} in {:.1} s",
                method_name(&method),
                attempt + 1,
                wait.as_secs_f64()
            );
            thread::sleep(wait);
        }
    }

    /// [`Registry::call`] for one `expected` status: any other final answer
    /// is its [`Registry::failure`] (`what` is what a 404 says is missing).
    pub(crate) fn call_expecting(
        &self,
        expected: u16,
        what: &'static str,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        payload: Payload<'_>,
    ) -> Result<Response<Body>, OciError> {
        let response = self.call(method.clone(), url, headers, payload)?;
        if response.status().as_u16() != expected {
            return Err(self.failure(method, url, response, what));
        }
        Ok(response)
    }

    /// Sends a request whose body streams from `body` (`length` bytes),
    /// once: a large upload is not repeated on failure (a rerun skips blobs
    /// the registry already has). Authorization must already be settled by
    /// an earlier [`Registry::call`].
    pub(crate) fn send_stream(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: &mut dyn std::io::Read,
        length: u64,
    ) -> Result<Response<Body>, OciError> {
        let mut headers = headers.to_vec();
        headers.push(("Content-Length", length.to_string()));
        self.send_once(&method, url, &headers, Sent::Stream(body))
    }

    /// The error for a final answer that is not what the operation wanted:
    /// 404 is [`OciError::NotFound`] (of `what`), 401 and 403 are refusals,
    /// anything else names the status and the registry's error codes.
    pub(crate) fn failure(
        &self,
        method: Method,
        url: &str,
        response: Response<Body>,
        what: &'static str,
    ) -> OciError {
        let status = response.status().as_u16();
        let detail = error_detail(response);
        match status {
            404 => OciError::NotFound {
                reference: self.reference.to_string(),
                what,
                detail,
            },
            401 => {
                let auth = self.auth.lock().unwrap_or_else(PoisonError::into_inner);
                if auth.has_credentials() {
                    OciError::Unauthorized {
                        registry: auth.registry.clone(),
                        detail: format!(": the credentials were refused (HTTP 401{detail})"),
                    }
                } else {
                    OciError::AuthRequired {
                        registry: auth.registry.clone(),
                        scheme: "bearer",
                    }
                }
            }
            403 => OciError::Unauthorized {
                registry: self.reference.registry.clone(),
                detail: format!(": HTTP 403 Forbidden{detail}"),
            },
            _ => OciError::Registry {
                method: method_name(&method),
                url: url.to_owned(),
                status,
                detail,
            },
        }
    }
}

/// The spec's header with the digest of what a response carries or stored.
pub(crate) const CONTENT_DIGEST: header::HeaderName =
    header::HeaderName::from_static("docker-content-digest");
/// The spec's header with a registry's smallest upload chunk.
pub(crate) const CHUNK_MIN_LENGTH: header::HeaderName =
    header::HeaderName::from_static("oci-chunk-min-length");

pub(crate) fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "request",
    }
}

pub(crate) fn header_text(response: &Response<Body>, name: header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `: CODE message, CODE message` from the spec's error body
/// `{"errors": [{"code", "message"}]}`, or empty.
fn error_detail(response: Response<Body>) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: String,
        #[serde(default)]
        message: String,
    }
    let body = response
        .into_body()
        .with_config()
        .limit(64 * 1024)
        .read_to_vec()
        .unwrap_or_default();
    match serde_json::from_slice::<Errors>(&body) {
        Ok(errors) if !errors.errors.is_empty() => {
            let parts: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.message).trim().to_owned())
                .collect();
            format!(": {}", parts.join(", "))
        }
        _ => String::new(),
    }
}
