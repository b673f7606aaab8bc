//! HttpSource against a real HTTP server on 127.0.0.1 that misbehaves on cue:
//! every test compares the bytes received with the served file and counts
//! the requests the server saw.

mod server;

use std::io::Read;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abkit_fetch::{FetchError, HttpSource, Opener, RetryEvent, RetryPolicy};
use server::{File, Seen, Step, TestServer, test_bytes};

/// An odd size, so that chunk and buffer boundaries never line up.
const SIZE: usize = 1_048_583;

fn file() -> File {
    File::new(test_bytes(SIZE, 7), "v1")
}

/// Short waits so that the retry tests stay fast.
fn fast_policy(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
        jitter: false,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        ..RetryPolicy::default()
    }
}

/// Read everything with an odd buffer size, returning the bytes and any error.
fn read_all(source: &mut HttpSource) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 10_007];
    loop {
        match source.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

fn assert_same_bytes(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("first differing byte at offset {at}");
    }
}

fn range_from(pos: u64) -> Option<String> {
    Some(format!("bytes={pos}-"))
}

#[test]
fn plain_download_is_one_request_with_the_exact_bytes() {
    let served = file();
    let server = TestServer::start(served.clone(), vec![], Step::Serve);
    let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(6)).unwrap();
    assert_eq!(source.content_length(), Some(SIZE as u64));
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert_same_bytes(&got, &served.bytes);
    assert_eq!(source.position(), SIZE as u64);
    assert_eq!(source.attempts(), 1);
    assert_eq!(
        server.seen(),
        [Seen {
            target: "/x.abb".into(),
            range: None,
            if_range: None,
            authorization: None,
        }]
    );
    // After the end, reads keep returning 0 and make no request.
    assert_eq!(source.read(&mut [0u8; 16]).unwrap(), 0);
    assert_eq!(server.requests(), 1);
}

#[test]
fn two_503_then_200_retries_and_delivers_the_file() {
    let served = file();
    let script = vec![Step::Status(503, vec![]), Step::Status(503, vec![])];
    let server = TestServer::start(served.clone(), script, Step::Serve);
    let events = Arc::new(Mutex::new(Vec::<RetryEvent>::new()));
    let recorder = Arc::clone(&events);
    let mut source = Opener::new(&fast_policy(6))
        .observe(move |e| recorder.lock().unwrap().push(e.clone()))
        .open(&server.url("/x.abb"))
        .unwrap();
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert_same_bytes(&got, &served.bytes);
    assert_eq!(server.requests(), 3);
    assert!(server.seen().iter().all(|s| s.range.is_none()));
    let events = events.lock().unwrap();
    let summary: Vec<(u32, u64, Duration, &str)> = events
        .iter()
        .map(|e| (e.attempt, e.position, e.wait, e.problem.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                2,
                0,
                Duration::from_millis(5),
                "HTTP 503 Service Unavailable"
            ),
            (
                3,
                0,
                Duration::from_millis(10),
                "HTTP 503 Service Unavailable"
            ),
        ]
    );
}

#[test]
fn retry_after_seconds_from_a_429_is_honoured() {
    let served = file();
    let retry_after = vec![("Retry-After".to_string(), "1".to_string())];
    let server = TestServer::start(
        served.clone(),
        vec![Step::Status(429, retry_after)],
        Step::Serve,
    );
    let started = Instant::now();
    let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(6)).unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert_same_bytes(&got, &served.bytes);
    assert_eq!(server.requests(), 2);
}

#[test]
fn retry_after_is_capped_by_the_policy() {
    let served = file();
    let retry_after = vec![("Retry-After".to_string(), "3600".to_string())];
    let server = TestServer::start(
        served.clone(),
        vec![Step::Status(503, retry_after)],
        Step::Serve,
    );
    let policy = RetryPolicy {
        max_retry_after: Duration::from_millis(50),
        ..fast_policy(6)
    };
    let started = Instant::now();
    let mut source = HttpSource::open(&server.url("/x.abb"), &policy).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let (got, _) = read_all(&mut source);
    assert_same_bytes(&got, &served.bytes);
    assert_eq!(server.requests(), 2);
}

