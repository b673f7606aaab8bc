//! A tiny HTTP/1.1 file server on the host's loopback for the download
//! tests: GET of a file in one folder. [`FileServer::start`] sends the
//! whole file whatever the request (`Connection: close`: a server without
//! Range support); [`FileServer::start_with_ranges`] honours
//! `Range: bytes=A-B` (206) and keeps connections alive, as a delta install
//! needs. QEMU's user networking makes it reachable from the guest as
//! 10.0.2.2. It counts the body bytes it served so a test can check what
//! the guest fetched.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
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
    /// Serves `dir` on 127.0.0.1 at a free port, whole files only.
    pub fn start(dir: &Path) -> std::io::Result<FileServer> {
        FileServer::spawn(dir, false)
    }

    /// Serves `dir` honouring byte ranges, with keep-alive.
    pub fn start_with_ranges(dir: &Path) -> std::io::Result<FileServer> {
        FileServer::spawn(dir, true)
    }

    fn spawn(dir: &Path, ranges: bool) -> std::io::Result<FileServer> {
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
                    let _ = serve(stream, &dir, &counter, ranges);
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

/// `bytes=A-B` or `bytes=A-` against a file of `len` bytes.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = match b.trim() {
        "" => len.checked_sub(1)?,
        b => b.parse::<u64>().ok()?.min(len.checked_sub(1)?),
    };
    (start <= end).then_some((start, end))
}

fn serve(stream: TcpStream, dir: &Path, served: &AtomicU64, ranges: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.trim().eq_ignore_ascii_case("range")
            {
                range = Some(value.trim().to_string());
            }
        }
        let mut words = request.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let name = target.trim_start_matches('/');
        let path: Option<PathBuf> = (!name.is_empty()
            && !name.contains('/')
            && !name.contains("..")
            && (method == "GET" || method == "HEAD"))
            .then(|| dir.join(name));
        let connection = if ranges { "keep-alive" } else { "close" };
        let Some(mut file) = path.and_then(|p| std::fs::File::open(p).ok()) else {
            write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: {connection}\r\n\r\n"
            )?;
            if ranges {
                continue;
            }
            return Ok(());
        };
        let len = file.metadata()?.len();
        let asked = range.filter(|_| ranges).map(|r| parse_range(&r, len));
        let (start, count) = match asked {
            Some(Some((start, end))) => {
                write!(
                    out,
                    "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n\
                     Content-Range: bytes {start}-{end}/{len}\r\nContent-Length: {}\r\n\
                     Connection: {connection}\r\n\r\n",
                    end - start + 1
                )?;
                (start, end - start + 1)
            }
            Some(None) => {
                write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                     Content-Length: 0\r\nConnection: {connection}\r\n\r\n"
                )?;
                continue;
            }
            None => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {len}\r\nAccept-Ranges: {}\r\nConnection: {connection}\r\n\r\n",
                    if ranges { "bytes" } else { "none" }
                )?;
                (0, len)
            }
        };
        if method == "GET" {
            file.seek(SeekFrom::Start(start))?;
            let mut body = file.take(count);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = body.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                served.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        out.flush()?;
        if !ranges {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn serves_ranges_on_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.abb"), b"0123456789").unwrap();
        let server = FileServer::start_with_ranges(dir.path()).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        write!(s, "GET /b.abb HTTP/1.1\r\nRange: bytes=2-4\r\n\r\n").unwrap();
        write!(
            s,
            "GET /b.abb HTTP/1.1\r\nRange: bytes=8-\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.contains("Content-Range: bytes 2-4/10\r\n"), "{out}");
        assert!(out.contains("\r\n\r\n234HTTP/1.1 206"), "{out}");
        assert!(out.ends_with("\r\n\r\n89"), "{out}");
        assert_eq!(server.served(), 5);
        assert_eq!(parse_range("bytes=9-3", 10), None);
        assert_eq!(parse_range("bytes=3-100", 10), Some((3, 9)));
    }
}
