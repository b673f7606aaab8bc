//! `abkit efi`: show the firmware's boot variables, like `efibootmgr -v`
//! (the listing is `abkit_efi::listing`; this prints it).

use abkit_efi::boot::BootManager;
use clap::{Args, Subcommand};

use super::vars::VarStoreArgs;

#[derive(Subcommand)]
pub enum EfiCommand {
    /// List BootCurrent, BootNext, BootOrder and every Boot#### entry.
    ///
    /// Entries marked `*` are active. Each line shows the description and
    /// the device path in UEFI text form, e.g.
    /// `HD(1,GPT,<guid>,0x800,0x40000)/\EFI\abkit\boot-a.efi`.
    /// Entries that cannot be decoded are listed as unreadable; they never
    /// stop the listing. Look-alike names firmware does not boot (such as
    /// `Boot001a`, lower-case hex) are listed as non-compliant.
    /// In the text output, control characters in descriptions and paths are
    /// escaped (`\n`, `\u{1b}`); `--json` gives them exactly.
    List(ListArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: VarStoreArgs,

    /// Print one JSON object instead of text (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: EfiCommand) -> anyhow::Result<()> {
    match cmd {
        EfiCommand::List(args) => list(args),
    }
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut store = args.store.open()?;
    let listing = abkit_efi::listing::list(&BootManager::new(store.as_mut()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    print!("{listing}");
    for e in &listing.errors {
        eprintln!("abkit: warning: {e}");
    }
    Ok(())
}
