//! The firmware's boot variables, read and written without a firmware.
//!
//! Byte layouts of EFI_LOAD_OPTION and device paths, the boot manager
//! variables (`Boot####`, `BootOrder`, `BootNext`, `BootCurrent`), and the
//! stores they live in: efivarfs, a directory, an OVMF VARS file, memory.
