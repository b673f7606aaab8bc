//! The one field of the x86 boot protocol's setup header a UKI builder
//! needs: how many bytes of command line the kernel reads (`cmdline_size`,
//! boot protocol 2.06 and later; Linux's `Documentation/arch/x86/boot.rst`).
//! Written here because no crate reads bzImage headers.

/// Byte layout of the setup header, from the start of the bzImage.
mod layout {
    /// `header`: the magic `HdrS`.
    pub const MAGIC_OFFSET: usize = 0x202;
    pub const MAGIC: &[u8; 4] = b"HdrS";
    /// `version`: the boot protocol, u16 (major << 8 | minor).
    pub const VERSION_OFFSET: usize = 0x206;
    /// `cmdline_size`: u32, the longest command line without its NUL.
    pub const CMDLINE_SIZE_OFFSET: usize = 0x238;
    /// The first protocol with `cmdline_size`.
    pub const CMDLINE_SIZE_SINCE: u16 = 0x0206;
}

/// The most command-line bytes `kernel` reads, from its setup header;
/// `None` when it is not an x86 bzImage of boot protocol 2.06 or later
/// (nothing to check against).
pub fn max_cmdline_len(kernel: &[u8]) -> Option<usize> {
    use layout::*;
    let field = |at: usize, len: usize| kernel.get(at..at + len);
    if field(MAGIC_OFFSET, 4)? != MAGIC {
        return None;
    }
    let version = u16::from_le_bytes(field(VERSION_OFFSET, 2)?.try_into().ok()?);
    if version < CMDLINE_SIZE_SINCE {
        return None;
    }
    let size = u32::from_le_bytes(field(CMDLINE_SIZE_OFFSET, 4)?.try_into().ok()?);
    usize::try_from(size).ok()
}

/// A kernel head with `version` and `cmdline_size` (for tests).
#[cfg(test)]
pub(crate) fn fake_bzimage(version: u16, cmdline_size: u32) -> Vec<u8> {
    use layout::*;
    let mut kernel = vec![0x4b; 0x1000];
    kernel[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(MAGIC);
    kernel[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&version.to_le_bytes());
    kernel[CMDLINE_SIZE_OFFSET..CMDLINE_SIZE_OFFSET + 4]
        .copy_from_slice(&cmdline_size.to_le_bytes());
    kernel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_read_from_protocol_2_06_on_and_only_from_a_bzimage() {
        assert_eq!(max_cmdline_len(&fake_bzimage(0x020f, 2047)), Some(2047));
        assert_eq!(max_cmdline_len(&fake_bzimage(0x0206, 4095)), Some(4095));
        assert_eq!(max_cmdline_len(&fake_bzimage(0x0205, 2047)), None);
        assert_eq!(max_cmdline_len(&[0x4b; 0x1000]), None);
        assert_eq!(max_cmdline_len(&fake_bzimage(0x020f, 2047)[..0x239]), None);
        assert_eq!(max_cmdline_len(b""), None);
    }

    /// Debian's kernel, when `make deps` unpacked it (the VM tests' kernel).
    #[test]
    fn debian_kernel_reads_2047_bytes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../build/kernel/boot");
        let Some(kernel) = std::fs::read_dir(dir).ok().and_then(|d| {
            d.filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz"))
        }) else {
            eprintln!("SKIPPED: no kernel in {dir} (make deps)");
            return;
        };
        let bytes = std::fs::read(kernel.path()).unwrap();
        assert_eq!(max_cmdline_len(&bytes), Some(2047));
    }
}