#[test]
fn the_authorizer_is_asked_before_every_request_and_resumes_carry_its_answer() {
    // A registry's token renewed between attempts (abkit-oci): each request,
    // resumes included, carries the value the authorizer gave just before.
    let served = file();
    let script = vec![Step::CutAfter(100_000), Step::CutAfter(200_000)];
    let server = TestServer::start(served.clone(), script, Step::Serve);
    let mut asked = 0;
    let mut source = Opener::new(&fast_policy(4))
        .authorize(move || {
            asked += 1;
            Some(format!("Bearer token-{asked}"))
        })
        .open(&server.url("/x.abb"))
        .unwrap();
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert_same_bytes(&got, &served.bytes);
    let sent: Vec<Option<String>> = server
        .seen()
        .iter()
        .map(|s| s.authorization.clone())
        .collect();
    let want: Vec<Option<String>> = (1..=3).map(|i| Some(format!("Bearer token-{i}"))).collect();
    assert_eq!(sent, want);
}

#[test]
fn a_body_cut_several_times_resumes_with_range_byte_exact() {
    let served = file();
    let script = vec![
        Step::CutAfter(100_000),
        Step::CutAfter(1),
        Step::CutAfter(0),
        Step::CutAfter(400_000),
    ];
    let server = TestServer::start(served.clone(), script, Step::Serve);
    let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(6)).unwrap();
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert_same_bytes(&got, &served.bytes);
    assert_eq!(source.attempts(), 5);
    let seen = server.seen();
    let ranges: Vec<Option<String>> = seen.iter().map(|s| s.range.clone()).collect();
    assert_eq!(
        ranges,
        [
            None,
            range_from(100_000),
            range_from(100_001),
            range_from(100_001),
            range_from(500_001),
        ]
    );
    // Resumes carry the ETag so a changed file comes back whole (and is refused).
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.if_range.as_deref() == Some("\"v1\""))
    );
}

#[test]
fn a_stalled_body_times_out_and_resumes() {
    let served = file();
    let script = vec![Step::StallAfter(200_000, Duration::from_millis(1500))];
    let server = TestServer::start(served.clone(), script, Step::Serve);
    let policy = RetryPolicy {
        read_timeout: Duration::from_millis(300),
        ..fast_policy(6)
    };
    let mut source = HttpSource::open(&server.url("/x.abb"), &policy).unwrap();
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert_same_bytes(&got, &served.bytes);
    let ranges: Vec<Option<String>> = server.seen().iter().map(|s| s.range.clone()).collect();
    assert_eq!(ranges, [None, range_from(200_000)]);
}

#[test]
fn resumes_count_against_the_budget() {
    let served = file();
    let server = TestServer::start(served.clone(), vec![], Step::CutAfter(50_000));
    let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(3)).unwrap();
    let (got, error) = read_all(&mut source);
    let error = error.expect("the budget must run out");
    let fetch = FetchError::from_io(&error).expect("a FetchError inside");
    assert_eq!(
        fetch,
        &FetchError::GaveUp {
            url: server.url("/x.abb"),
            attempts: 3,
            last: "the body broke off at byte 150000: connection closed early".into(),
        },
        "{fetch}"
    );
    // What was handed out is exactly the start of the file.
    assert_eq!(got.len(), 150_000);
    assert_same_bytes(&got, &served.bytes[..150_000]);
    assert_eq!(server.requests(), 3);
    // The failure sticks: no more requests, same error.
    let again = source.read(&mut [0u8; 64]).unwrap_err();
    assert_eq!(FetchError::from_io(&again), Some(fetch));
    assert_eq!(server.requests(), 3);
}

