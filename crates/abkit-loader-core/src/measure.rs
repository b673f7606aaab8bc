//! What the loader measures into the TPM, the way systemd-stub does, so
//! PCR 11 policies written for systemd UKIs (`systemd-measure`) fit: each
//! UKI section it uses, name then content, into PCR 11 as `EV_IPL` events;
//! the command line it hands the kernel (slot letter included) into PCR 12.
//!
//! The layouts of the TCG event the loader logs, and the order of the
//! sections, live here so `abkit uki inspect` predicts the same PCR 11.

use crate::pe::{Layout, PeError, PeImage};

/// PCR of the kernel image (systemd's `TPM2_PCR_KERNEL_BOOT`): the UKI's sections.
pub const PCR_KERNEL_IMAGE: u32 = 11;
/// PCR of the kernel's parameters (systemd's `TPM2_PCR_KERNEL_CONFIG`): the
/// command line as passed, after `SYSTEM-X` became the slot letter.
pub const PCR_KERNEL_PARAMETERS: u32 = 12;
/// TCG event type `EV_IPL` (0x0D), as systemd-stub logs its measurements.
pub const EV_IPL: u32 = 0x0000_000d;

/// The sections measured into PCR 11, in systemd-stub's order (its
/// `unified_sections[]` without `.pcrsig`, which signs PCR 11 and so cannot
/// be part of it). The loader uses `.linux`, `.osrel`, `.cmdline` and
/// `.initrd`; others are measured when present, as systemd-stub does.
pub const MEASURED_SECTIONS: [&str; 9] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
];

/// The event data systemd-stub logs with a measurement: the description as
/// UTF-16LE with its NUL (`.linux` → 14 bytes). ASCII only; `out` must hold
/// `2 * (text.len() + 1)` bytes. Returns the length written.
pub fn event_description(text: &str, out: &mut [u8]) -> usize {
    let mut n = 0;
    for b in text.bytes().chain([0]) {
        out[n] = b;
        out[n + 1] = 0;
        n += 2;
    }
    n
}

/// One measurement: what is hashed and the text logged with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement<'a> {
    pub pcr: u32,
    /// The bytes the TPM hashes.
    pub data: &'a [u8],
    /// The event's description (the section's name).
    pub description: &'a str,
}

/// The PCR 11 measurements of a UKI, in order: for each present section of
/// [`MEASURED_SECTIONS`], its name with NUL, then its content (up to its
/// VirtualSize). `image` in `layout`: the loader passes its mapped self,
/// host tools the file.
pub fn pcr11_measurements<'a>(
    image: &PeImage<'a>,
    layout: Layout,
    mut each: impl FnMut(Measurement<'a>),
) -> Result<(), PeError> {
    for name in MEASURED_SECTIONS {
        let Some(data) = image.find_section_data(name, layout)? else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        // The name with its NUL, from a static table (no allocation).
        let with_nul = section_name_with_nul(name);
        each(Measurement {
            pcr: PCR_KERNEL_IMAGE,
            data: with_nul,
            description: name,
        });
        each(Measurement {
            pcr: PCR_KERNEL_IMAGE,
            data,
            description: name,
        });
    }
    Ok(())
}

/// `name` followed by a NUL byte, as systemd-stub hashes section names.
fn section_name_with_nul(name: &str) -> &'static [u8] {
    match name {
        ".linux" => b".linux\0",
        ".osrel" => b".osrel\0",
        ".cmdline" => b".cmdline\0",
        ".initrd" => b".initrd\0",
        ".ucode" => b".ucode\0",
        ".splash" => b".splash\0",
        ".dtb" => b".dtb\0",
        ".uname" => b".uname\0",
        _ => b".sbat\0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_measured_name_has_its_nul_form() {
        for name in MEASURED_SECTIONS {
            let with_nul = section_name_with_nul(name);
            assert_eq!(&with_nul[..name.len()], name.as_bytes());
            assert_eq!(with_nul.len(), name.len() + 1);
            assert_eq!(with_nul[name.len()], 0);
        }
    }

    #[test]
    fn descriptions_are_utf16_with_nul() {
        let mut out = [0xffu8; 32];
        let n = event_description(".linux", &mut out);
        assert_eq!(n, 14);
        assert_eq!(&out[..4], &[b'.', 0, b'l', 0]);
        assert_eq!(&out[12..14], &[0, 0]);
    }
}
