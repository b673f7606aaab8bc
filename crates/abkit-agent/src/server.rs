//! The API's listeners: a Unix socket (mode 0600; only root, or the
//! agent's own user, is answered) and, when configured, TCP with TLS where
//! the handshake itself refuses every client without a certificate signed
//! by the operator CA (rustls' `WebPkiClientVerifier`). A thread per
//! connection (at most [`MAX_CONNECTIONS`] at once per listener, so TCP
//! peers can never crowd out the local socket); listeners block in
//! `accept`. A client has [`REQUEST_DEADLINE`] in all for its TLS handshake
//! and request, however it spreads its bytes.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::client::peer_cred;
use crate::config::TlsSettings;
use crate::error::{AgentError, Result};
use crate::http::{self, Response};
use crate::{Agent, api};

/// Connections served at once by each listener; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take, in all, to send its request (and, over TCP,
/// to finish its TLS handshake first).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long one write of the response may wait for the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections open on the Unix socket and on TCP, counted apart.
static UNIX_OPEN: AtomicUsize = AtomicUsize::new(0);
static TLS_OPEN: AtomicUsize = AtomicUsize::new(0);

/// One of a listener's [`MAX_CONNECTIONS`], given back on drop.
struct Slot(&'static AtomicUsize);

impl Slot {
    fn take(open: &'static AtomicUsize) -> Option<Slot> {
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(open))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A socket whose reads must all be done by one instant. A timeout per
/// read alone would let a client that sends a byte every few seconds hold
/// its connection, and one of the listener's slots, for ever.
struct Deadline<S> {
    inner: S,
    until: Instant,
}

/// The sockets a [`Deadline`] works on.
trait ReadTimeout {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl ReadTimeout for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl ReadTimeout for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
}

impl<S> Deadline<S> {
    fn new(inner: S) -> Self {
        Deadline {
            inner,
            until: Instant::now() + REQUEST_DEADLINE,
        }
    }
}

impl<S: Read + ReadTimeout> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took more than {} s to send its request",
                    REQUEST_DEADLINE.as_secs()
                ),
            ));
        }
        self.inner.set_read_timeout(Some(left))?;
        self.inner.read(buf)
    }
}

impl<S: Write> Write for Deadline<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Binds the Unix socket at `path` with mode 0600. A socket nobody answers
/// on (left by a killed agent) is replaced; one that answers means another
/// agent runs.
pub fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Some(running) = crate::client::running_agent(path) {
        return Err(AgentError::Running {
            socket: path.to_path_buf(),
            pid: running,
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(AgentError::io(format!("create {}", dir.display())))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("removed the stale socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::io(format!("remove {}", path.display()))(e)),
    }
    // The socket is created with the umask's mode: none for group and others
    // from the first instant (startup runs on one thread).
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.map_err(AgentError::io(format!("bind {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(AgentError::io(format!("chmod {}", path.display())))?;
    Ok(listener)
}

/// Serves the Unix socket until the process ends.
pub fn serve_unix(agent: Arc<Agent>, listener: UnixListener) {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let Some(slot) = Slot::take(&UNIX_OPEN) else {
            continue;
        };
        let agent = agent.clone();
        std::thread::spawn(move || {
            let _slot = slot;
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let uid = peer_cred(&stream).map(|c| c.uid);
            let mut stream = Deadline::new(stream);
            if uid != Some(0) && uid != Some(me) {
                let _ = http::write_response(
                    &mut stream,
                    &Response::error(403, "forbidden", "only root may use the agent's socket"),
                );
                return;
            }
            serve_one(&agent, &mut stream, "unix");
        });
    }
}

fn serve_one<S: std::io::Read + Write>(agent: &Arc<Agent>, stream: &mut S, peer: &str) {
    let resp = match http::read_request(stream) {
        Ok(req) => {
            let resp = api::handle(agent, &req);
            log::info!("{peer}: {} {} -> {}", req.method, req.path, resp.status);
            resp
        }
        Err(Some(resp)) => resp,
        Err(None) => return,
    };
    let _ = http::write_response(stream, &resp);
}

/// The TLS server configuration: our certificate chain and key, and a
/// client verifier that demands a certificate from `client_ca`.
pub fn tls_config(t: &TlsSettings) -> Result<Arc<ServerConfig>> {
    let bad = |what: &Path, e: &dyn std::fmt::Display| {
        AgentError::Tls(format!("{}: {e}", what.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| bad(&t.cert, &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&t.cert, &e))?;
    if certs.is_empty() {
        return Err(bad(&t.cert, &"no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| bad(&t.key, &e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&t.client_ca).map_err(|e| bad(&t.client_ca, &e))? {
        roots
            .add(ca.map_err(|e| bad(&t.client_ca, &e))?)
            .map_err(|e| bad(&t.client_ca, &e))?;
    }
    if roots.is_empty() {
        return Err(bad(&t.client_ca, &"no CA certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(&t.client_ca, &e))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad(&t.cert, &e))?;
    Ok(Arc::new(config))
}

/// Binds the TCP address.
pub fn bind_tcp(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(AgentError::io(format!("listen on {addr}")))
}

/// Serves TLS connections until the process ends.
pub fn serve_tls(agent: Arc<Agent>, listener: TcpListener, config: Arc<ServerConfig>) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let Some(slot) = Slot::take(&TLS_OPEN) else {
            continue;
        };
        let agent = agent.clone();
        let config = config.clone();
        std::thread::spawn(move || {
            let _slot = slot;
            let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            if let Err(e) = serve_tls_one(&agent, tcp, config, &peer) {
                log::warn!("tls {peer}: {e}");
            }
        });
    }
}

fn serve_tls_one(
    agent: &Arc<Agent>,
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    peer: &str,
) -> std::io::Result<()> {
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let conn = ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, Deadline::new(tcp));
    // The whole handshake, client certificate included, before any byte of
    // HTTP is read: a client the CA did not sign never reaches the API.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    serve_one(agent, &mut tls, peer);
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    Ok(())
}
