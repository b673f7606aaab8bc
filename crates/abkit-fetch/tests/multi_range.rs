//! Several ranges in one request (`HttpSource::read_ranges`, delta
//! installs): against lighttpd (answers multipart/byteranges, at most 10
//! ranges per request) and a scripted server whose answers are out of
//! order, cut short, the whole file, or not multipart at all. Every test
//! compares the bytes with the file and counts the requests.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use abkit_fetch::{HttpSource, Opener, RetryPolicy};

fn file_bytes(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `count` ranges of 4 KiB spread over a file of `len` bytes.
fn scattered(len: u64, count: u64) -> Vec<(u64, u64)> {
    (0..count).map(|i| (i * (len / count), 4096)).collect()
}

fn expected(file: &[u8], ranges: &[(u64, u64)]) -> Vec<u8> {
    ranges
        .iter()
        .flat_map(|&(s, l)| file[s as usize..(s + l) as usize].iter().copied())
        .collect()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

fn open(url: &str) -> HttpSource {
    let source = Opener::new(&policy()).open_ranged(url, 4096).unwrap();
    assert!(source.ranges_honoured());
    source
}

fn read(source: &mut HttpSource, ranges: &[(u64, u64)]) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; ranges.iter().map(|r| r.1 as usize).sum()];
    source.read_ranges(ranges, &mut out).map(|()| out)
}

