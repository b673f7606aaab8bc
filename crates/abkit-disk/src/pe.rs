//! The loader check: is this file a PE/COFF image that UEFI firmware starts
//! as an application?
//!
//! The headers are read by `abkit_loader_core::pe`, the one PE reader that
//! the EFI loader, `abkit uki` and this crate share (offsets live there);
//! this module adds the one rule an image build needs, Subsystem 10 (EFI
//! application), and keeps its own error type for `DiskError`.

use abkit_loader_core::pe::{self as core_pe, PeImage};

/// Subsystem value of an EFI application.
pub const SUBSYSTEM_EFI_APPLICATION: u16 = core_pe::layout::SUBSYSTEM_EFI_APPLICATION;

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
    #[error("its PE headers are corrupt: {0}")]
    Corrupt(core_pe::PeError),
}

impl From<core_pe::PeError> for PeError {
    fn from(e: core_pe::PeError) -> Self {
        use core_pe::PeError as Core;
        match e {
            Core::TooShort { len } => PeError::TooShort(len),
            Core::NoDosMagic => PeError::NoMzHeader,
            Core::PeOffsetOutOfRange { offset, .. } => PeError::PeOffsetOutOfRange(offset),
            Core::NoPeSignature { offset } => {
                PeError::NoPeSignature(u32::try_from(offset).unwrap_or(u32::MAX))
            }
            Core::UnknownOptionalMagic { magic } => PeError::BadOptionalHeaderMagic(magic),
            Core::OptionalHeaderTooShort { size } => PeError::OptionalHeaderTooShort(size),
            other => PeError::Corrupt(other),
        }
    }
}

/// Accepts `bytes` only if it is a PE/COFF image with Subsystem 10.
pub fn check_efi_application(bytes: &[u8]) -> Result<(), PeError> {
    let pe = PeImage::parse(bytes)?;
    match pe.optional.subsystem {
        SUBSYSTEM_EFI_APPLICATION => Ok(()),
        other => Err(PeError::NotEfiApplication(other)),
    }
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
    fn a_section_table_past_the_end_is_corrupt() {
        let mut bad = tiny_efi_application(b"");
        bad[0x46..0x48].copy_from_slice(&50u16.to_le_bytes()); // NumberOfSections
        assert!(matches!(
            check_efi_application(&bad),
            Err(PeError::Corrupt(core_pe::PeError::SectionTableOutOfRange {
                count: 50,
                ..
            }))
        ));
    }

    #[test]
    fn never_panics_on_truncations() {
        let good = tiny_efi_application(b"payload");
        for len in 0..good.len() {
            let _ = check_efi_application(&good[..len]);
        }
    }
}
