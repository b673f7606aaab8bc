//! The FleetLock server against a real etcd started by the test: the
//! protocol as Zincati speaks it, two servers sharing one etcd, a restart
//! that loses nothing, racing lockers, an operator releasing a holder.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use abkit_fleet::semaphore::{self, LockOutcome};
use abkit_fleet::server::{FleetLockServer, ServeOptions};
use abkit_fleet::testing::EtcdCluster;
use abkit_fleet::{Store, parse_endpoints};

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// POSTs a FleetLock request; returns the status and body.
fn call(base: &str, op: &str, id: &str, group: &str) -> (u16, String) {
    let body = serde_json::json!({"client_params": {"id": id, "group": group}}).to_string();
    let mut resp = http()
        .post(format!("{base}/v1/{op}"))
        .header("fleet-lock-protocol", "true")
        // As Zincati sends it: no Content-Type.
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

fn serve(store: &Store, slots: u64) -> (FleetLockServer, String) {
    let s = FleetLockServer::start(
        store.clone(),
        "127.0.0.1:0",
        ServeOptions {
            default_slots: slots,
            threads: 4,
        },
    )
    .unwrap();
    let base = format!("http://{}", s.local_addr());
    (s, base)
}

fn connect(etcd: &EtcdCluster) -> Store {
    Store::connect(&parse_endpoints(&etcd.endpoints()).unwrap()).unwrap()
}

fn holders(store: &Store, group: &str) -> Vec<String> {
    semaphore::read(store, group)
        .unwrap()
        .map(|(s, _)| s.holders)
        .unwrap_or_default()
}

#[test]
fn the_protocol_as_zincati_speaks_it() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd);
    let (_server, base) = serve(&store, 1);

    assert_eq!(call(&base, "pre-reboot", "m1", "workers").0, 200);
    // Recursive: the holder asking again keeps its one slot.
    assert_eq!(call(&base, "pre-reboot", "m1", "workers").0, 200);
    let (status, body) = call(&base, "pre-reboot", "m2", "workers");
    assert_eq!(status, 409, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["kind"], "failed_lock_semaphore_full");
    assert!(err["value"].as_str().unwrap().contains("m1"), "{body}");
    // Groups are separate semaphores.
    assert_eq!(call(&base, "pre-reboot", "m2", "db").0, 200);
    // Unlocking what one does not hold succeeds and changes nothing.
    assert_eq!(call(&base, "steady-state", "m3", "workers").0, 200);
    assert_eq!(holders(&store, "workers"), ["m1"]);
    assert_eq!(call(&base, "steady-state", "m1", "workers").0, 200);
    assert_eq!(call(&base, "pre-reboot", "m2", "workers").0, 200);
    assert_eq!(holders(&store, "workers"), ["m2"]);

    // What the server refuses, each with a named error and no change.
    let agent = http();
    let no_header = agent
        .post(format!("{base}/v1/pre-reboot"))
        .send(r#"{"client_params":{"id":"m9","group":"workers"}}"#)
        .unwrap();
    assert_eq!(no_header.status().as_u16(), 400);
    for (body, kind) in [
        ("not json", "bad_body"),
        (r#"{"client_params":{"id":"m9"}}"#, "bad_body"),
        (
            r#"{"client_params":{"id":"m9","group":"a b"}}"#,
            "bad_client_params",
        ),
        (
            r#"{"client_params":{"id":"","group":"workers"}}"#,
            "bad_client_params",
        ),
    ] {
        let mut r = agent
            .post(format!("{base}/v1/pre-reboot"))
            .header("fleet-lock-protocol", "true")
            .send(body)
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["kind"], kind, "{body}");
    }
    let get = agent.get(format!("{base}/v1/pre-reboot")).call().unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let nope = agent.get(format!("{base}/v2/x")).call().unwrap();
    assert_eq!(nope.status().as_u16(), 404);
    assert_eq!(holders(&store, "workers"), ["m2"]);
    let mut groups = agent.get(format!("{base}/v1/groups")).call().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&groups.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["workers"]["holders"][0], "m2");
    assert_eq!(v["db"]["total_slots"], 1);
}

#[test]
fn two_servers_share_one_etcd_and_a_restart_loses_nothing() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd);
    let (a, base_a) = serve(&store, 2);
    let (b, base_b) = serve(&connect(&etcd), 2);
    assert_eq!(call(&base_a, "pre-reboot", "m1", "g").0, 200);
    assert_eq!(call(&base_b, "pre-reboot", "m2", "g").0, 200);
    // Two slots, both held: neither server hands out a third.
    assert_eq!(call(&base_a, "pre-reboot", "m3", "g").0, 409);
    assert_eq!(call(&base_b, "pre-reboot", "m3", "g").0, 409);
    // Released through the other server than the one that locked.
    assert_eq!(call(&base_b, "steady-state", "m1", "g").0, 200);
    a.stop();
    b.stop();
    // A new server (new process, new connection) finds the state as left.
    let (_c, base_c) = serve(&connect(&etcd), 5);
    assert_eq!(holders(&store, "g"), ["m2"]);
    assert_eq!(call(&base_c, "pre-reboot", "m3", "g").0, 200);
    // The count lives in etcd: the new server's default does not change it.
    assert_eq!(call(&base_c, "pre-reboot", "m4", "g").0, 409);
}

#[test]
fn racing_lockers_never_exceed_the_slots() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd);
    semaphore::set_slots(&store, "race", 3).unwrap();
    // 24 machines at once, each with its own connection, straight at etcd.
    let granted: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let store = connect(&etcd);
                s.spawn(move || {
                    semaphore::lock(&store, "race", &format!("m{i}"), 1).unwrap()
                        == LockOutcome::Granted
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(granted.iter().filter(|g| **g).count(), 3);
    assert_eq!(holders(&store, "race").len(), 3);

    // Through two servers: machines lock, "reboot", unlock, in a loop; the
    // count of machines between a 200 and their unlock never passes 2.
    semaphore::set_slots(&store, "race2", 2).unwrap();
    let (_a, base_a) = serve(&store, 2);
    let (_b, base_b) = serve(&connect(&etcd), 2);
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for i in 0..10 {
            let base = if i % 2 == 0 { &base_a } else { &base_b };
            let (inside, peak) = (inside.clone(), peak.clone());
            s.spawn(move || {
                let id = format!("w{i}");
                let mut reboots = 0;
                let mut tries = 0;
                while reboots < 3 {
                    tries += 1;
                    assert!(tries < 2000, "{id} never got a slot");
                    if call(base, "pre-reboot", &id, "race2").0 != 200 {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(call(base, "steady-state", &id, "race2").0, 200);
                    reboots += 1;
                }
            });
        }
    });
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert!(holders(&store, "race2").is_empty());
}

#[test]
fn an_operator_releases_a_holder_that_never_came_back() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd);
    let (_s, base) = serve(&store, 1);
    assert_eq!(call(&base, "pre-reboot", "dead", "g").0, 200);
    assert_eq!(call(&base, "pre-reboot", "alive", "g").0, 409);
    assert!(semaphore::unlock(&store, "g", "dead").unwrap());
    assert!(!semaphore::unlock(&store, "g", "dead").unwrap());
    assert_eq!(call(&base, "pre-reboot", "alive", "g").0, 200);
    // Garbage in the key is reported, never overwritten.
    store.put(&semaphore::key("junk"), b"{oops").unwrap();
    assert_eq!(call(&base, "pre-reboot", "x", "junk").0, 503);
    assert_eq!(
        store.get(&semaphore::key("junk")).unwrap().unwrap().value,
        b"{oops"
    );
}
