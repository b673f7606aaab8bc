//! `abkit agent`: the daemon that runs on every abkit machine.
//!
//! It owns two things:
//! - the **health gate** ([`Agent::health_gate`]): on a trial boot it runs
//!   the configured checks ([`health`]) within a deadline, then either
//!   commits the slot (`mark_good`) or records why not in the slot record
//!   and reboots, so the firmware falls back to the last good slot. On a
//!   committed boot the checks run and are reported, never acted on.
//! - the **node API** ([`api`], [`server`]): HTTP/JSON over a root-only Unix
//!   socket and, when configured, over TCP with TLS where every client
//!   presents a certificate from the operator CA. Updates run as
//!   [`ops`] (one at a time) with the engine's progress events.
//!
//! The agent is idle-cheap: threads block in `accept`, nothing polls.
//! [`poll`] (off by default) checks a release channel on an interval and
//! installs newer versions. In a fleet ([`fleet`]), trial reboots wait for
//! a FleetLock slot and rollouts are followed from etcd. [`client`] lets
//! the CLI find a running agent. Settings: [`config`];
//! systemd readiness and watchdog: [`notify`].

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod fleet;
pub mod fleetlock_client;
pub mod health;
pub mod http;
pub mod notify;
pub mod ops;
pub mod poll;
pub mod server;

mod agent;

pub use agent::{Agent, HealthPhase, HealthState, OpenMachine};
pub use config::{Config, Settings};
pub use error::{AgentError, Result};

/// Runs the agent: binds its listeners (failing early when it cannot),
/// tells systemd it is ready, runs the health gate once, starts polling
/// (when configured), then serves until the process is stopped.
pub fn run(settings: Settings, open: OpenMachine, live: bool) -> Result<()> {
    let unix = server::bind_unix(&settings.socket)?;
    let tls = match &settings.tls {
        Some(t) => Some((server::bind_tcp(&t.listen)?, server::tls_config(t)?)),
        None => None,
    };
    let agent = Agent::new(settings, open, live);
    log::info!("listening on {}", agent.settings.socket.display());
    let a = agent.clone();
    std::thread::Builder::new()
        .name("api-unix".into())
        .spawn(move || server::serve_unix(a, unix))
        .map_err(AgentError::io("start the API thread"))?;
    if let Some((listener, config)) = tls {
        if let Ok(addr) = listener.local_addr() {
            log::info!("listening on https://{addr} (client certificates required)");
        }
        let a = agent.clone();
        std::thread::Builder::new()
            .name("api-tls".into())
            .spawn(move || server::serve_tls(a, listener, config))
            .map_err(AgentError::io("start the TLS API thread"))?;
    }
    notify::notify("READY=1\nSTATUS=serving; health checks starting");
    notify::start_watchdog();
    agent.health_gate();
    poll::start(agent.clone());
    fleet::start(agent.clone());
    loop {
        std::thread::park();
    }
}
