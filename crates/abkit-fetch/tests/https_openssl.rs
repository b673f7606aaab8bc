//! HTTPS through rustls against `openssl s_server -WWW` with a CA made for the
//! test: trusted only when that CA is given as the roots, and a certificate
//! refusal is not retried; `openssl s_server -HTTP` serving a canned redirect
//! to plain http, which is refused.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use abkit_fetch::testing::make_certificates;
use abkit_fetch::{FetchError, HttpSource, Opener, RetryPolicy, TrustRoots};

struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    /// `mode`: `-WWW` serves files, `-HTTP` sends a file as the whole
    /// response (status line and headers included).
    fn start(dir: &Path, mode: &str) -> TlsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                mode,
                "-cert",
                "server.crt",
                "-key",
                "server.key",
            ])
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let server = TlsServer { child, port };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            thread::sleep(Duration::from_millis(25));
        }
        panic!("openssl s_server did not listen on {port}");
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_with_a_private_ca_streams_byte_exact_and_an_untrusted_one_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let bytes: Vec<u8> = (0..2 * 1024 * 1024 + 3u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    std::fs::write(dir.path().join("update.abb"), &bytes).unwrap();
    let server = TlsServer::start(dir.path(), "-WWW");
    let url = format!("https://127.0.0.1:{}/update.abb", server.port);
    let policy = RetryPolicy {
        attempts: 3,
        initial_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    };

    // The built-in roots do not know the test CA: refused on the first attempt.
    let error = HttpSource::open(&url, &policy).unwrap_err();
    assert!(matches!(error, FetchError::Request { .. }), "{error}");
    let text = error.to_string();
    assert!(text.starts_with(&format!("GET {url}: ")), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");

    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let mut source = Opener::new(&policy)
        .trust(TrustRoots::Pem(ca))
        .open(&url)
        .unwrap();
    let mut got = Vec::new();
    source.read_to_end(&mut got).unwrap();
    assert!(got == bytes, "bytes differ from the served file");
    assert_eq!(source.attempts(), 1);
}

#[test]
fn unusable_trust_roots_are_refused_before_any_request() {
    let url = "https://127.0.0.1:9/x.abb";
    for (pem, words) in [
        (&b""[..], "no certificate in the PEM data"),
        (
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "unreadable PEM",
        ),
    ] {
        let error = Opener::new(&RetryPolicy::default())
            .trust(TrustRoots::Pem(pem.to_vec()))
            .open(url)
            .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, FetchError::Trust { .. }), "{text}");
        assert!(
            text.starts_with(&format!("GET {url}: HTTPS trust roots: ")),
            "{text}"
        );
        assert!(text.contains(words), "{text}");
    }
}

#[test]
fn a_redirect_from_https_to_plain_http_is_refused_naming_both_urls() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    // Where the redirect points: a listener that must never see a connection.
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    plain.set_nonblocking(true).unwrap();
    let to = format!(
        "http://127.0.0.1:{}/update.abb",
        plain.local_addr().unwrap().port()
    );
    std::fs::write(
        dir.path().join("moved"),
        format!("HTTP/1.0 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"),
    )
    .unwrap();
    let server = TlsServer::start(dir.path(), "-HTTP");
    let url = format!("https://127.0.0.1:{}/moved", server.port);
    let policy = RetryPolicy {
        attempts: 3,
        initial_delay: Duration::from_millis(10),
        read_timeout: Duration::from_secs(1),
        ..RetryPolicy::default()
    };
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let error = Opener::new(&policy)
        .trust(TrustRoots::Pem(ca))
        .open(&url)
        .unwrap_err();
    assert_eq!(
        error,
        FetchError::InsecureRedirect {
            url: url.clone(),
            to: to.clone()
        },
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!("GET {url}: refused a redirect from https to plain http: {to}")
    );
    // Refused before connecting, and not retried.
    let pending = plain.accept().map(|_| ()).map_err(|e| e.kind());
    assert_eq!(pending, Err(std::io::ErrorKind::WouldBlock));
}
