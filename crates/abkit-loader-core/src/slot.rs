//! Which slot a loader boots, decided by the loader's own file name.
//!
//! One loader binary serves both slots: as `boot-b.efi` it boots B, as
//! `boot-a.efi` or under any other name (the fallback `BOOTX64.EFI`) it boots A.

use core::fmt;

/// One of the two system slots: the one slot type of every abkit crate
/// (host crates get it through abkit-disk's re-export).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Slot {
    A,
    B,
}

/// Slot A's loader on the ESP.
pub const LOADER_PATH_A: &str = "\\EFI\\abkit\\boot-a.efi";
/// Slot B's loader on the ESP.
pub const LOADER_PATH_B: &str = "\\EFI\\abkit\\boot-b.efi";

/// File name ending that selects slot B (compared without regard to ASCII case).
const SLOT_B_SUFFIX: &str = "boot-b.efi";

impl Slot {
    /// The slot letter, `'A'` or `'B'`.
    pub const fn letter(self) -> char {
        match self {
            Slot::A => 'A',
            Slot::B => 'B',
        }
    }

    /// The slot letter as one ASCII byte, `b'A'` or `b'B'`.
    pub const fn letter_byte(self) -> u8 {
        self.letter() as u8
    }

    /// The other slot.
    pub const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// This slot's loader path on the ESP.
    pub const fn loader_path(self) -> &'static str {
        match self {
            Slot::A => LOADER_PATH_A,
            Slot::B => LOADER_PATH_B,
        }
    }

    /// The slot for a letter `A` or `B` (upper case only, as stamps store it).
    pub const fn from_letter(letter: u8) -> Option<Slot> {
        match letter {
            b'A' => Some(Slot::A),
            b'B' => Some(Slot::B),
            _ => None,
        }
    }

    /// The slot for a loader at `path` (any form: `\EFI\abkit\boot-b.efi`,
    /// a device-path text, a bare file name). B if the path ends in
    /// `boot-b.efi` (any case), otherwise A: `boot-a.efi` and every other name,
    /// the fallback `\EFI\BOOT\BOOTX64.EFI` included. Trailing NULs are ignored.
    pub fn from_loader_path(path: &str) -> Slot {
        let units = path.trim_end_matches('\0').bytes().map(u16::from);
        if ends_with(units, SLOT_B_SUFFIX) {
            Slot::B
        } else {
            Slot::A
        }
    }

    /// Same as [`Slot::from_loader_path`] for a UCS-2 path, as the firmware
    /// hands it over (with or without its terminating NUL).
    pub fn from_loader_path_ucs2(path: &[u16]) -> Slot {
        if ends_with(trim_nuls(path).iter().copied(), SLOT_B_SUFFIX) {
            Slot::B
        } else {
            Slot::A
        }
    }

    /// The slot whose own loader file `path` names (`boot-a.efi` or
    /// `boot-b.efi`, any case); `None` for every other name, such as the
    /// fallback `\EFI\BOOT\BOOTX64.EFI` (which may act as the pre-loader).
    pub fn of_slot_loader_ucs2(path: &[u16]) -> Option<Slot> {
        let path = trim_nuls(path);
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| ends_with(path.iter().copied(), s.loader_file_name()))
    }

    /// Same as [`Slot::of_slot_loader_ucs2`] for a `str` path.
    pub fn of_slot_loader(path: &str) -> Option<Slot> {
        let path = path.trim_end_matches('\0');
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| ends_with(path.bytes().map(u16::from), s.loader_file_name()))
    }

    /// This slot's loader file name, `boot-a.efi` or `boot-b.efi`.
    pub const fn loader_file_name(self) -> &'static str {
        match self {
            Slot::A => "boot-a.efi",
            Slot::B => SLOT_B_SUFFIX,
        }
    }
}

/// `path` without its trailing NULs.
fn trim_nuls(path: &[u16]) -> &[u16] {
    let end = path.iter().rposition(|&u| u != 0).map_or(0, |i| i + 1);
    &path[..end]
}

