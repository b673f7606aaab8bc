//! The vendor GUIDs of the variables the loader sets, and GUID text.
//!
//! Each GUID is given three ways: its text, its bytes in RFC 4122 order
//! (`uuid::Uuid::from_bytes`), and its bytes in the EFI mixed-endian order
//! used on disk and by the firmware (`uuid::Uuid::from_bytes_le`).

/// abkit's own vendor GUID, for abkit's EFI variables (see docs/loader.md).
pub const ABKIT_VENDOR_GUID_STR: &str = "0cb28c03-08a8-4002-8767-6d62b5d8e9f0";
/// [`ABKIT_VENDOR_GUID_STR`] in RFC 4122 byte order.
pub const ABKIT_VENDOR_GUID: [u8; 16] = [
    0x0c, 0xb2, 0x8c, 0x03, 0x08, 0xa8, 0x40, 0x02, 0x87, 0x67, 0x6d, 0x62, 0xb5, 0xd8, 0xe9, 0xf0,
];
/// [`ABKIT_VENDOR_GUID_STR`] in EFI (mixed-endian) byte order.
pub const ABKIT_VENDOR_GUID_EFI: [u8; 16] = efi_order(ABKIT_VENDOR_GUID);

/// abkit's `CertType` GUID for the slot stamp: the `WIN_CERTIFICATE_UEFI_GUID`
/// entry in a loader's certificate table that names its slot (see
/// [`crate::stamp`] and docs/loader.md). A GUID of its own, not the vendor
/// GUID: one meaning per GUID.
pub const SLOT_STAMP_GUID_STR: &str = "4d370995-23b2-49de-bb02-15f6db21cf78";
/// [`SLOT_STAMP_GUID_STR`] in RFC 4122 byte order.
pub const SLOT_STAMP_GUID: [u8; 16] = [
    0x4d, 0x37, 0x09, 0x95, 0x23, 0xb2, 0x49, 0xde, 0xbb, 0x02, 0x15, 0xf6, 0xdb, 0x21, 0xcf, 0x78,
];
/// [`SLOT_STAMP_GUID_STR`] in EFI (mixed-endian) byte order, as it is stored.
pub const SLOT_STAMP_GUID_EFI: [u8; 16] = efi_order(SLOT_STAMP_GUID);

/// Vendor GUID of the Boot Loader Interface variables (`LoaderDevicePartUUID`,
/// `LoaderImageIdentifier`, ...), as systemd-boot and systemd read them.
pub const LOADER_INTERFACE_GUID_STR: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// [`LOADER_INTERFACE_GUID_STR`] in RFC 4122 byte order.
pub const LOADER_INTERFACE_GUID: [u8; 16] = [
    0x4a, 0x67, 0xb0, 0x82, 0x0a, 0x4c, 0x41, 0xcf, 0xb6, 0xc7, 0x44, 0x0b, 0x29, 0xbb, 0x8c, 0x4f,
];
/// [`LOADER_INTERFACE_GUID_STR`] in EFI (mixed-endian) byte order.
pub const LOADER_INTERFACE_GUID_EFI: [u8; 16] = efi_order(LOADER_INTERFACE_GUID);

/// The vendor media device-path GUID under which Linux's EFI stub asks for
/// its initrd through `EFI_LOAD_FILE2_PROTOCOL`, in EFI byte order.
pub const LINUX_EFI_INITRD_MEDIA_GUID_EFI: [u8; 16] = efi_order([
    0x55, 0x68, 0xe4, 0x27, 0x68, 0xfc, 0x4f, 0x3d, 0xac, 0x74, 0xca, 0x55, 0x52, 0x31, 0xcc, 0x68,
]);

/// Swaps between RFC 4122 and EFI byte order (the operation is its own inverse).
pub const fn efi_order(b: [u8; 16]) -> [u8; 16] {
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

/// The upper-case text form (`0CB28C03-08A8-...`) of a GUID given in EFI byte
/// order, as `LoaderDevicePartUUID` carries it.
pub fn format_upper(efi_bytes: [u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = efi_order(efi_bytes);
    let mut out = [b'-'; 36];
    let mut pos = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            pos += 1;
        }
        out[pos] = HEX[usize::from(byte >> 4)];
        out[pos + 1] = HEX[usize::from(byte & 0xf)];
        pos += 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn constants_agree_with_their_text() {
        for (text, rfc, efi) in [
            (
                ABKIT_VENDOR_GUID_STR,
                ABKIT_VENDOR_GUID,
                ABKIT_VENDOR_GUID_EFI,
            ),
            (
                LOADER_INTERFACE_GUID_STR,
                LOADER_INTERFACE_GUID,
                LOADER_INTERFACE_GUID_EFI,
            ),
            (SLOT_STAMP_GUID_STR, SLOT_STAMP_GUID, SLOT_STAMP_GUID_EFI),
        ] {
            let id = Uuid::parse_str(text).unwrap();
            assert_eq!(id, Uuid::from_bytes(rfc));
            assert_eq!(id, Uuid::from_bytes_le(efi));
        }
        let initrd = Uuid::parse_str("5568e427-68fc-4f3d-ac74-ca555231cc68").unwrap();
        assert_eq!(initrd.to_bytes_le(), LINUX_EFI_INITRD_MEDIA_GUID_EFI);
    }

    #[test]
    fn upper_case_text_matches_uuid_crate() {
        let id = Uuid::parse_str("4a67b082-0a4c-41cf-b6c7-440b29bb8c4f").unwrap();
        let text = format_upper(id.to_bytes_le());
        assert_eq!(&text, b"4A67B082-0A4C-41CF-B6C7-440B29BB8C4F");
    }

    proptest::proptest! {
        #[test]
        fn format_upper_agrees_for_any_guid(bytes in proptest::array::uniform16(0u8..)) {
            let id = Uuid::from_bytes_le(bytes);
            let text = format_upper(bytes);
            let expected = id.hyphenated().to_string().to_ascii_uppercase();
            proptest::prop_assert_eq!(core::str::from_utf8(&text).unwrap(), expected.as_str());
        }
    }
}
