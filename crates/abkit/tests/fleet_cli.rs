//! `abkit fleetlock` and `abkit rollout` on a real etcd: text and JSON
//! output, and bad input refused with a named error code.

mod common;

use abkit_fleet::testing::EtcdCluster;
use serde_json::Value;

fn json_failure(w: &common::Workdir, args: &[&str]) -> Value {
    let out = w.abkit(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn rollout_and_fleetlock_commands() {
    let etcd = EtcdCluster::start(1);
    let e = etcd.endpoints();
    let w = common::Workdir::new();
    let v = json_failure(&w, &["rollout", "status", "--etcd", &e, "--json"]);
    assert_eq!(v["error"]["code"], "no-rollout");
    let v = json_failure(
        &w,
        &[
            "rollout", "start", "--etcd", &e, "--source", "/x.abb", "--waves", "10%,50%", "--json",
        ],
    );
    assert_eq!(v["error"]["code"], "bad-input");
    let v = json_failure(
        &w,
        &["fleetlock", "status", "--etcd", "https://h:1", "--json"],
    );
    assert_eq!(v["error"]["code"], "bad-input");

    let out = w.ok(&["fleetlock", "slots", "--etcd", &e, "--group", "web", "2"]);
    assert!(out.contains("group web: 2 reboot slots (0 held)"), "{out}");
    let out = w.ok(&[
        "fleetlock",
        "release",
        "--etcd",
        &e,
        "--group",
        "web",
        "--id",
        "m1",
    ]);
    assert!(
        out.contains("m1 holds no reboot slot in group web"),
        "{out}"
    );
    let v: Value =
        serde_json::from_str(&w.ok(&["fleetlock", "status", "--etcd", &e, "--json"])).unwrap();
    assert_eq!(
        v["web"],
        serde_json::json!({"total_slots": 2, "holders": []})
    );

    let v = json_failure(
        &w,
        &[
            "rollout",
            "start",
            "--etcd",
            &e,
            "--source",
            "/srv/os.abb",
            "--json",
        ],
    );
    assert_eq!(v["error"]["code"], "no-machines");
    // Two machines registered (as their agents do at start).
    let store = abkit_fleet::Store::connect(&abkit_fleet::parse_endpoints(&e).unwrap()).unwrap();
    for id in ["m1", "m2"] {
        let rec = abkit_fleet::rollout::MachineRecord {
            id: id.into(),
            group: "web".into(),
            phase: abkit_fleet::rollout::Phase::Idle,
            rollout: None,
            version: Some("1.0.0".into()),
            target_version: None,
            error: None,
            updated_at: 0,
        };
        abkit_fleet::rollout::write_machine(&store, &rec).unwrap();
    }
    let plan: Value = serde_json::from_str(&w.ok(&[
        "rollout",
        "start",
        "--etcd",
        &e,
        "--source",
        "/srv/os.abb",
        "--waves",
        "50%,100%",
        "--max-unavailable",
        "3",
        "--json",
    ]))
    .unwrap();
    assert_eq!(plan["state"], "running");
    assert_eq!(plan["assignment"].as_object().unwrap().len(), 2);
    let status = w.ok(&["rollout", "status", "--etcd", &e]);
    assert!(status.contains("running"), "{status}");
    assert!(status.contains("0 of 2 machines committed"), "{status}");
    let v: Value =
        serde_json::from_str(&w.ok(&["fleetlock", "status", "--etcd", &e, "--json"])).unwrap();
    assert_eq!(v["web"]["total_slots"], 3, "rollout start sets the slots");
    let v = json_failure(&w, &["rollout", "resume", "--etcd", &e, "--json"]);
    assert_eq!(v["error"]["code"], "rollout-state");
    let out = w.ok(&["rollout", "abort", "--etcd", &e]);
    assert!(out.contains("aborted"), "{out}");
    let s: Value =
        serde_json::from_str(&w.ok(&["rollout", "status", "--etcd", &e, "--json"])).unwrap();
    assert_eq!(
        (s["state"].as_str(), s["waves"][0]["machines"].as_u64()),
        (Some("aborted"), Some(1))
    );
}
