//! Rollout plans against a real etcd: waves open when the machines before
//! them finished, a rollout halts at `halt_after` failures of one wave,
//! resume and abort, stable assignment across reruns, and machines racing
//! to advance the plan.

use abkit_fleet::rollout::{self, MachineRecord, Phase, RolloutState, StartOptions};
use abkit_fleet::testing::EtcdCluster;
use abkit_fleet::{FleetError, Store, parse_endpoints, semaphore};

fn connect(etcd: &EtcdCluster) -> Store {
    Store::connect(&parse_endpoints(&etcd.endpoints()).unwrap()).unwrap()
}

fn register(store: &Store, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("m-{i:02}")).collect();
    for id in &ids {
        rollout::write_machine(store, &record(id, Phase::Idle, None)).unwrap();
    }
    ids
}

fn record(id: &str, phase: Phase, rollout: Option<&str>) -> MachineRecord {
    MachineRecord {
        id: id.into(),
        group: "default".into(),
        phase,
        rollout: rollout.map(str::to_string),
        version: Some("1.0.0".into()),
        target_version: None,
        error: None,
        updated_at: 0,
    }
}

fn opts(halt_after: u32) -> StartOptions {
    StartOptions {
        source: "/srv/os-1.1.0.abb".into(),
        waves: vec![10, 50, 100],
        max_unavailable: 2,
        halt_after,
    }
}

/// Machine `id` finishes its step of rollout `plan` with `phase`.
fn finish(store: &Store, plan: &str, id: &str, phase: Phase) {
    rollout::write_machine(store, &record(id, phase, Some(plan))).unwrap();
    rollout::advance(store).unwrap();
}

#[test]
fn waves_open_in_order_and_the_rollout_completes() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd);
    let ids = register(&store, 20);
    let plan = rollout::start(&store, &opts(2)).unwrap();
    assert_eq!(plan.state, RolloutState::Running);
    assert_eq!(plan.open_wave, 0);
    // The groups' FleetLock slots follow --max-unavailable.
    assert_eq!(
        semaphore::read(&store, "default")
            .unwrap()
            .unwrap()
            .0
            .total_slots,
        2
    );
    let in_wave = |w: usize| -> Vec<String> {
        ids.iter()
            .filter(|id| plan.wave_of(id) == w)
            .cloned()
            .collect()
    };
    assert_eq!(in_wave(0).len(), 2);
    assert_eq!(in_wave(1).len(), 8);
    assert!(!plan.may_install(&in_wave(1)[0]));
    finish(&store, &plan.id, &in_wave(0)[0], Phase::Committed);
    assert_eq!(rollout::read_plan(&store).unwrap().unwrap().0.open_wave, 0);
    // One failure, below the threshold of 2: tolerated, the wave finishes.
    finish(&store, &plan.id, &in_wave(0)[1], Phase::RolledBack);
    let p = rollout::read_plan(&store).unwrap().unwrap().0;
    assert_eq!((p.open_wave, p.state), (1, RolloutState::Running));
    assert!(p.may_install(&in_wave(1)[0]));
    for w in [1, 2] {
        for id in in_wave(w) {
            finish(&store, &plan.id, &id, Phase::Committed);
        }
    }
    let s = rollout::status(&store).unwrap();
    assert_eq!(s.state, RolloutState::Completed);
    assert_eq!((s.committed, s.rolled_back, s.machines), (19, 1, 20));
    // A finished rollout lets a new one start; the same machines land in
    // the same waves (the canaries do not change between reruns).
    let again = rollout::start(&store, &opts(2)).unwrap();
    assert_ne!(again.id, plan.id);
    assert_eq!(again.assignment, plan.assignment);
}

