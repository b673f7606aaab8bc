//! `abkit mark-good`: the running slot passed its health checks. Before it
//! commits a trial slot it checks the slot's written data against the
//! signed verity root hash (issue 14).

use clap::Args;

use super::machine::MachineArgs;
use super::progress::Output;

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
    // The check of a trial slot's written data takes a while: its progress
    // goes to stderr, stdout keeps only the report.
    let mut out = Output::on_stderr();
    let report = abkit_update::mark_good_with(m.as_mut(), &mut out);
    out.finish();
    let report = report?;
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
