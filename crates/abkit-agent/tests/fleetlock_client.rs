//! The agent's FleetLock client against abkit's own server on a real etcd:
//! lock, refusal with the server's reason, unlock, and failover to the
//! next server when the first is down.

use abkit_agent::fleetlock_client::{FleetLockClient, FleetLockError};
use abkit_fleet::server::{FleetLockServer, ServeOptions};
use abkit_fleet::testing::{EtcdCluster, free_port};
use abkit_fleet::{Store, parse_endpoints, semaphore};

#[test]
fn the_client_locks_is_refused_unlocks_and_fails_over() {
    let etcd = EtcdCluster::start(1);
    let store = Store::connect(&parse_endpoints(&etcd.endpoints()).unwrap()).unwrap();
    let server = FleetLockServer::start(
        store.clone(),
        "127.0.0.1:0",
        ServeOptions {
            default_slots: 1,
            threads: 2,
        },
    )
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    let dead = format!("http://127.0.0.1:{}", free_port());
    let a = FleetLockClient::new(vec![dead.clone(), url.clone()], "node-a", "web");
    let b = FleetLockClient::new(vec![url.clone()], "node-b", "web");
    a.pre_reboot().unwrap();
    a.pre_reboot().unwrap();
    match b.pre_reboot() {
        Err(FleetLockError::Refused {
            status,
            kind,
            value,
            ..
        }) => {
            assert_eq!((status, kind.as_str()), (409, "failed_lock_semaphore_full"));
            assert!(value.contains("node-a"), "{value}");
        }
        other => panic!("{other:?}"),
    }
    a.steady_state().unwrap();
    b.pre_reboot().unwrap();
    assert_eq!(
        semaphore::read(&store, "web").unwrap().unwrap().0.holders,
        ["node-b"]
    );
    // Only dead servers: a named error, nothing changed.
    let c = FleetLockClient::new(vec![dead], "node-c", "web");
    assert!(matches!(
        c.steady_state(),
        Err(FleetLockError::Unreachable { .. })
    ));
    server.stop();
}
