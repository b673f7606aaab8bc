//! The loader check an image build makes (`abkit_loader_core::check_efi_application`,
//! the one PE reader), on the fixture loader with each part broken in turn.

use abkit_disk::fixtures::tiny_efi_application;
use abkit_loader_core::{PeError, check_efi_application};

fn refusal(bytes: &[u8]) -> Option<PeError> {
    check_efi_application(bytes).err()
}

#[test]
fn accepts_the_fixture() {
    check_efi_application(&tiny_efi_application(b"x")).unwrap();
}

#[test]
fn refuses_each_broken_part() {
    let good = tiny_efi_application(b"");
    assert_eq!(refusal(&good[..10]), Some(PeError::TooShort { len: 10 }));

    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(refusal(&bad), Some(PeError::NoDosMagic));

    let mut bad = good.clone();
    bad[0x3c..0x40].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    assert_eq!(
        refusal(&bad),
        Some(PeError::PeOffsetOutOfRange {
            offset: 0xffff_fff0,
            len: good.len()
        })
    );

    let mut bad = good.clone();
    bad[0x40] = b'N';
    assert_eq!(refusal(&bad), Some(PeError::NoPeSignature { offset: 0x40 }));

    let mut bad = good.clone();
    bad[0x40 + 4 + 16..0x40 + 4 + 18].copy_from_slice(&10u16.to_le_bytes());
    assert_eq!(
        refusal(&bad),
        Some(PeError::OptionalHeaderTooShort { size: 10 })
    );

    let mut bad = good.clone();
    bad[0x58..0x5a].copy_from_slice(&0x107u16.to_le_bytes());
    assert_eq!(
        refusal(&bad),
        Some(PeError::UnknownOptionalMagic { magic: 0x107 })
    );

    // A Windows console program (subsystem 3), and an EFI boot driver (11).
    for subsystem in [3u16, 11] {
        let mut bad = good.clone();
        bad[0x58 + 68..0x58 + 70].copy_from_slice(&subsystem.to_le_bytes());
        assert_eq!(
            refusal(&bad),
            Some(PeError::NotEfiApplication { subsystem })
        );
    }
}

#[test]
fn a_section_table_past_the_end_is_refused() {
    let mut bad = tiny_efi_application(b"");
    bad[0x46..0x48].copy_from_slice(&50u16.to_le_bytes()); // NumberOfSections
    assert!(matches!(
        refusal(&bad),
        Some(PeError::SectionTableOutOfRange { count: 50, .. })
    ));
}

#[test]
fn never_panics_on_truncations() {
    let good = tiny_efi_application(b"payload");
    for len in 0..good.len() {
        let _ = check_efi_application(&good[..len]);
    }
}
