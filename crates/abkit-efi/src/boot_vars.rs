//! Names and values of the boot manager's global variables.
//!
//! `Boot####` (four upper-case hex digits), `BootOrder` (an array of u16),
//! `BootNext` and `BootCurrent` (one u16 each), all under the EFI global
//! variable vendor GUID.
//!
//! Entry names are exact: the UEFI spec and EDK2 only boot `Boot####` with
//! upper-case hex digits, so `Boot001a` is not entry 0x1A. Such a name is
//! *non-compliant*: never an entry to us, but its number is still avoided
//! when a new entry is created (a case-insensitive store would clash).

use thiserror::Error;
use uuid::Uuid;

/// EFI_GLOBAL_VARIABLE: the vendor GUID of the boot manager's variables.
pub const EFI_GLOBAL_VARIABLE: Uuid = Uuid::from_u128(0x8be4df61_93ca_11d2_aa0d_00e098032b8c);

pub const BOOT_ORDER: &str = "BootOrder";
pub const BOOT_NEXT: &str = "BootNext";
pub const BOOT_CURRENT: &str = "BootCurrent";

/// A boot variable value of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BootVarError {
    #[error("{name} is {len} bytes; it must be an array of 16-bit entry numbers (even length)")]
    OddArray { name: &'static str, len: usize },
    #[error("{name} is {len} bytes; it must be exactly one 16-bit entry number")]
    NotU16 { name: &'static str, len: usize },
}

/// The variable name of boot entry `n`: `Boot0001`.
pub fn boot_entry_name(n: u16) -> String {
    format!("Boot{n:04X}")
}

/// Whether `name` is exactly `Boot` followed by four upper-case hex digits
/// (`Boot0001`, `Boot001A`): the only names firmware boots.
pub fn is_compliant_boot_entry_name(name: &str) -> bool {
    name.strip_prefix("Boot").is_some_and(|hex| {
        hex.len() == 4
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    })
}

/// The entry number of a compliant `Boot####` name; `None` for any other
/// name, including lower-case hex such as `Boot001a`.
pub fn parse_boot_entry_name(name: &str) -> Option<u16> {
    if !is_compliant_boot_entry_name(name) {
        return None;
    }
    u16::from_str_radix(&name[4..], 16).ok()
}

/// The number a `Boot####`-like name would clash with on a case-insensitive
/// store: `Boot` + four hex digits in either case. Only for choosing free
/// numbers; a non-compliant name is never an entry.
pub(crate) fn boot_entry_number_any_case(name: &str) -> Option<u16> {
    let hex = name.strip_prefix("Boot")?;
    if hex.len() != 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// Whether `name` looks like a boot entry but is not compliant (`Boot001a`).
pub(crate) fn is_noncompliant_boot_entry_name(name: &str) -> bool {
    boot_entry_number_any_case(name).is_some() && !is_compliant_boot_entry_name(name)
}

/// Decodes `BootOrder`.
pub fn decode_boot_order(data: &[u8]) -> Result<Vec<u16>, BootVarError> {
    if !data.len().is_multiple_of(2) {
        return Err(BootVarError::OddArray {
            name: BOOT_ORDER,
            len: data.len(),
        });
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Decodes what is readable of a `BootOrder`: every whole 16-bit number,
/// and the problem when the length is odd (the trailing byte is dropped).
/// For self-repair, which rewrites the order; [`decode_boot_order`] is strict.
pub fn decode_boot_order_lenient(data: &[u8]) -> (Vec<u16>, Option<BootVarError>) {
    let order = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let problem = (!data.len().is_multiple_of(2)).then_some(BootVarError::OddArray {
        name: BOOT_ORDER,
        len: data.len(),
    });
    (order, problem)
}

pub fn encode_boot_order(order: &[u16]) -> Vec<u8> {
    order.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// Decodes a single-entry variable such as `BootNext` or `BootCurrent`.
pub fn decode_u16(name: &'static str, data: &[u8]) -> Result<u16, BootVarError> {
    match data {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(BootVarError::NotU16 {
            name,
            len: data.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upper_case_entry_names_are_compliant() {
        assert_eq!(boot_entry_name(0x1a), "Boot001A");
        assert_eq!(parse_boot_entry_name("Boot001A"), Some(0x1a));
        assert_eq!(parse_boot_entry_name("BootFFFF"), Some(0xffff));
        assert!(is_compliant_boot_entry_name("Boot0000"));
        assert!(is_compliant_boot_entry_name("Boot9ABF"));
        // Lower-case hex is not an entry firmware boots.
        for lower in ["Boot001a", "Bootffff", "Boot00aB"] {
            assert!(!is_compliant_boot_entry_name(lower), "{lower}");
            assert_eq!(parse_boot_entry_name(lower), None, "{lower}");
            assert!(is_noncompliant_boot_entry_name(lower), "{lower}");
        }
        assert_eq!(boot_entry_number_any_case("Boot001a"), Some(0x1a));
        assert!(!is_noncompliant_boot_entry_name("Boot001A"));
        for bad in [
            "Boot",
            "Boot01",
            "Boot00001",
            "BootOrder",
            "Boot+001",
            "boot0001",
            "Boot00G1",
            "Boot 001",
            "Boot٠٠٠١",
            "BOOT0001",
        ] {
            assert_eq!(parse_boot_entry_name(bad), None, "{bad}");
            assert!(!is_compliant_boot_entry_name(bad), "{bad}");
            assert!(!is_noncompliant_boot_entry_name(bad), "{bad}");
        }
    }

    #[test]
    fn boot_order_bytes() {
        assert_eq!(encode_boot_order(&[1, 0x100]), vec![1, 0, 0, 1]);
        assert_eq!(decode_boot_order(&[1, 0, 0, 1]).unwrap(), vec![1, 0x100]);
        assert_eq!(decode_boot_order(&[]).unwrap(), Vec::<u16>::new());
        assert_eq!(
            decode_boot_order(&[1, 0, 0]),
            Err(BootVarError::OddArray {
                name: BOOT_ORDER,
                len: 3
            })
        );
        // The lenient reader keeps every whole number and names the problem.
        assert_eq!(
            decode_boot_order_lenient(&[1, 0, 0, 1]),
            (vec![1, 0x100], None)
        );
        assert_eq!(
            decode_boot_order_lenient(&[1, 0, 0, 1, 7]),
            (
                vec![1, 0x100],
                Some(BootVarError::OddArray {
                    name: BOOT_ORDER,
                    len: 5
                })
            )
        );
        assert_eq!(
            decode_boot_order_lenient(&[9]),
            (
                vec![],
                Some(BootVarError::OddArray {
                    name: BOOT_ORDER,
                    len: 1
                })
            )
        );
        assert_eq!(decode_u16(BOOT_NEXT, &[3, 0]).unwrap(), 3);
        assert_eq!(
            decode_u16(BOOT_NEXT, &[3]),
            Err(BootVarError::NotU16 {
                name: BOOT_NEXT,
                len: 1
            })
        );
    }
}