/// Whether the code units end in `suffix`, ASCII case ignored.
fn ends_with(units: impl DoubleEndedIterator<Item = u16>, suffix: &str) -> bool {
    let mut units = units.rev();
    suffix.bytes().rev().all(|want| {
        units
            .next()
            .is_some_and(|u| u8::try_from(u).is_ok_and(|b| b.eq_ignore_ascii_case(&want)))
    })
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `s` as UCS-2 with a terminating NUL, as the firmware hands paths over.
    fn ucs2(s: &str) -> Vec<u16> {
        s.encode_utf16().chain([0]).collect()
    }

    #[test]
    fn slot_b_only_for_boot_b_efi_in_any_case() {
        for path in [
            r"\EFI\abkit\boot-b.efi",
            r"\EFI\ABKIT\BOOT-B.EFI",
            "boot-B.Efi",
            r"HD(1,GPT,0CB28C03-08A8-4002-8767-6D62B5D8E9F0,0x800,0x10000)/\EFI\abkit\boot-b.efi",
        ] {
            assert_eq!(Slot::from_loader_path(path), Slot::B, "{path}");
            assert_eq!(
                Slot::from_loader_path_ucs2(&ucs2(path)),
                Slot::B,
                "{path} (ucs2)"
            );
        }
    }

    #[test]
    fn slot_a_for_boot_a_fallback_and_anything_else() {
        for path in [
            r"\EFI\abkit\boot-a.efi",
            r"\EFI\BOOT\BOOTX64.EFI",
            "",
            "b.efi",
            "oot-b.efi",
            r"\EFI\abkit\boot-b.efi.old",
            r"\EFI\abkit\boot-b.ef",
            r"\EFI\abkit\boot_b.efi",
            r"\EFI\abkit\boot-b.efi\x",
        ] {
            assert_eq!(Slot::from_loader_path(path), Slot::A, "{path}");
            assert_eq!(
                Slot::from_loader_path_ucs2(&ucs2(path)),
                Slot::A,
                "{path} (ucs2)"
            );
        }
    }

    #[test]
    fn nuls_inside_the_name_are_not_skipped() {
        let mut units: [u16; 12] = [0; 12];
        for (o, u) in units.iter_mut().zip("boot-b.efi".encode_utf16()) {
            *o = u;
        }
        // "boot-b.efi" NUL "x": the name does not end in boot-b.efi.
        units[11] = u16::from(b'x');
        assert_eq!(Slot::from_loader_path_ucs2(&units), Slot::A);
    }

    #[test]
    fn only_the_slot_file_names_are_slot_loaders() {
        for (path, want) in [
            (r"\EFI\abkit\boot-a.efi", Some(Slot::A)),
            (r"\EFI\ABKIT\BOOT-B.EFI", Some(Slot::B)),
            (r"\EFI\BOOT\BOOTX64.EFI", None),
            (r"\EFI\abkit\xboot-a.efi.old", None),
            ("", None),
        ] {
            assert_eq!(Slot::of_slot_loader(path), want, "{path}");
            assert_eq!(Slot::of_slot_loader_ucs2(&ucs2(path)), want, "{path}");
        }
    }

    #[test]
    fn letters_and_display() {
        assert_eq!(Slot::A.letter(), 'A');
        assert_eq!(Slot::B.letter_byte(), b'B');
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::from_loader_path(Slot::B.loader_path()), Slot::B);
        assert_eq!(Slot::from_loader_path(Slot::A.loader_path()), Slot::A);
        assert_eq!(Slot::from_letter(b'A'), Some(Slot::A));
        assert_eq!(Slot::from_letter(b'B'), Some(Slot::B));
        assert_eq!(Slot::from_letter(b'b'), None);
        assert_eq!(std::format!("{}{}", Slot::A, Slot::B), "AB");
    }

    proptest::proptest! {
        #[test]
        fn ucs2_and_str_agree(path in "\\PC{0,30}(boot-[abAB]\\.[eE][fF][iI])?") {
            let units: std::vec::Vec<u16> = path.encode_utf16().collect();
            let expect = if path.to_ascii_lowercase().ends_with("boot-b.efi") { Slot::B } else { Slot::A };
            proptest::prop_assert_eq!(Slot::from_loader_path(&path), expect);
            proptest::prop_assert_eq!(Slot::from_loader_path_ucs2(&units), expect);
        }
    }
}
