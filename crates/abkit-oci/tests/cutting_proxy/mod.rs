//! A TCP proxy in front of the real registry that breaks one upload: it
//! forwards requests one by one (reading each head and its Content-Length
//! body), and on the Nth `PATCH` passes only part of the body on, then
//! closes both connections — a link that drops in the middle of a chunk.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct CuttingProxy {
    pub addr: String,
    pub patches: Arc<AtomicUsize>,
}

impl CuttingProxy {
    /// Proxies to `upstream`; the `cut_patch`-th PATCH (1-based) is cut
    /// after `keep` body bytes.
    pub fn start(upstream: &str, cut_patch: usize, keep: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let patches = Arc::new(AtomicUsize::new(0));
        let (upstream, counter) = (upstream.to_owned(), patches.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                // Answers flow back untouched.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = forward_requests(client, server, &counter, cut_patch, keep);
                });
            }
        });
        CuttingProxy { addr, patches }
    }
}

fn forward_requests(
    client: TcpStream,
    mut server: TcpStream,
    patches: &AtomicUsize,
    cut_patch: usize,
    keep: u64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    loop {
        let mut head = Vec::new();
        let mut length = 0u64;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
            head.extend_from_slice(line.as_bytes());
            if line == "\r\n" {
                break;
            }
        }
        let cut =
            head.starts_with(b"PATCH ") && patches.fetch_add(1, Ordering::SeqCst) + 1 == cut_patch;
        server.write_all(&head)?;
        let pass = if cut { keep.min(length) } else { length };
        std::io::copy(&mut (&mut reader).take(pass), &mut server)?;
        if cut {
            let _ = server.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}
