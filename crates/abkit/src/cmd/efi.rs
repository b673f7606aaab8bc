//! `abkit efi`: show and change the firmware's boot variables.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum EfiCommand {
    /// List BootCurrent, BootNext, BootOrder and every Boot#### entry.
    List,
}

pub fn run(cmd: EfiCommand) -> anyhow::Result<()> {
    match cmd {
        EfiCommand::List => Ok(()),
    }
}
