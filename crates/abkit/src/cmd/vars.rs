//! Choosing the EFI variable store a command works on.

use std::path::PathBuf;

use abkit_efi::store::{EfivarfsStore, OvmfVarsFile, VarStore};
use anyhow::Context;
use clap::Args;

/// Where the firmware's variables are read and written.
#[derive(Args, Debug, Clone, Default)]
pub struct VarStoreArgs {
    /// Use the variables in DIR: a mounted efivarfs, or any folder of files
    /// in efivarfs format (`Name-vendor-guid`, 4-byte attributes + data).
    /// Default: the running system's /sys/firmware/efi/efivars.
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        conflicts_with = "ovmf_vars",
        help_heading = "Machine"
    )]
    pub efivars: Option<PathBuf>,

    /// Use the variable store inside an OVMF VARS firmware file (such as a
    /// copy of /usr/share/OVMF/OVMF_VARS_4M.fd that a VM boots with).
    #[arg(long, value_name = "FILE", help_heading = "Machine")]
    pub ovmf_vars: Option<PathBuf>,
}

impl VarStoreArgs {
    /// Opens the chosen store.
    pub fn open(&self) -> anyhow::Result<Box<dyn VarStore>> {
        if let Some(file) = &self.ovmf_vars {
            let store = OvmfVarsFile::open(file)
                .with_context(|| format!("cannot open OVMF VARS file {}", file.display()))?;
            return Ok(Box::new(store));
        }
        let dir = self
            .efivars
            .clone()
            .unwrap_or_else(|| PathBuf::from(abkit_efi::store::EFIVARFS_PATH));
        if abkit_efi::store::is_efivarfs(&dir) {
            return Ok(Box::new(EfivarfsStore::kernel(dir)));
        }
        if self.efivars.is_none() {
            anyhow::bail!(
                "no EFI variables at {}: this system was not booted with UEFI (or efivarfs is \
                 not mounted); use --efivars DIR or --ovmf-vars FILE to work on a copy",
                dir.display()
            );
        }
        anyhow::ensure!(dir.is_dir(), "--efivars {}: not a directory", dir.display());
        Ok(Box::new(EfivarfsStore::directory(dir)))
    }
}
