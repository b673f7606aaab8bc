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
pub mod loader_state;
pub mod measure;
pub mod pe;
pub mod slot;
pub mod stamp;
pub mod vars;

pub use cmdline::{CmdlineError, rewrite_slot_placeholder, trim_cmdline};
pub use guid::{ABKIT_VENDOR_GUID, ABKIT_VENDOR_GUID_EFI, ABKIT_VENDOR_GUID_STR};
pub use loader_state::{LoaderState, StateError};
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

/// The suffix of the name every file abkit replaces on the ESP is first
/// written under, before it is renamed into place (host and loader alike;
/// abkit-disk re-exports it).
pub const TEMP_SUFFIX: &str = ".abkit-new";

#[cfg(test)]
mod temp_name_tests {
    #[test]
    fn the_state_temp_name_follows_the_convention() {
        assert_eq!(
            crate::loader_state::STATE_TEMP_PATH,
            format!("{}{}", crate::loader_state::STATE_PATH, crate::TEMP_SUFFIX)
        );
    }
}
