//! `abkit status`: what runs, what is committed, what each slot holds.

use clap::Args;

use super::machine::MachineArgs;

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    machine: MachineArgs,

    /// Print one JSON object (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let mut m = args.machine.open()?;
    let s = abkit_update::status(m.as_mut())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("running slot:   {}", s.running_slot.letter());
    if s.committed_by_boot_order {
        println!("committed slot: {}", s.committed_slot.letter());
    } else {
        println!(
            "committed slot: {} (BootOrder holds no active entry of ours: booted by the fallback loader; `abkit mark-good` repairs the entries)",
            s.committed_slot.letter()
        );
    }
    if s.trial_pending {
        println!(
            "trial pending:  yes, the next boot tries slot {}",
            s.running_slot.other().letter()
        );
    } else {
        println!("trial pending:  no");
    }
    if s.on_trial {
        println!("on trial:       yes, this boot is not marked good yet");
    }
    let bc = &s.boot_control;
    println!(
        "boot control:   {} (in use: {}){}",
        bc.mode,
        bc.active.name(),
        bc.reason
            .as_deref()
            .map(|r| format!("; {r}"))
            .unwrap_or_default()
    );
    if let Some(st) = &bc.loader_state {
        println!(
            "loader state:   committed {}, trial {}, tries left {}",
            st.committed.letter(),
            st.trial.map_or('-', |t| t.letter()),
            st.tries_left
        );
    }
    if let Some(how) = &bc.booted_by_preloader {
        println!("this boot:      started by the pre-loader ({how})");
    }
    for problem in &s.problems {
        println!("warning:        {problem}");
    }
    for (name, slot) in &s.slots {
        let r = &slot.record;
        println!(
            "slot {name}: {:<9} {} {}{}",
            r.state.to_string(),
            r.compatible.as_deref().unwrap_or("-"),
            r.version
                .as_ref()
                .map_or_else(|| "-".to_string(), |v| v.to_string()),
            if slot.loader_present {
                ""
            } else {
                " (no loader on the ESP)"
            }
        );
        match r.written_check {
            Some(abkit_update::WrittenCheck::Pending) => println!(
                "        written data not yet checked: mark-good reads it back and checks it before it commits"
            ),
            Some(abkit_update::WrittenCheck::Failed) => println!(
                "        written data did not match its signed verity root hash (see its record's health)"
            ),
            _ => {}
        }
    }
    for e in &s.entries {
        println!(
            "Boot{:04X}{} {}\t{}",
            e.number,
            if e.active { "*" } else { " " },
            e.description,
            e.device_path
        );
    }
    Ok(())
}
