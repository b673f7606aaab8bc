//! Interop with a common real server: `python3 -m http.server` serving a file
//! (it ignores Range, so this is the happy path and a 404).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use abkit_fetch::{HttpSource, RetryPolicy};

/// The real interpreter behind `python3` (which may be a wrapper script such
/// as a pyenv shim), so that killing the child kills the server.
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 must be installed");
    assert!(out.status.success(), "python3 -c failed");
    String::from_utf8(out.stdout)
        .expect("utf-8 path")
        .trim()
        .to_owned()
}

/// The python server, killed and reaped when dropped.
struct PythonServer {
    child: Child,
    port: u16,
}

impl PythonServer {
    fn start(dir: &std::path::Path) -> PythonServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 must be installed");
        let server = PythonServer { child, port };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            thread::sleep(Duration::from_millis(25));
        }
        panic!("python3 -m http.server did not start listening on {port}");
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn python_http_server_serves_a_bundle_byte_exact_and_a_404() {
    let dir = tempfile::tempdir().unwrap();
    // 3 MiB + 5 of varied bytes.
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 5u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("update.abb"), &bytes).unwrap();
    let server = PythonServer::start(dir.path());
    let policy = RetryPolicy {
        initial_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    };

    let mut source = HttpSource::open(&server.url("update.abb"), &policy).unwrap();
    assert_eq!(source.content_length(), Some(bytes.len() as u64));
    let mut got = Vec::new();
    source.read_to_end(&mut got).unwrap();
    assert!(got == bytes, "bytes differ from the served file");
    assert_eq!(source.attempts(), 1);

    let url = server.url("missing.abb");
    let error = HttpSource::open(&url, &policy).unwrap_err();
    assert_eq!(error.to_string(), format!("GET {url}: HTTP 404 Not Found"));
}
