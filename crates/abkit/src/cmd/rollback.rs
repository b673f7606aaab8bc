//! `abkit rollback`: boot the other slot once.

use clap::Args;

use super::machine::MachineArgs;

#[derive(Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    machine: MachineArgs,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: RollbackArgs) -> anyhow::Result<()> {
    super::agent::refuse_if_agent_runs(&args.machine)?;
    let mut m = args.machine.open()?;
    let report = abkit_update::rollback(m.as_mut())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let otherwise = if report.otherwise == report.slot {
            format!(
                "slot {} is the committed slot already: the machine stays there",
                report.otherwise.letter()
            )
        } else {
            format!(
                "otherwise the machine comes back to the committed slot {}",
                report.otherwise.letter()
            )
        };
        println!(
            "The next boot runs slot {} ({}) once (BootNext = Boot{:04X}). It becomes permanent \
             only if it is marked good there; {otherwise}.",
            report.slot.letter(),
            report.version.as_deref().unwrap_or("unknown version"),
            report.boot_next
        );
    }
    Ok(())
}
