//! A small scriptable HTTP/1.1 file server on 127.0.0.1 for the fetch tests.
//!
//! It serves one file (honouring `Range: bytes=N-` and `If-Range`), records
//! every request it sees, and can be told to misbehave request by request:
//! answer a status, cut the connection after some body bytes, stall, drip
//! bytes slowly, say nothing, ignore the Range, serve a different file, break
//! the chunked framing. It answers `Connection: close`, handles
//! each connection on its own thread, and stops when dropped or after a
//! minute, whichever comes first.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A file to serve and its ETag.
#[derive(Clone, Debug)]
pub struct File {
    pub bytes: Arc<Vec<u8>>,
    pub etag: String,
}

impl File {
    pub fn new(bytes: Vec<u8>, etag: &str) -> File {
        File {
            bytes: Arc::new(bytes),
            etag: format!("\"{etag}\""),
        }
    }
}

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Step {
    /// Serve the file, honouring Range and If-Range.
    Serve,
    /// Like `Serve`, but close the connection after this many body bytes.
    CutAfter(u64),
    /// Like `Serve`, but stop sending after this many body bytes and hold the
    /// connection open for the duration, then close it.
    StallAfter(u64, Duration),
    /// Answer 200 with the whole file whatever the request asked for.
    IgnoreRange,
    /// From now on serve this file instead (Range and If-Range against it).
    Replace(File),
    /// Answer 206 for a range that starts this many bytes after the asked one.
    WrongRange(u64),
    /// Answer this status with these extra headers and a short text body.
    Status(u16, Vec<(String, String)>),
    /// Answer 200 in chunked transfer coding (no Content-Length).
    Chunked,
    /// Like `Chunked`, but after this many body bytes send a chunk whose
    /// size line is not hexadecimal, then close.
    BadChunked(u64),
    /// Like `Serve`, but after `after` body bytes send one byte every
    /// `every`, at most `ticks` of them, then close the connection.
    Drip {
        after: u64,
        every: Duration,
        ticks: u32,
    },
    /// Like `Serve`, but send the response head one byte every this long.
    DripHead(Duration),
    /// Read the request, answer nothing for this long, then close.
    Silent(Duration),
}

/// One request as the server saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub target: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub authorization: Option<String>,
}

struct Shared {
    file: File,
    script: Vec<Step>,
    after_script: Step,
    seen: Vec<Seen>,
}

pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// Deterministic pseudo-random bytes (xorshift64*), so a shifted or repeated
/// block shows up in a comparison.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

impl TestServer {
    /// Serve `file`; request i follows `script[i]`, later ones `after_script`.
    pub fn start(file: File, script: Vec<Step>, after_script: Step) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(Shared {
            file,
            script,
            after_script,
            seen: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            thread::spawn(move || accept_loop(listener, shared, stop))
        };
        TestServer {
            addr,
            shared,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().expect("server state").seen.clone()
    }

    pub fn requests(&self) -> usize {
        self.seen().len()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Mutex<Shared>>, stop: Arc<AtomicBool>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut workers = Vec::new();
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                workers.push(thread::spawn(move || {
                    let _ = handle(stream, &shared);
                }));
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

fn handle(stream: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut seen = Seen::default();
    let mut line = String::new();
    reader.read_line(&mut line)?;
    seen.target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = Some(value.trim().to_owned());
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => seen.range = value,
                "if-range" => seen.if_range = value,
                "authorization" => seen.authorization = value,
                _ => {}
            }
        }
    }
    let (step, file) = {
        let mut state = shared.lock().expect("server state");
        let index = state.seen.len();
        state.seen.push(seen.clone());
        let step = state
            .script
            .get(index)
            .cloned()
            .unwrap_or_else(|| state.after_script.clone());
        if let Step::Replace(new_file) = &step {
            state.file = new_file.clone();
        }
        (step, state.file.clone())
    };
    respond(stream, &seen, &step, &file)
}