#[test]
fn not_found_fails_at_once_naming_the_status() {
    let server = TestServer::start(file(), vec![], Step::Status(404, vec![]));
    let url = server.url("/missing.abb");
    let error = HttpSource::open(&url, &fast_policy(6)).unwrap_err();
    assert_eq!(error.to_string(), format!("GET {url}: HTTP 404 Not Found"));
    assert_eq!(error.status(), Some(404));
    assert_eq!(server.requests(), 1);
}

#[test]
fn statuses_outside_the_retry_list_are_not_retried() {
    for status in [400, 401, 403, 410, 501, 505] {
        let server = TestServer::start(file(), vec![], Step::Status(status, vec![]));
        let error = HttpSource::open(&server.url("/x.abb"), &fast_policy(6)).unwrap_err();
        assert_eq!(error.status(), Some(status), "{error}");
        assert_eq!(server.requests(), 1, "{status}");
    }
}

#[test]
fn every_listed_server_status_is_retried() {
    for status in [408, 425, 429, 500, 502, 503, 504, 520, 599] {
        let served = file();
        let server = TestServer::start(
            served.clone(),
            vec![Step::Status(status, vec![])],
            Step::Serve,
        );
        let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(2)).unwrap();
        let (got, _) = read_all(&mut source);
        assert_same_bytes(&got, &served.bytes);
        assert_eq!(server.requests(), 2, "{status}");
    }
}

#[test]
fn server_error_forever_gives_up_after_the_budget() {
    let server = TestServer::start(file(), vec![], Step::Status(500, vec![]));
    let url = server.url("/x.abb");
    let error = HttpSource::open(&url, &fast_policy(4)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("GET {url}: gave up after 4 attempts: HTTP 500 Internal Server Error")
    );
    assert_eq!(server.requests(), 4);
}

#[test]
fn connection_refused_gives_up_after_the_budget() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/x.abb");
    let error = HttpSource::open(&url, &fast_policy(3)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("GET {url}: gave up after 3 attempts: connection refused")
    );
}

#[test]
fn a_range_answered_with_200_skips_what_was_already_handed_out() {
    let served = file();
    let script = vec![Step::CutAfter(250_000), Step::IgnoreRange];
    let server = TestServer::start(served.clone(), script, Step::Serve);
    let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(6)).unwrap();
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert_same_bytes(&got, &served.bytes);
    let ranges: Vec<Option<String>> = server.seen().iter().map(|s| s.range.clone()).collect();
    assert_eq!(ranges, [None, range_from(250_000)]);
}

#[test]
fn a_file_whose_size_changed_between_attempts_is_refused() {
    let served = file();
    let bigger = File::new(test_bytes(SIZE + 4096, 7), "v1");
    let script = vec![Step::CutAfter(300_000), Step::Replace(bigger)];
    let server = TestServer::start(served.clone(), script, Step::Serve);
    let url = server.url("/x.abb");
    let mut source = HttpSource::open(&url, &fast_policy(6)).unwrap();
    let (got, error) = read_all(&mut source);
    let error = error.expect("a changed file must fail");
    let fetch = FetchError::from_io(&error).expect("a FetchError inside");
    assert_eq!(
        fetch.to_string(),
        format!(
            "GET {url}: the file changed on the server during the transfer \
             (size was {SIZE} bytes, now {})",
            SIZE + 4096
        )
    );
    assert_same_bytes(&got, &served.bytes[..300_000]);
    assert_eq!(server.requests(), 2);
}

#[test]
fn a_file_replaced_with_the_same_size_is_refused_through_if_range() {
    let served = file();
    let other = File::new(test_bytes(SIZE, 8), "v2");
    let script = vec![Step::CutAfter(300_000), Step::Replace(other)];
    let server = TestServer::start(served.clone(), script, Step::Serve);
    let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(6)).unwrap();
    let (got, error) = read_all(&mut source);
    let error = error.expect("a replaced file must fail");
    let fetch = FetchError::from_io(&error).expect("a FetchError inside");
    assert!(
        matches!(fetch, FetchError::Changed { detail, .. } if detail == "ETag was \"v1\", now \"v2\""),
        "{fetch}"
    );
    assert_same_bytes(&got, &served.bytes[..300_000]);
    // The server saw the If-Range, did not match it, and answered 200.
    assert_eq!(server.seen()[1].if_range.as_deref(), Some("\"v1\""));
}

