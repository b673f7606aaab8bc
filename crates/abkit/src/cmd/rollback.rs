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
    if let Some(socket) = super::agent::running_agent_socket(&args.machine) {
        // The agent owns the machine: it arms the rollback.
        let (status, body) = abkit_agent::client::request(&socket, "POST", "/v1/rollback", None)?;
        if status != 200 {
            return Err(super::agent::AgentReported::from_body(&body).into());
        }
        let r = &body["result"];
        if args.json {
            println!("{}", serde_json::to_string_pretty(r)?);
        } else {
            println!(
                "Through the agent on {}: the next boot runs slot {} ({}) once (BootNext = \
                 Boot{:04X}). It becomes permanent only if it is marked good there.",
                socket.display(),
                r["slot"].as_str().unwrap_or("?"),
                r["version"].as_str().unwrap_or("unknown version"),
                r["boot_next"].as_u64().unwrap_or(0)
            );
        }
        return Ok(());
    }
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
