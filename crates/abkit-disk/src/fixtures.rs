//! Test fixtures shared with other crates' tests: the smallest PE/COFF file
//! our loader check accepts, and deterministic noise for images. Not meant
//! for production use.

/// A minimal PE32+ x86_64 image with Subsystem 10 (EFI application) and no
/// sections and the 16 data directories real loaders have (all empty, so a
/// slot stamp can add the certificate table), followed by `payload` so that
/// tests can tell loaders apart.
/// Header offsets: PE signature at 0x40, COFF header at 0x44, optional
/// header at 0x58 (240 bytes), Subsystem at 0x58 + 68.
pub fn tiny_efi_application(payload: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 0x200];
    image[..2].copy_from_slice(b"MZ");
    image[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    image[0x40..0x44].copy_from_slice(b"PE\0\0");
    let coff = 0x44;
    image[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes()); // Machine: x86_64
    image[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes()); // SizeOfOptionalHeader
    image[coff + 18..coff + 20].copy_from_slice(&0x0022u16.to_le_bytes()); // executable, large-address aware
    let optional = coff + 20;
    image[optional..optional + 2].copy_from_slice(&0x20bu16.to_le_bytes()); // PE32+
    image[optional + 32..optional + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // SectionAlignment
    image[optional + 36..optional + 40].copy_from_slice(&0x200u32.to_le_bytes()); // FileAlignment
    image[optional + 56..optional + 60].copy_from_slice(&0x1000u32.to_le_bytes()); // SizeOfImage
    image[optional + 60..optional + 64].copy_from_slice(&0x200u32.to_le_bytes()); // SizeOfHeaders
    image[optional + 68..optional + 70].copy_from_slice(&10u16.to_le_bytes()); // Subsystem: EFI application
    image[optional + 108..optional + 112].copy_from_slice(&16u32.to_le_bytes()); // NumberOfRvaAndSizes
    image.extend_from_slice(payload);
    image
}

/// Deterministic pseudo-random bytes (xorshift), different per seed: images
/// that do not compress and whose blocks differ.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
