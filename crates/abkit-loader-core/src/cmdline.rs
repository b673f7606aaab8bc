//! The kernel command line carried in the `.cmdline` section.
//!
//! The built loader holds one command line for both slots, with the
//! placeholder `SYSTEM-X` wherever the slot belongs (`root=PARTLABEL=ABKIT-SYSTEM-X`);
//! at boot every placeholder becomes `SYSTEM-A` or `SYSTEM-B`, and the text is
//! handed to the kernel as UCS-2.

use crate::slot::Slot;

/// The text replaced with `SYSTEM-A` or `SYSTEM-B` at boot.
pub const SLOT_PLACEHOLDER: &[u8] = b"SYSTEM-X";

/// Why a command line cannot be handed to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("the command line is not UTF-8 (bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("the command line holds {ch:?} at byte {offset}, which UCS-2 cannot carry")]
    OutsideUcs2 { ch: char, offset: usize },
    #[error("the command line holds a NUL at byte {offset}")]
    InnerNul { offset: usize },
}

/// The command line without the padding tools leave around it: leading and
/// trailing ASCII whitespace (a final newline) and trailing NULs.
pub fn trim_cmdline(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = bytes[..end]
        .iter()
        .position(|&b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    &bytes[start..end]
}

/// Replaces every `SYSTEM-X` in `cmdline` with `SYSTEM-A` or `SYSTEM-B`, in
/// place (the length does not change). Returns how many were replaced.
pub fn rewrite_slot_placeholder(cmdline: &mut [u8], slot: Slot) -> usize {
    let n = SLOT_PLACEHOLDER.len();
    let mut replaced = 0;
    let mut i = 0;
    while i + n <= cmdline.len() {
        if &cmdline[i..i + n] == SLOT_PLACEHOLDER {
            cmdline[i + n - 1] = slot.letter_byte();
            replaced += 1;
            i += n;
        } else {
            i += 1;
        }
    }
    replaced
}

/// The UCS-2 code units of `cmdline` (UTF-8), without a terminating NUL;
/// fails on bytes that are not UTF-8, on characters outside the Basic
/// Multilingual Plane, and on NULs (the kernel would stop reading there).
pub fn ucs2_units(cmdline: &[u8]) -> Result<impl Iterator<Item = u16> + '_, CmdlineError> {
    let text = core::str::from_utf8(cmdline).map_err(|e| CmdlineError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    for (offset, ch) in text.char_indices() {
        if ch == '\0' {
            return Err(CmdlineError::InnerNul { offset });
        }
        if ch.len_utf16() != 1 {
            return Err(CmdlineError::OutsideUcs2 { ch, offset });
        }
    }
    Ok(text.encode_utf16())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn rewritten(text: &str, slot: Slot) -> (std::string::String, usize) {
        let mut bytes = text.as_bytes().to_vec();
        let n = rewrite_slot_placeholder(&mut bytes, slot);
        (std::string::String::from_utf8(bytes).unwrap(), n)
    }

    #[test]
    fn rewrites_every_placeholder() {
        let line = "console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X verity=SYSTEM-X.hash";
        assert_eq!(
            rewritten(line, Slot::B),
            (
                "console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-B verity=SYSTEM-B.hash".into(),
                2
            )
        );
        assert_eq!(
            rewritten(line, Slot::A).0,
            "console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-A verity=SYSTEM-A.hash"
        );
    }

    #[test]
    fn leaves_other_text_alone() {
        for line in [
            "",
            "SYSTEM-",
            "SYSTEM-Y",
            "system-x",
            "SYSTEMX",
            "root=SYSTEM-A",
        ] {
            assert_eq!(rewritten(line, Slot::B), (line.into(), 0), "{line}");
        }
        // Adjacent placeholders, and one at each end.
        assert_eq!(rewritten("SYSTEM-XSYSTEM-X", Slot::B).0, "SYSTEM-BSYSTEM-B");
        assert_eq!(rewritten("SYSTEM-SYSTEM-X", Slot::B).0, "SYSTEM-SYSTEM-B");
    }

    #[test]
    fn trims_padding_but_not_inner_text() {
        assert_eq!(trim_cmdline(b"  quiet root=x \n\0\0"), b"quiet root=x");
        assert_eq!(trim_cmdline(b"\0\0"), b"");
        assert_eq!(trim_cmdline(b""), b"");
        assert_eq!(trim_cmdline(b"a\0b"), b"a\0b");
    }

    #[test]
    fn ucs2_encoding_and_its_errors() {
        let units: Vec<u16> = ucs2_units("é x".as_bytes()).unwrap().collect();
        assert_eq!(units, [0xe9, 0x20, 0x78]);
        assert_eq!(
            ucs2_units(b"ok\xff").err(),
            Some(CmdlineError::NotUtf8 { offset: 2 })
        );
        assert_eq!(
            ucs2_units("a😀".as_bytes()).err(),
            Some(CmdlineError::OutsideUcs2 {
                ch: '😀',
                offset: 1
            })
        );
        assert_eq!(
            ucs2_units(b"a\0b").err(),
            Some(CmdlineError::InnerNul { offset: 1 })
        );
        assert!(ucs2_units(b"").unwrap().next().is_none());
    }

    proptest::proptest! {
        #[test]
        fn rewrite_keeps_length_and_removes_every_placeholder(
            parts in proptest::collection::vec("[ -~]{0,12}", 0..6),
            b in proptest::bool::ANY,
        ) {
            let slot = if b { Slot::B } else { Slot::A };
            let line = parts.join("SYSTEM-X");
            let mut bytes = line.clone().into_bytes();
            let n = rewrite_slot_placeholder(&mut bytes, slot);
            proptest::prop_assert_eq!(bytes.len(), line.len());
            let text = std::string::String::from_utf8(bytes).unwrap();
            proptest::prop_assert!(!text.contains("SYSTEM-X"));
            proptest::prop_assert!(n >= parts.len().saturating_sub(1));
            let expected = line.replace("SYSTEM-X", if b { "SYSTEM-B" } else { "SYSTEM-A" });
            proptest::prop_assert_eq!(text, expected);
        }
    }
}
