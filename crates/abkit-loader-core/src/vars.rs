//! The EFI variables the loader sets at boot, so the running OS can tell how
//! it was booted: the Boot Loader Interface variables Linux tools read, and
//! abkit's own record of the booted slot. All are volatile (boot-service and
//! runtime access, attributes 0x6) and hold NUL-terminated UCS-2 text.

/// Boot-service and runtime access, not non-volatile: gone after a reset.
pub const VOLATILE_BS_RT: u32 = 0x2 | 0x4;

/// The ESP's GPT partition GUID, upper-case text (vendor
/// [`crate::guid::LOADER_INTERFACE_GUID_STR`]).
pub const LOADER_DEVICE_PART_UUID: &str = "LoaderDevicePartUUID";
/// The loader's own file path, e.g. `\EFI\abkit\boot-b.efi` (vendor
/// [`crate::guid::LOADER_INTERFACE_GUID_STR`]).
pub const LOADER_IMAGE_IDENTIFIER: &str = "LoaderImageIdentifier";
/// The slot the loader booted, `A` or `B` (vendor
/// [`crate::guid::ABKIT_VENDOR_GUID_STR`]).
pub const ABKIT_BOOTED_SLOT: &str = "AbkitBootedSlot";
/// Set by the loader acting as the pre-loader (state-file boot control)
/// before it starts a slot's loader: `<slot> <why>`, e.g. `B trial`,
/// `A committed`, `A tries-exhausted` (vendor
/// [`crate::guid::ABKIT_VENDOR_GUID_STR`]). A slot loader that sees it does
/// not count the trial again.
pub const ABKIT_PRELOADER: &str = "AbkitPreloader";