#[test]
fn a_wave_with_enough_failures_halts_until_resumed_or_aborted() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd);
    let ids = register(&store, 30);
    let plan = rollout::start(&store, &opts(2)).unwrap();
    let first: Vec<&String> = ids.iter().filter(|id| plan.wave_of(id) == 0).collect();
    assert_eq!(first.len(), 3);
    // A second start while one runs is refused, naming it.
    let err = rollout::start(&store, &opts(2)).unwrap_err();
    assert!(matches!(err, FleetError::RolloutState { .. }), "{err}");
    finish(&store, &plan.id, first[0], Phase::RolledBack);
    finish(&store, &plan.id, first[1], Phase::Failed);
    let p = rollout::read_plan(&store).unwrap().unwrap().0;
    assert_eq!(p.state, RolloutState::Halted);
    assert!(
        p.reason.as_deref().unwrap().contains("wave 1"),
        "{:?}",
        p.reason
    );
    // No machine may install after a halt, not even the first wave's last.
    assert!(!p.may_install(first[2]));
    assert_eq!(p.open_wave, 0);
    // Resume accepts those two failures; the wave goes on.
    let p = rollout::resume(&store).unwrap();
    assert_eq!(p.state, RolloutState::Running);
    assert!(p.may_install(first[2]));
    let err = rollout::resume(&store).unwrap_err();
    assert!(matches!(err, FleetError::RolloutState { .. }));
    // One new failure elsewhere does not halt again (threshold 2).
    finish(&store, &plan.id, first[2], Phase::RolledBack);
    let p = rollout::read_plan(&store).unwrap().unwrap().0;
    assert_eq!((p.state, p.open_wave), (RolloutState::Running, 1));
    let p = rollout::abort(&store).unwrap();
    assert_eq!(p.state, RolloutState::Aborted);
    assert!(ids.iter().all(|id| !p.may_install(id)));
    assert!(rollout::abort(&store).is_err());
    assert!(matches!(
        rollout::resume(&store).unwrap_err(),
        FleetError::RolloutState { .. }
    ));
}

#[test]
fn machines_racing_to_advance_the_plan_lose_nothing() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd);
    let ids = register(&store, 24);
    let plan = rollout::start(
        &store,
        &StartOptions {
            waves: vec![100],
            ..opts(1)
        },
    )
    .unwrap();
    // All 24 finish at once, each on its own connection: exactly one
    // advance sees the last machine, and the plan completes.
    std::thread::scope(|s| {
        for id in &ids {
            let store = connect(&etcd);
            let plan = plan.id.clone();
            s.spawn(move || finish(&store, &plan, id, Phase::Committed));
        }
    });
    let s = rollout::status(&store).unwrap();
    assert_eq!((s.state, s.committed), (RolloutState::Completed, 24));
}

#[test]
fn no_rollout_and_bad_options_are_named_errors() {
    let etcd = EtcdCluster::start(1);
    let store = connect(&etcd);
    assert!(matches!(
        rollout::status(&store),
        Err(FleetError::NoRollout)
    ));
    assert!(matches!(rollout::abort(&store), Err(FleetError::NoRollout)));
    assert!(matches!(
        rollout::start(
            &store,
            &StartOptions {
                max_unavailable: 0,
                ..opts(1)
            }
        ),
        Err(FleetError::BadInput(_))
    ));
    assert!(matches!(
        rollout::start(
            &store,
            &StartOptions {
                source: "os.abb".into(),
                ..opts(1)
            }
        ),
        Err(FleetError::BadInput(_))
    ));
    // Garbage in the plan key is reported, never overwritten by advance.
    store.put(rollout::PLAN_KEY, b"nope").unwrap();
    let err = rollout::advance(&store).unwrap_err();
    assert_eq!(err.code(), "etcd-corrupt");
    assert_eq!(
        store.get(rollout::PLAN_KEY).unwrap().unwrap().value,
        b"nope"
    );
    assert!(parse_endpoints("").is_err());
    assert!(parse_endpoints("https://x:2379").is_err());
    assert_eq!(
        parse_endpoints("127.0.0.1:1, http://h:2").unwrap(),
        ["http://127.0.0.1:1", "http://h:2"]
    );
}
