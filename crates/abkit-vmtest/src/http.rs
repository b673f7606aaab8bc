//! A tiny HTTP/1.1 file server on the host's loopback for the download
//! test: GET of a file in one folder, whole file, `Connection: close`.
//! QEMU's user networking makes it reachable from the guest as 10.0.2.2.
//! It counts the bytes it served so the test can check the guest fetched
//! the whole bundle.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A running server; it stops with the process.
pub struct FileServer {
    pub port: u16,
    served: Arc<AtomicU64>,
}

impl FileServer {
    /// Serves `dir` on 127.0.0.1 at a free port.
    pub fn start(dir: &Path) -> std::io::Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let dir = dir.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &dir, &counter);
                });
            }
        });
        Ok(FileServer { port, served })
    }

    /// Body bytes sent so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// The URL of `name` as the guest sees it.
    pub fn guest_url(&self, name: &str) -> String {
        format!("http://10.0.2.2:{}/{name}", self.port)
    }
}

fn serve(stream: TcpStream, dir: &Path, served: &AtomicU64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut out = stream;
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let name = target.trim_start_matches('/');
    let path: Option<PathBuf> = (!name.is_empty()
        && !name.contains('/')
        && !name.contains("..")
        && (method == "GET" || method == "HEAD"))
        .then(|| dir.join(name));
    let Some(file) = path.and_then(|p| std::fs::File::open(p).ok()) else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    let len = file.metadata()?.len();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if method == "GET" {
        let mut file = file;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            served.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(port: u16, target: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.abb"), b"bundle!").unwrap();
        let server = FileServer::start(dir.path()).unwrap();
        let ok = get(server.port, "/b.abb");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 7\r\n"));
        assert!(ok.ends_with("\r\n\r\nbundle!"));
        assert_eq!(server.served(), 7);
        assert!(get(server.port, "/missing").starts_with("HTTP/1.1 404"));
        assert!(get(server.port, "/../etc/passwd").starts_with("HTTP/1.1 404"));
        assert_eq!(
            server.guest_url("b.abb"),
            format!("http://10.0.2.2:{}/b.abb", server.port)
        );
    }
}
