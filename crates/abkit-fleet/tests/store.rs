//! The etcd client (`Store`, etcd's JSON gateway over HTTP) against real
//! etcd members: every operation's bytes, members killed, watches, and
//! URLs that are not etcd at all.

use std::time::{Duration, Instant};

use abkit_fleet::testing::{EtcdCluster, free_port};
use abkit_fleet::{FleetError, Store, parse_endpoints};

fn connect(endpoints: &str) -> Store {
    Store::connect(&parse_endpoints(endpoints).unwrap()).unwrap()
}

#[test]
fn every_operation_keeps_bytes_and_revisions_exact() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd.endpoints());
    // Values are bytes, not text; keys with a prefix's last byte bumped
    // ("a/" -> "a0") must stay outside the prefix.
    let binary: Vec<u8> = (0..=255u8).collect();
    assert_eq!(store.get("a/x").unwrap(), None);
    assert!(store.cas("a/x", 0, &binary).unwrap(), "create if absent");
    assert!(!store.cas("a/x", 0, b"again").unwrap(), "exists: refused");
    let got = store.get("a/x").unwrap().unwrap();
    assert_eq!(got.value, binary);
    assert!(got.mod_revision > 0);
    assert!(!store.cas("a/x", got.mod_revision + 1, b"no").unwrap());
    assert!(store.cas("a/x", got.mod_revision, b"").unwrap());
    assert_eq!(store.get("a/x").unwrap().unwrap().value, b"");
    store.put("a/y", "ü 😀".as_bytes()).unwrap();
    store.put("a0", b"outside").unwrap();
    store.put("a", b"outside too").unwrap();

    let (rev, items) = store.list("a/").unwrap();
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a/x", "a/y"]);
    assert_eq!(items[1].1.value, "ü 😀".as_bytes());
    assert!(rev >= items[1].1.mod_revision);

    let y = store.get("a/y").unwrap().unwrap();
    assert!(!store.cas_delete("a/y", y.mod_revision - 1).unwrap());
    assert!(store.cas_delete("a/y", y.mod_revision).unwrap());
    assert_eq!(store.get("a/y").unwrap(), None);

    assert_eq!(store.delete_prefix("a/").unwrap(), 1);
    assert_eq!(store.delete_prefix("a/").unwrap(), 0);
    assert_eq!(store.get("a0").unwrap().unwrap().value, b"outside");
    assert_eq!(store.get("a").unwrap().unwrap().value, b"outside too");
}

#[test]
fn a_killed_member_is_skipped() {
    let mut etcd = EtcdCluster::start(3);
    let store = connect(&etcd.endpoints());
    store.put("k", b"1").unwrap();
    etcd.members[0].kill();
    let start = Instant::now();
    for i in 0..20 {
        store.put("k", format!("{i}").as_bytes()).unwrap();
        assert_eq!(
            store.get("k").unwrap().unwrap().value,
            format!("{i}").as_bytes()
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the dead member was not skipped: {:?}",
        start.elapsed()
    );
}

#[test]
fn a_url_that_is_not_etcd_is_a_named_error_at_once() {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let (status, body) = if req.url().ends_with("/kv/put") {
                (200, "<html>hello</html>")
            } else {
                (404, "not found")
            };
            let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(status));
        }
    });
    let store = connect(&format!("127.0.0.1:{port}"));
    let start = Instant::now();
    let err = store.get("k").unwrap_err();
    assert!(matches!(err, FleetError::Etcd { .. }), "{err}");
    assert_eq!(err.code(), "etcd");
    assert!(err.to_string().contains("no etcd v3 JSON gateway"), "{err}");
    let err = store.put("k", b"v").unwrap_err();
    assert!(err.to_string().contains("not an answer of etcd"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "retried a fatal error"
    );
}

#[test]
fn an_error_etcd_returns_is_named_and_not_retried() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd.endpoints());
    // etcd refuses an empty key (InvalidArgument): no retrying for 20 s.
    let start = Instant::now();
    let err = store.put("", b"v").unwrap_err();
    assert!(err.to_string().contains("key is not provided"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_dead_first_endpoint_falls_over_to_the_next() {
    let etcd = EtcdCluster::start(1);
    let dead = format!("127.0.0.1:{}", free_port());
    let store = connect(&format!("{dead},{}", etcd.endpoints()));
    store.put("k", b"v").unwrap();
    assert_eq!(store.get("k").unwrap().unwrap().value, b"v");
}

#[test]
fn watches_see_changes_after_a_revision_and_time_out_otherwise() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd.endpoints());
    store.put("plan", b"1").unwrap();
    let (rev, _) = store.list("plan").unwrap();

    // Nothing after `rev`: waits the whole timeout, says "no change".
    let start = Instant::now();
    assert!(!store.wait_for_change("plan", rev, Duration::from_millis(800)));
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // A change under another prefix does not count; one under ours does,
    // whether it came before the wait started or during it.
    store.put("other", b"x").unwrap();
    assert!(!store.wait_for_change("plan", rev, Duration::from_millis(500)));
    store.put("plan", b"2").unwrap();
    assert!(store.wait_for_change("plan", rev, Duration::from_secs(5)));

    let (rev, _) = store.list("plan").unwrap();
    let writer = store.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        writer.put("plan", b"3").unwrap();
    });
    let start = Instant::now();
    assert!(store.wait_for_change("plan", rev, Duration::from_secs(10)));
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
}
