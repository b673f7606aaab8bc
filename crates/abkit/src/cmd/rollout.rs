//! `abkit rollout`: put a release in etcd for the fleet's agents, in waves
//! (start), watch it (status), and steer it (resume after a halt, abort).

use abkit_fleet::rollout::{self, Plan, StartOptions, Status};
use clap::{Args, Subcommand};

use super::etcd::{EtcdArgs, EtcdQueryArgs};

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Write the release and its wave plan into etcd; agents install when
    /// their wave opens and reboot through FleetLock.
    Start(StartArgs),
    /// Per-wave counts: pending, installing, rebooting, committed, rolled
    /// back (--json: state, per-wave counts, totals).
    Status(EtcdQueryArgs),
    /// Continue a halted rollout (its failures so far are accepted;
    /// --json prints the plan).
    Resume(EtcdQueryArgs),
    /// Stop: no machine starts an install any more (--json prints the plan).
    Abort(EtcdQueryArgs),
}

#[derive(Args)]
pub struct StartArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The release, as each agent's install takes it: an https:// bundle
    /// URL or an absolute path on the machines.
    #[arg(long, value_name = "SOURCE")]
    source: String,
    /// Cumulative shares of the fleet per wave; a wave opens when every
    /// machine of the ones before it has finished.
    #[arg(long, value_name = "P%,...", default_value = "1%,10%,50%,100%")]
    waves: String,
    /// How many machines of a group may be rebooting at once (sets the
    /// groups' FleetLock slots).
    #[arg(long, value_name = "K", default_value_t = 1)]
    max_unavailable: u64,
    /// Halt when this many machines of one wave fail their trial.
    #[arg(long, value_name = "N", default_value_t = 1)]
    halt_after: u32,
    /// Print the plan as JSON (machine → wave in "assignment").
    #[arg(long)]
    json: bool,
}

fn print_plan(plan: &Plan, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(plan)?);
    } else {
        println!(
            "rollout {} {verb}: {} ({} machines, waves {}), now {}, wave {} open",
            plan.id,
            plan.source,
            plan.assignment.len(),
            plan.waves
                .iter()
                .map(|w| format!("{w}%"))
                .collect::<Vec<_>>()
                .join(","),
            plan.state,
            plan.open_wave + 1
        );
    }
    Ok(())
}

fn print_status(s: &Status) {
    println!("rollout {}: {} ({})", s.id, s.state, s.source);
    if let Some(r) = &s.reason {
        println!("  {r}");
    }
    println!(
        "  {:<6} {:>5} {:>8} {:>8} {:>10} {:>10} {:>9} {:>11} {:>7}",
        "wave",
        "share",
        "machines",
        "pending",
        "installing",
        "rebooting",
        "committed",
        "rolled back",
        "failed"
    );
    for (i, w) in s.waves.iter().enumerate() {
        let open = if i <= s.open_wave { "*" } else { " " };
        println!(
            "  {:<6} {:>4}% {:>8} {:>8} {:>10} {:>10} {:>9} {:>11} {:>7}",
            format!("{}{open}", i + 1),
            w.percent,
            w.machines,
            w.pending,
            w.installing,
            w.rebooting,
            w.committed,
            w.rolled_back,
            w.failed
        );
    }
    println!(
        "  {} of {} machines committed, {} rolled back, {} failed (* = open wave)",
        s.committed, s.machines, s.rolled_back, s.failed
    );
}

pub fn run(cmd: RolloutCommand) -> anyhow::Result<()> {
    match cmd {
        RolloutCommand::Start(a) => {
            let store = a.etcd.connect()?;
            let plan = rollout::start(
                &store,
                &StartOptions {
                    source: a.source,
                    waves: rollout::parse_waves(&a.waves)?,
                    max_unavailable: a.max_unavailable,
                    halt_after: a.halt_after,
                },
            )?;
            if plan.assignment.is_empty() {
                log::warn!(
                    "no machine has registered in etcd yet: all that join go in the last wave"
                );
            }
            print_plan(&plan, a.json, "started")
        }
        RolloutCommand::Status(a) => {
            let s = rollout::status(&a.etcd.connect()?)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(())
        }
        RolloutCommand::Resume(a) => {
            let plan = rollout::resume(&a.etcd.connect()?)?;
            print_plan(&plan, a.json, "resumed")
        }
        RolloutCommand::Abort(a) => {
            let plan = rollout::abort(&a.etcd.connect()?)?;
            print_plan(&plan, a.json, "aborted")
        }
    }
}
