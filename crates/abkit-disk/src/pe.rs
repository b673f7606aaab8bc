//! The loader check: is this file a PE/COFF image that UEFI firmware starts
//! as an application?
//!
//! Bytes looked at (PE/COFF spec): `MZ` at 0; the PE header offset
//! (`e_lfanew`, u32 LE) at 0x3c; `PE\0\0` there; the 20-byte COFF header
//! after it (SizeOfOptionalHeader, u16 at +16); then the optional header:
//! Magic (u16 at +0, 0x10b PE32 or 0x20b PE32+) and Subsystem (u16 at +68,
//! the same offset in both), which must be 10, EFI application.

/// Subsystem value of an EFI application.
pub const SUBSYSTEM_EFI_APPLICATION: u16 = 10;

const E_LFANEW_OFFSET: usize = 0x3c;
const COFF_HEADER_LEN: usize = 20;
const SUBSYSTEM_OFFSET: usize = 68;

/// Why a file is not an EFI application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    #[error("the file is {0} bytes, too short for a PE/COFF image")]
    TooShort(usize),
    #[error("no MZ (DOS) header at byte 0")]
    NoMzHeader,
    #[error("the PE header offset {0:#x} points outside the file")]
    PeOffsetOutOfRange(u32),
    #[error("no PE signature at byte {0:#x}")]
    NoPeSignature(u32),
    #[error("the optional header is missing or too short ({0} bytes)")]
    OptionalHeaderTooShort(u16),
    #[error("unknown optional header magic {0:#x} (expected 0x10b or 0x20b)")]
    BadOptionalHeaderMagic(u16),
    #[error("its subsystem is {0}, not 10 (EFI application)")]
    NotEfiApplication(u16),
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Accepts `bytes` only if it is a PE/COFF image with Subsystem 10.
pub fn check_efi_application(bytes: &[u8]) -> Result<(), PeError> {
    if bytes.len() >= 2 && &bytes[..2] != b"MZ" {
        return Err(PeError::NoMzHeader);
    }
    if bytes.len() < E_LFANEW_OFFSET + 4 {
        return Err(PeError::TooShort(bytes.len()));
    }
    let pe_offset = u32_at(bytes, E_LFANEW_OFFSET).ok_or(PeError::TooShort(bytes.len()))?;
    let pe = pe_offset as usize;
    let signature = bytes
        .get(pe..pe.saturating_add(4))
        .ok_or(PeError::PeOffsetOutOfRange(pe_offset))?;
    if signature != b"PE\0\0" {
        return Err(PeError::NoPeSignature(pe_offset));
    }
    let coff = pe + 4;
    let optional_len = u16_at(bytes, coff + 16).ok_or(PeError::PeOffsetOutOfRange(pe_offset))?;
    let optional = coff + COFF_HEADER_LEN;
    if (optional_len as usize) < SUBSYSTEM_OFFSET + 2 {
        return Err(PeError::OptionalHeaderTooShort(optional_len));
    }
    let magic = u16_at(bytes, optional).ok_or(PeError::OptionalHeaderTooShort(optional_len))?;
    if magic != 0x10b && magic != 0x20b {
        return Err(PeError::BadOptionalHeaderMagic(magic));
    }
    let subsystem = u16_at(bytes, optional + SUBSYSTEM_OFFSET)
        .ok_or(PeError::OptionalHeaderTooShort(optional_len))?;
    if subsystem != SUBSYSTEM_EFI_APPLICATION {
        return Err(PeError::NotEfiApplication(subsystem));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tiny_efi_application;

    #[test]
    fn accepts_the_fixture() {
        check_efi_application(&tiny_efi_application(b"x")).unwrap();
    }

    #[test]
    fn refuses_each_broken_part() {
        let good = tiny_efi_application(b"");
        assert_eq!(
            check_efi_application(&good[..10]),
            Err(PeError::TooShort(10))
        );

        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(check_efi_application(&bad), Err(PeError::NoMzHeader));

        let mut bad = good.clone();
        bad[0x3c..0x40].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(
            check_efi_application(&bad),
            Err(PeError::PeOffsetOutOfRange(0xffff_fff0))
        );

        let mut bad = good.clone();
        bad[0x40] = b'N';
        assert_eq!(
            check_efi_application(&bad),
            Err(PeError::NoPeSignature(0x40))
        );

        let mut bad = good.clone();
        bad[0x40 + 4 + 16..0x40 + 4 + 18].copy_from_slice(&10u16.to_le_bytes());
        assert_eq!(
            check_efi_application(&bad),
            Err(PeError::OptionalHeaderTooShort(10))
        );

        let mut bad = good.clone();
        bad[0x58..0x5a].copy_from_slice(&0x107u16.to_le_bytes());
        assert_eq!(
            check_efi_application(&bad),
            Err(PeError::BadOptionalHeaderMagic(0x107))
        );

        // A Windows console program (subsystem 3), and an EFI boot driver (11).
        for subsystem in [3u16, 11] {
            let mut bad = good.clone();
            bad[0x58 + 68..0x58 + 70].copy_from_slice(&subsystem.to_le_bytes());
            assert_eq!(
                check_efi_application(&bad),
                Err(PeError::NotEfiApplication(subsystem))
            );
        }
    }

    #[test]
    fn never_panics_on_truncations() {
        let good = tiny_efi_application(b"payload");
        for len in 0..good.len() {
            let _ = check_efi_application(&good[..len]);
        }
    }
}