/// lighttpd serving one file, stopped when dropped.
/// The server, its port, and the folder it serves (kept until dropped).
struct Lighttpd(Child, u16, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Lighttpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` accepts connections.
fn wait_for(port: u16) -> bool {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(25));
    }
    false
}

fn lighttpd(file: &[u8]) -> Lighttpd {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/f.bin"), file).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "server.document-root = \"{}\"\nserver.port = {port}\nserver.bind = \"127.0.0.1\"\n\
         server.errorlog = \"{}\"\n",
        dir.path().join("www").display(),
        dir.path().join("error.log").display()
    );
    std::fs::write(dir.path().join("l.conf"), conf).unwrap();
    let server = Lighttpd(
        Command::new("/usr/sbin/lighttpd")
            .arg("-D")
            .arg("-f")
            .arg(dir.path().join("l.conf"))
            .stdout(Stdio::null())
            .spawn()
            .expect("lighttpd is needed: run `make deps`"),
        port,
        dir,
    );
    assert!(wait_for(port), "lighttpd did not start");
    server
}

#[test]
fn lighttpd_answers_ten_ranges_at_a_time_and_every_byte_arrives() {
    let file = file_bytes(4 << 20);
    let server = lighttpd(&file);
    let mut source = open(&format!("http://127.0.0.1:{}/f.bin", server.1));
    let ranges = scattered(file.len() as u64, 100);
    let got = read(&mut source, &ranges).unwrap();
    assert!(got == expected(&file, &ranges), "wrong bytes");
    assert!(source.multi_ranges());
    // The open, then lighttpd's 10 ranges per request (learned after the
    // first answer): about 100 / 10 requests, not 100.
    let requests = source.requests();
    assert!(requests <= 13, "{requests} requests for 100 ranges");
    // Adjacent and tiny ranges, the last byte of the file.
    let len = file.len() as u64;
    let ranges = [(0, 1), (1, 4095), (8192, 1), (len - 1, 1)];
    assert!(read(&mut source, &ranges).unwrap() == expected(&file, &ranges));
}

/// How the scripted server answers a request for several ranges.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// multipart/byteranges, parts in the order asked.
    InOrder,
    /// multipart/byteranges, parts in the reverse order.
    Reversed,
    /// Only the first 3 ranges asked for.
    FirstThree,
    /// The body stops after this many bytes (the first such answer only).
    CutAfter(usize),
    /// 200 and the whole file.
    Whole,
    /// 416, as a server that takes one range only may answer.
    Refused,
    /// 206 with a body that is not multipart (no boundary, no Content-Range).
    NotMultipart,
    /// A part one byte longer than its Content-Range says.
    LongPart,
}

struct Scripted {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Requests seen with several ranges, and with one.
    multi: Arc<AtomicUsize>,
    single: Arc<AtomicUsize>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn scripted(file: Vec<u8>, answer: Answer) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let (multi, single) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let cut_done = Arc::new(Mutex::new(false));
    let file = Arc::new(file);
    {
        let (stop, multi, single) = (stop.clone(), multi.clone(), single.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let (file, multi, single, cut_done) = (
                    file.clone(),
                    multi.clone(),
                    single.clone(),
                    cut_done.clone(),
                );
                thread::spawn(move || {
                    let _ = answer_one(stream, &file, answer, &multi, &single, &cut_done);
                });
            }
        });
    }
    Scripted {
        port,
        stop,
        multi,
        single,
    }
}

fn answer_one(
    mut stream: TcpStream,
    file: &[u8],
    answer: Answer,
    multi: &AtomicUsize,
    single: &AtomicUsize,
    cut_done: &Mutex<bool>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut range = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(v) = line
            .strip_prefix("Range: bytes=")
            .or(line.strip_prefix("range: bytes="))
        {
            range = v.trim().to_owned();
        }
    }
    let total = file.len();
    let mut ranges: Vec<(usize, usize)> = range
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    let head = |status: &str, extra: &str, len: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nETag: \"f\"\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    if ranges.len() == 1 {
        single.fetch_add(1, Ordering::SeqCst);
        let (a, b) = ranges[0];
        let body = &file[a..=b];
        let extra = format!("Content-Range: bytes {a}-{b}/{total}\r\n");
        stream.write_all(head("206 Partial Content", &extra, body.len()).as_bytes())?;
        return stream.write_all(body);
    }
    multi.fetch_add(1, Ordering::SeqCst);
    match answer {
        Answer::Whole => {
            stream.write_all(head("200 OK", "", total).as_bytes())?;
            return stream.write_all(file);
        }
        Answer::Refused => {
            let extra = format!("Content-Range: bytes */{total}\r\n");
            return stream.write_all(head("416 Range Not Satisfiable", &extra, 0).as_bytes());
        }
        Answer::NotMultipart => {
            let body = b"these are not the bytes you asked for";
            stream.write_all(
                head(
                    "206 Partial Content",
                    "Content-Type: text/plain\r\n",
                    body.len(),
                )
                .as_bytes(),
            )?;
            return stream.write_all(body);
        }
        Answer::Reversed => ranges.reverse(),
        Answer::FirstThree => ranges.truncate(3),
        _ => {}
    }
    let mut body = Vec::new();
    for (k, &(a, b)) in ranges.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "\r\n--B0UND\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {a}-{b}/{total}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&file[a..=b]);
        if answer == Answer::LongPart && k == 1 {
            body.push(b'!');
        }
    }
    body.extend_from_slice(b"\r\n--B0UND--\r\n");
    let extra = "Content-Type: multipart/byteranges; boundary=B0UND\r\n";
    stream.write_all(head("206 Partial Content", extra, body.len()).as_bytes())?;
    if let Answer::CutAfter(n) = answer {
        let mut done = cut_done.lock().unwrap();
        if !*done {
            *done = true;
            return stream.write_all(&body[..n.min(body.len())]);
        }
    }
    stream.write_all(&body)
}

#[test]
fn parts_in_any_order_and_fewer_than_asked_still_give_every_byte() {
    let file = file_bytes(1 << 20);
    let ranges = scattered(file.len() as u64, 40);
    for answer in [Answer::InOrder, Answer::Reversed, Answer::FirstThree] {
        let server = scripted(file.clone(), answer);
        let mut source = open(&format!("http://127.0.0.1:{}/f", server.port));
        let got = read(&mut source, &ranges).unwrap();
        assert!(got == expected(&file, &ranges), "{answer:?}: wrong bytes");
        assert!(source.multi_ranges(), "{answer:?}");
        let multi = server.multi.load(Ordering::SeqCst);
        match answer {
            // One request for all 40.
            Answer::InOrder | Answer::Reversed => assert_eq!(multi, 1, "{answer:?}"),
            // 3 per request once learned.
            _ => assert!((13..=15).contains(&multi), "{answer:?}: {multi} requests"),
        }
    }
}

#[test]
fn a_body_cut_mid_part_is_asked_again_for_what_is_missing() {
    let file = file_bytes(1 << 20);
    let ranges = scattered(file.len() as u64, 40);
    // Cut inside the 11th part: the first 10 are kept.
    let server = scripted(file.clone(), Answer::CutAfter(10 * (4096 + 100) + 2000));
    let mut source = open(&format!("http://127.0.0.1:{}/f", server.port));
    let got = read(&mut source, &ranges).unwrap();
    assert!(got == expected(&file, &ranges), "wrong bytes");
    assert_eq!(server.multi.load(Ordering::SeqCst), 2);
    assert!(source.multi_ranges());
}

#[test]
fn a_whole_file_a_refusal_or_a_body_that_is_not_multipart_falls_back_to_one_range_per_request() {
    let file = file_bytes(1 << 20);
    let ranges = scattered(file.len() as u64, 20);
    for answer in [
        Answer::Whole,
        Answer::Refused,
        Answer::NotMultipart,
        Answer::LongPart,
    ] {
        let server = scripted(file.clone(), answer);
        let mut source = open(&format!("http://127.0.0.1:{}/f", server.port));
        let got = read(&mut source, &ranges).unwrap();
        assert!(got == expected(&file, &ranges), "{answer:?}: wrong bytes");
        assert!(!source.multi_ranges(), "{answer:?}");
        assert_eq!(server.multi.load(Ordering::SeqCst), 1, "{answer:?}");
        // The open (which asked for bytes 0-4095, the first range: its
        // body serves it), and one request for each other range (a long
        // part's earlier parts are not trusted either).
        assert_eq!(server.single.load(Ordering::SeqCst), 1 + 19, "{answer:?}");
        // And it stays that way: no second multi-range request.
        let more = read(&mut source, &ranges[..5]).unwrap();
        assert!(more == expected(&file, &ranges[..5]));
        assert_eq!(server.multi.load(Ordering::SeqCst), 1, "{answer:?}");
    }
}

#[test]
fn ranges_must_be_sorted_disjoint_and_fill_the_buffer() {
    let file = file_bytes(1 << 20);
    let server = scripted(file, Answer::InOrder);
    let mut source = open(&format!("http://127.0.0.1:{}/f", server.port));
    let mut out = vec![0u8; 200];
    for bad in [
        vec![(100u64, 100u64), (0, 100)],
        vec![(0, 150), (100, 50)],
        vec![(0, 100)],
    ] {
        let e = source.read_ranges(&bad, &mut out).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
    }
    // Nothing was asked for.
    assert_eq!(server.multi.load(Ordering::SeqCst), 0);
}