/// The part of `file` the request asks for: (start, status) honouring
/// `Range: bytes=N-` and `If-Range` (an If-Range that does not match the
/// file's ETag means the whole file).
fn wanted_start(seen: &Seen, file: &File) -> Option<u64> {
    let range = seen.range.as_deref()?;
    if seen.if_range.as_deref().is_some_and(|v| v != file.etag) {
        return None;
    }
    let start = range.strip_prefix("bytes=")?.strip_suffix('-')?;
    start.parse().ok()
}

fn respond(mut stream: TcpStream, seen: &Seen, step: &Step, file: &File) -> std::io::Result<()> {
    let len = file.bytes.len() as u64;
    let mut start = match step {
        Step::IgnoreRange => None,
        _ => wanted_start(seen, file),
    };
    if let Step::Status(code, headers) = step {
        let body = format!("status {code}\n");
        let mut head = format!(
            "HTTP/1.1 {code} Scripted\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes())?;
        return stream.write_all(body.as_bytes());
    }
    if let Step::Silent(hold) = step {
        thread::sleep(*hold);
        return Ok(());
    }
    if let Step::WrongRange(shift) = step {
        start = Some(start.unwrap_or(0) + shift);
    }
    if let Step::Chunked = step {
        let head = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: {}\r\nConnection: close\r\n\r\n",
            file.etag
        );
        stream.write_all(head.as_bytes())?;
        for chunk in file.bytes.chunks(50_000) {
            stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
            stream.write_all(chunk)?;
            stream.write_all(b"\r\n")?;
        }
        return stream.write_all(b"0\r\n\r\n");
    }
    if let Step::BadChunked(good) = step {
        let head = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: {}\r\nConnection: close\r\n\r\n",
            file.etag
        );
        stream.write_all(head.as_bytes())?;
        let good = &file.bytes[..(*good as usize).min(file.bytes.len())];
        for chunk in good.chunks(50_000) {
            stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
            stream.write_all(chunk)?;
            stream.write_all(b"\r\n")?;
        }
        stream.write_all(b"zz\r\nnot a chunk\r\n")?;
        return stream.flush();
    }
    let head = match start {
        Some(s) if s >= len => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return stream.write_all(head.as_bytes());
        }
        Some(s) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\n\
             Content-Length: {}\r\nETag: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            len - 1,
            len - s,
            file.etag
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nETag: {}\r\nAccept-Ranges: bytes\r\n\
             Connection: close\r\n\r\n",
            file.etag
        ),
    };
    let body = &file.bytes[start.unwrap_or(0) as usize..];
    if let Step::DripHead(every) = step {
        for byte in head.as_bytes() {
            stream.write_all(std::slice::from_ref(byte))?;
            stream.flush()?;
            thread::sleep(*every);
        }
    } else {
        stream.write_all(head.as_bytes())?;
    }
    match step {
        Step::CutAfter(n) => {
            let n = (*n as usize).min(body.len());
            stream.write_all(&body[..n])?;
            stream.flush()?;
            Ok(()) // dropping the stream closes the connection early
        }
        Step::StallAfter(n, hold) => {
            let n = (*n as usize).min(body.len());
            stream.write_all(&body[..n])?;
            stream.flush()?;
            thread::sleep(*hold);
            Ok(())
        }
        Step::Drip {
            after,
            every,
            ticks,
        } => {
            let n = (*after as usize).min(body.len());
            stream.write_all(&body[..n])?;
            stream.flush()?;
            for byte in body[n..].iter().take(*ticks as usize) {
                thread::sleep(*every);
                // Fails soon after the client hung up: the drip ends there.
                stream.write_all(std::slice::from_ref(byte))?;
                stream.flush()?;
            }
            Ok(())
        }
        _ => {
            for chunk in body.chunks(64 * 1024) {
                stream.write_all(chunk)?;
            }
            Ok(())
        }
    }
}
