//! `abkit fleetlock`: the FleetLock server (Zincati's reboot-coordination
//! protocol) on etcd, and the operator's view of its semaphores: status,
//! slots per group, releasing a holder that never came back.

use abkit_fleet::semaphore;
use abkit_fleet::server::{FleetLockServer, ServeOptions};
use clap::{Args, Subcommand};

use super::etcd::{EtcdArgs, EtcdQueryArgs};

#[derive(Subcommand)]
pub enum FleetlockCommand {
    /// Serve FleetLock (POST /v1/pre-reboot, /v1/steady-state) with the
    /// semaphores in etcd. Run as many as you like against one cluster.
    Serve(ServeArgs),
    /// Show each group's reboot slots and who holds them (--json:
    /// {"GROUP": {"total_slots", "holders"}}).
    Status(EtcdQueryArgs),
    /// Release the slot a machine holds (one that died while rebooting).
    Release(ReleaseArgs),
    /// Set how many machines of a group may reboot at once.
    Slots(SlotsArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Where to listen (HOST:PORT).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Reboot slots of a group the first time it is seen (after that the
    /// count in etcd rules: `abkit fleetlock slots`, `rollout start`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    slots: u64,
    /// Threads answering requests.
    #[arg(long, value_name = "N", default_value_t = 8)]
    threads: usize,
}

#[derive(Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[arg(long, default_value = "default")]
    group: String,
    /// The machine id holding the slot.
    #[arg(long)]
    id: String,
}

#[derive(Args)]
pub struct SlotsArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[arg(long, default_value = "default")]
    group: String,
    /// How many machines may hold a slot at once.
    slots: u64,
}

pub fn run(cmd: FleetlockCommand) -> anyhow::Result<()> {
    match cmd {
        FleetlockCommand::Serve(a) => {
            let store = a.etcd.connect()?;
            let server = FleetLockServer::start(
                store,
                &a.listen,
                ServeOptions {
                    default_slots: a.slots,
                    threads: a.threads,
                },
            )?;
            log::info!(
                "FleetLock on http://{} (etcd {})",
                server.local_addr(),
                a.etcd.etcd
            );
            eprintln!("abkit fleetlock: serving on http://{}", server.local_addr());
            server.wait();
            Ok(())
        }
        FleetlockCommand::Status(a) => {
            let groups = semaphore::list(&a.etcd.connect()?)?;
            if a.json {
                let map: serde_json::Map<String, serde_json::Value> = groups
                    .into_iter()
                    .map(|(g, s)| (g, serde_json::to_value(s).unwrap_or_default()))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&map)?);
                return Ok(());
            }
            if groups.is_empty() {
                println!("no group has asked for a reboot slot yet");
            }
            for (g, s) in groups {
                println!(
                    "{g}: {}/{} slots held{}{}",
                    s.holders.len(),
                    s.total_slots,
                    if s.holders.is_empty() { "" } else { " by " },
                    s.holders.join(", ")
                );
            }
            Ok(())
        }
        FleetlockCommand::Release(a) => {
            if semaphore::unlock(&a.etcd.connect()?, &a.group, &a.id)? {
                println!("released {}'s reboot slot in group {}", a.id, a.group);
            } else {
                println!("{} holds no reboot slot in group {}", a.id, a.group);
            }
            Ok(())
        }
        FleetlockCommand::Slots(a) => {
            if a.slots == 0 {
                anyhow::bail!("0 slots would stop every reboot; give at least 1");
            }
            let s = semaphore::set_slots(&a.etcd.connect()?, &a.group, a.slots)?;
            println!(
                "group {}: {} reboot slots ({} held)",
                a.group,
                s.total_slots,
                s.holders.len()
            );
            Ok(())
        }
    }
}
