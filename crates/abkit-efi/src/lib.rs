//! The firmware's boot variables, read and written without a firmware.
//!
//! Byte layouts of EFI_LOAD_OPTION and device paths, the boot manager
//! variables (`Boot####`, `BootOrder`, `BootNext`, `BootCurrent`), and the
//! stores they live in: efivarfs, a directory, an OVMF VARS file, memory;
//! Secure Boot keys enrolled into an OVMF VARS file.

pub mod boot;
pub mod boot_vars;
pub mod device_path;
pub mod listing;
pub mod load_option;
pub mod secure_boot;
pub mod store;
pub mod ucs2;

pub use boot::{BootEntry, BootError, BootManager};
pub use device_path::{DevicePath, DevicePathError, DevicePathNode, HardDrive, PartitionSignature};
pub use load_option::{LoadOption, LoadOptionAttributes, LoadOptionError};
pub use store::{
    EfivarfsStore, MemoryStore, OvmfVarsFile, StoreError, VarName, VarStore, Variable,
};
