//! abkit's fleet layer, on etcd (no store of our own): the FleetLock
//! reboot semaphore and its HTTP server ([`semaphore`], [`server`]), and
//! rollouts in waves ([`rollout`]). [`store`] is the blocking etcd client
//! they share with the agent. docs/fleet.md tells the whole design.

pub mod error;
pub mod rollout;
pub mod semaphore;
pub mod server;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{FleetError, Result};
pub use store::{Store, parse_endpoints};
