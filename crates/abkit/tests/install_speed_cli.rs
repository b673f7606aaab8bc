//! `abkit install URL --speed-limit --speed-time` offline: the flags reach the
//! download, so a server that drips the bundle is given up on after the
//! window and the install resumes on a new connection, instead of waiting as
//! long as the drip lasts.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The scratch folder plus what this file's tests need.
struct World(common::Workdir);

impl std::ops::Deref for World {
    type Target = common::Workdir;
    fn deref(&self) -> &common::Workdir {
        &self.0
    }
}

/// A disk image with slot A marked good, a keyring, and a signed bundle.
fn world() -> (World, Vec<u8>) {
    let w = World(common::Workdir::new());
    std::fs::write(w.p("x.img"), vec![b'X'; 1 << 20]).unwrap();
    let efi = abkit_disk::fixtures::tiny_efi_application(b"X");
    std::fs::write(w.p("x.efi"), efi).unwrap();
    w.factory_disk(&["--loader", &w.s("x.efi"), "--system", &w.s("x.img")]);
    w.release_key();
    let out = w.on("a", &["mark-good"]);
    assert!(out.status.success(), "{out:?}");
    w.release("1.1.0", &[b'Y'; 1 << 20], b"Y").create("os.abb");
    let bundle = std::fs::read(w.p("os.abb")).unwrap();
    (w, bundle)
}

/// Serves `bundle`: the first request gets 500 bytes and then one byte every
/// 100 ms for 10 s; later ones get what they ask for (`Range: bytes=N-`).
/// Returns the port and the Range header of every request ("" for none).
fn drip_once_server(bundle: Vec<u8>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    thread::spawn(move || {
        for (index, stream) in listener.incoming().take(10).enumerate() {
            let Ok(stream) = stream else { return };
            let bundle = bundle.clone();
            let record = Arc::clone(&record);
            thread::spawn(move || {
                let _ = answer(stream, &bundle, index == 0, &record);
            });
        }
    });
    (port, seen)
}

fn answer(
    mut stream: TcpStream,
    bundle: &[u8],
    drip: bool,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut range = String::new();
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("range:") {
            range = value.trim().to_owned();
        }
    }
    seen.lock().unwrap().push(range.clone());
    let start: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-')?.parse().ok())
        .unwrap_or(0);
    let len = bundle.len();
    let head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            len - 1,
            len - start
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    stream.write_all(head.as_bytes())?;
    let body = &bundle[start..];
    if drip {
        stream.write_all(&body[..500])?;
        for byte in body[500..].iter().take(100) {
            thread::sleep(Duration::from_millis(100));
            stream.write_all(std::slice::from_ref(byte))?;
        }
        return Ok(());
    }
    stream.write_all(body)
}

#[test]
fn speed_flags_reach_the_download_and_a_dripping_server_is_resumed() {
    let (w, bundle) = world();
    let (port, seen) = drip_once_server(bundle);
    let url = format!("http://127.0.0.1:{port}/os.abb");
    let started = Instant::now();
    let out = w.on(
        "a",
        &[
            "install",
            &url,
            "--keyring",
            &w.s("keyring"),
            "--json",
            "--allow-unrecorded",
            // The streaming download is under test (a delta install would
            // start with a range request).
            "--no-delta",
            "--speed-limit",
            "1000",
            "--speed-time",
            "1",
        ],
    );
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The drip lasts 10 s; a 1 s window gives up on it after 1 to 2 s.
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], "", "the first request is for the whole bundle");
    // Resumed after the 500 fast bytes and a few dripped ones.
    assert!(seen[1].starts_with("bytes=5"), "{seen:?}");
}

#[test]
fn help_teaches_the_speed_flags() {
    let w = World(common::Workdir::new());
    let help = w.ok(&["install", "--help"]);
    for needle in [
        "--speed-limit <BYTES_PER_SEC>",
        "--speed-time <SECS>",
        "[default: 1024]",
        "[default: 30]",
        "resumes",
        "0 turns the check off",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[test]
fn a_resumed_download_is_a_warning_in_install_json() {
    let (w, bundle) = world();
    let (port, _) = drip_once_server(bundle);
    let url = format!("http://127.0.0.1:{port}/os.abb");
    let out = w.on(
        "a",
        &[
            "install",
            &url,
            "--keyring",
            &w.s("keyring"),
            "--json",
            "--allow-unrecorded",
            // The streaming download is under test (a delta install would
            // start with a range request).
            "--no-delta",
            "--speed-limit",
            "1000",
            "--speed-time",
            "1",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{out:?}");
    // Every line is one JSON event; the resume is one of them, before the end.
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let warnings: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "warning")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].starts_with("download: ")
            && warnings[0].contains("attempt 2 of 6 resuming at byte 5"),
        "{}",
        warnings[0]
    );
    assert_eq!(events.last().unwrap()["event"], "done", "{stdout}");
}
