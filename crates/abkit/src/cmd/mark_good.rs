//! `abkit mark-good`: the running slot passed its health checks.

use clap::Args;

use super::machine::MachineArgs;

#[derive(Args)]
pub struct MarkGoodArgs {
    #[command(flatten)]
    machine: MachineArgs,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: MarkGoodArgs) -> anyhow::Result<()> {
    super::agent::refuse_if_agent_runs(&args.machine)?;
    let mut m = args.machine.open()?;
    let report = abkit_update::mark_good(m.as_mut())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let slot = report.slot.map_or('?', |s| s.letter());
    if report.changes.is_empty() {
        println!("slot {slot} is good and committed; nothing to change");
    } else {
        for c in &report.changes {
            println!("{c}");
        }
        println!("slot {slot} is good and committed");
    }
    Ok(())
}
