//! The logic of the abkit EFI loader that does not need a firmware.
//!
//! The loader (`loader/`, built for `x86_64-unknown-uefi`) and the host tools
//! (`abkit uki`) share it, and it is tested here on the host: the slot from the
//! loader's own file name, the `SYSTEM-X` command-line rewrite, the PE section
//! reader, the slot stamp in the certificate table, what it measures into
//! the TPM, and the names and GUIDs of the variables the loader sets.
#![cfg_attr(not(test), no_std)]

pub mod cmdline;
pub mod guid;
pub mod measure;
pub mod pe;
pub mod slot;
pub mod stamp;
pub mod vars;

pub use cmdline::{CmdlineError, rewrite_slot_placeholder, trim_cmdline};
pub use guid::{ABKIT_VENDOR_GUID, ABKIT_VENDOR_GUID_EFI, ABKIT_VENDOR_GUID_STR};
pub use pe::{Layout, PeError, PeImage, SectionHeader, SectionName, check_efi_application};
pub use slot::Slot;
pub use stamp::StampError;

/// Name of the PE section that marks a file as an abkit loader stub.
///
/// The stub carries it (with [`STUB_MARKER_PREFIX`] and its version as
/// content); `abkit uki build` refuses a stub without it.
pub const STUB_MARKER_SECTION: &str = ".abkit";

/// Start of the content of the [`STUB_MARKER_SECTION`]: `abkit-stub <version>`.
pub const STUB_MARKER_PREFIX: &str = "abkit-stub ";

/// The UKI sections the stub reads, in the order `abkit uki build` appends them
/// (the order systemd's ukify uses: the kernel last).
pub const UKI_SECTIONS: [&str; 4] = [".osrel", ".cmdline", ".initrd", ".linux"];
