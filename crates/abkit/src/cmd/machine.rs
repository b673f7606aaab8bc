//! The machine a command acts on: the running system (default) or a disk
//! image offline. Every command that acts on a machine flattens these
//! options in (they are not global: `uki build --cmdline` means something
//! else).

use std::path::PathBuf;

use abkit_update::live::{LiveMachine, LiveOptions, slot_from_cmdline};
use abkit_update::offline::OfflineMachine;
use abkit_update::{Machine, Slot};
use anyhow::Context;
use clap::{Args, ValueEnum};

use super::vars::VarStoreArgs;

/// A slot letter on the command line (`A` or `B`, either case); the one
/// conversion from the command line into [`Slot`].
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SlotArg {
    #[value(name = "A", alias = "a")]
    A,
    #[value(name = "B", alias = "b")]
    B,
}

impl From<SlotArg> for Slot {
    fn from(s: SlotArg) -> Slot {
        match s {
            SlotArg::A => Slot::A,
            SlotArg::B => Slot::B,
        }
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct MachineArgs {
    #[command(flatten)]
    pub vars: VarStoreArgs,

    /// Work offline on this disk image (or unmounted block device) instead
    /// of the running system. Needs --ovmf-vars or --efivars for the
    /// firmware variables and --booted-slot (or --cmdline) for the slot
    /// taken to be running.
    #[arg(long, value_name = "IMAGE", help_heading = "Machine")]
    pub disk: Option<PathBuf>,

    /// With --disk: the slot that is running (A or B).
    #[arg(
        long,
        value_name = "SLOT",
        ignore_case = true,
        help_heading = "Machine"
    )]
    pub booted_slot: Option<SlotArg>,

    /// Read the running slot from this kernel command line file instead of
    /// /proc/cmdline (looks for `KEY=PARTLABEL=<PREFIX>-SYSTEM-A|B`).
    #[arg(long, value_name = "FILE", help_heading = "Machine")]
    pub cmdline: Option<PathBuf>,

    /// Live system: use the ESP mounted here instead of finding its mount
    /// point (or mounting it privately).
    #[arg(long, value_name = "DIR", help_heading = "Machine")]
    pub esp_mount: Option<PathBuf>,
}

impl MachineArgs {
    /// Opens the machine these options describe.
    pub fn open(&self) -> anyhow::Result<Box<dyn Machine>> {
        let Some(disk) = &self.disk else {
            anyhow::ensure!(
                self.vars.ovmf_vars.is_none(),
                "--ovmf-vars needs --disk: a live system keeps its variables in efivarfs"
            );
            let machine = LiveMachine::open(
                &LiveOptions {
                    cmdline: self.cmdline.clone(),
                    esp_mount: self.esp_mount.clone(),
                    lock_path: None,
                },
                self.vars.open()?,
            )
            .context("cannot open the running system (use --disk IMAGE to work offline)")?;
            return Ok(Box::new(machine));
        };
        anyhow::ensure!(
            self.vars.efivars.is_some() || self.vars.ovmf_vars.is_some(),
            "--disk needs the firmware variables too: --ovmf-vars FILE or --efivars DIR"
        );
        let running = match (self.booted_slot, &self.cmdline) {
            (Some(s), _) => Slot::from(s),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("read {}", file.display()))?;
                slot_from_cmdline(&text)
                    .with_context(|| format!("read the running slot from {}", file.display()))?
                    .with_context(|| {
                        format!(
                            "{} names no <PREFIX>-SYSTEM-A or -B partition label (as in root=PARTLABEL=ABKIT-SYSTEM-A)",
                            file.display()
                        )
                    })?
            }
            (None, None) => anyhow::bail!("--disk needs --booted-slot A|B (or --cmdline FILE)"),
        };
        let store = self.vars.open()?;
        let machine = OfflineMachine::open(disk, store, running)
            .with_context(|| format!("cannot open disk image {}", disk.display()))?;
        Ok(Box::new(machine))
    }
}