#[test]
fn a_resume_answered_at_the_wrong_offset_is_refused() {
    let served = file();
    let script = vec![Step::CutAfter(1000), Step::WrongRange(10)];
    let server = TestServer::start(served.clone(), script, Step::Serve);
    let url = server.url("/x.abb");
    let mut source = HttpSource::open(&url, &fast_policy(6)).unwrap();
    let (got, error) = read_all(&mut source);
    let fetch = FetchError::from_io(error.as_ref().expect("must fail")).expect("FetchError");
    assert_eq!(
        fetch.to_string(),
        format!(
            "GET {url}: cannot resume at byte 1000: the server sent \"bytes 1010-{}/{SIZE}\"",
            SIZE - 1
        )
    );
    assert_same_bytes(&got, &served.bytes[..1000]);
}

#[test]
fn unexpected_2xx_statuses_are_refused() {
    let server = TestServer::start(file(), vec![], Step::Status(204, vec![]));
    let url = server.url("/x.abb");
    let error = HttpSource::open(&url, &fast_policy(6)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("GET {url}: unexpected HTTP 204 No Content")
    );
    assert_eq!(server.requests(), 1);
}

#[test]
fn a_chunked_body_without_length_streams_whole() {
    let served = file();
    let server = TestServer::start(served.clone(), vec![], Step::Chunked);
    let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(6)).unwrap();
    assert_eq!(source.content_length(), None);
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert_same_bytes(&got, &served.bytes);
    assert_eq!(server.requests(), 1);
}

#[test]
fn a_redirect_is_followed() {
    let served = file();
    let server = TestServer::start(served.clone(), vec![], Step::Serve);
    let location = vec![("Location".to_string(), server.url("/real.abb"))];
    let redirector = TestServer::start(file(), vec![], Step::Status(302, location));
    let mut source = HttpSource::open(&redirector.url("/x.abb"), &fast_policy(6)).unwrap();
    let (got, _) = read_all(&mut source);
    assert_same_bytes(&got, &served.bytes);
    assert_eq!(server.seen()[0].target, "/real.abb");
    assert_eq!(redirector.requests(), 1);
}

#[test]
fn the_source_can_move_to_another_thread() {
    fn is_send<T: Send>(_: &T) {}
    let served = file();
    let server = TestServer::start(served.clone(), vec![Step::CutAfter(77_777)], Step::Serve);
    let mut source = HttpSource::open(&server.url("/x.abb"), &fast_policy(6)).unwrap();
    is_send(&source);
    let got = std::thread::spawn(move || {
        let mut out = Vec::new();
        source.read_to_end(&mut out).map(|_| out)
    })
    .join()
    .unwrap()
    .unwrap();
    assert_same_bytes(&got, &served.bytes);
}

/// A policy whose speed check trips fast: 1000 bytes/s over 1 s.
fn speed_policy(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        speed_limit: 1000,
        speed_time: Duration::from_secs(1),
        ..fast_policy(attempts)
    }
}

/// 500 bytes at once, then a byte every 50 ms (20 bytes/s) for 5 s.
const DRIP: Step = Step::Drip {
    after: 500,
    every: Duration::from_millis(50),
    ticks: 100,
};

#[test]
fn a_dripping_server_is_given_up_as_stalled_within_the_budget() {
    let served = file();
    let server = TestServer::start(served.clone(), vec![], DRIP);
    let url = server.url("/x.abb");
    let started = Instant::now();
    let mut source = HttpSource::open(&url, &speed_policy(2)).unwrap();
    let (got, error) = read_all(&mut source);
    let elapsed = started.elapsed();
    // Two windows of 1 s, not the 10 s the drips would last.
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    let error = error.expect("a stall must end the transfer");
    let fetch = FetchError::from_io(&error).expect("a FetchError inside");
    let FetchError::GaveUp { attempts, last, .. } = fetch else {
        panic!("{fetch}");
    };
    assert_eq!(*attempts, 2, "{fetch}");
    let prefix = format!("download stalled at byte {}: ", got.len());
    assert!(last.starts_with(&prefix), "{fetch}");
    assert!(
        last.ends_with("bytes/s (--speed-limit)") && last.contains("below the minimum of 1000"),
        "{fetch}"
    );
    assert!(
        fetch
            .to_string()
            .starts_with(&format!("GET {url}: gave up after 2 attempts: ")),
        "{fetch}"
    );
    // Only good bytes were handed out, and the second attempt resumed.
    assert!(got.len() >= 500);
    assert_same_bytes(&got, &served.bytes[..got.len()]);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let resumed_at: u64 = seen[1].range.as_deref().unwrap()[6..]
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(resumed_at >= 500 && resumed_at <= got.len() as u64);
}

#[test]
fn a_stall_is_resumed_byte_exact_on_a_new_connection() {
    let served = file();
    let server = TestServer::start(served.clone(), vec![DRIP], Step::Serve);
    let started = Instant::now();
    let mut source = HttpSource::open(&server.url("/x.abb"), &speed_policy(2)).unwrap();
    let (got, error) = read_all(&mut source);
    assert!(error.is_none(), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_same_bytes(&got, &served.bytes);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].range.is_some());
}

#[test]
fn a_server_that_never_answers_times_out_and_is_retried() {
    let server = TestServer::start(file(), vec![], Step::Silent(Duration::from_millis(1500)));
    let url = server.url("/x.abb");
    let policy = RetryPolicy {
        read_timeout: Duration::from_millis(300),
        ..fast_policy(2)
    };
    let started = Instant::now();
    let error = HttpSource::open(&url, &policy).unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1400), "took {elapsed:?}");
    let FetchError::GaveUp {
        attempts: 2, last, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert!(last.contains("timeout"), "{error}");
    assert_eq!(server.requests(), 2);
}

#[test]
fn response_headers_dripped_slowly_time_out() {
    // About 150 header bytes at one per 50 ms: 7 s for the whole head.
    let server = TestServer::start(file(), vec![], Step::DripHead(Duration::from_millis(50)));
    let policy = RetryPolicy {
        read_timeout: Duration::from_millis(500),
        ..fast_policy(1)
    };
    let started = Instant::now();
    let error = HttpSource::open(&server.url("/x.abb"), &policy).unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    let FetchError::GaveUp {
        attempts: 1, last, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert!(last.contains("timeout"), "{error}");
}

#[test]
fn a_malformed_chunked_body_fails_at_once_and_is_not_retried() {
    let served = file();
    let server = TestServer::start(served.clone(), vec![], Step::BadChunked(100_000));
    let url = server.url("/x.abb");
    let mut source = HttpSource::open(&url, &fast_policy(6)).unwrap();
    let (got, error) = read_all(&mut source);
    let error = error.expect("a broken chunked body must fail");
    let fetch = FetchError::from_io(&error).expect("a FetchError inside");
    assert_eq!(
        fetch,
        &FetchError::Malformed {
            url: url.clone(),
            at: format!(" body at byte {}", got.len()),
            problem: "chunk length cannot be read as a number".into(),
        },
        "{fetch}"
    );
    assert!(
        fetch
            .to_string()
            .starts_with(&format!("GET {url}: malformed response body at byte ")),
        "{fetch}"
    );
    assert_same_bytes(&got, &served.bytes[..got.len()]);
    assert_eq!(server.requests(), 1);
    // The failure sticks: no more requests.
    assert!(source.read(&mut [0u8; 64]).is_err());
    assert_eq!(server.requests(), 1);
}
