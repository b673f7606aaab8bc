//! A minimal abkit-like stub for tests (here and in the `abkit` command's
//! tests): a valid PE32+ EFI application whose `.text` is one `ret`, with the
//! `.abkit` marker; it is never run, only built upon and read.

use abkit_loader_core::pe::layout::*;

/// Offset of the PE signature in [`minimal_stub`].
pub const PE_OFFSET: usize = 0x80;
/// Size of the optional header in [`minimal_stub`] (PE32+ with 16 directories).
pub const OPTIONAL_HEADER_SIZE: usize = 240;

/// A stub with sections `(name, content)`, headers in 0x400 bytes, file
/// alignment 0x200, section alignment 0x1000.
pub fn stub_with(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut f = vec![0u8; 0x400];
    f[..2].copy_from_slice(DOS_MAGIC);
    f[DOS_PE_OFFSET..DOS_PE_OFFSET + 4].copy_from_slice(&(PE_OFFSET as u32).to_le_bytes());
    f[PE_OFFSET..PE_OFFSET + 4].copy_from_slice(PE_SIGNATURE);
    let coff = PE_OFFSET + 4;
    f[coff..coff + 2].copy_from_slice(&MACHINE_X86_64.to_le_bytes());
    f[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
    f[coff + 16..coff + 18].copy_from_slice(&(OPTIONAL_HEADER_SIZE as u16).to_le_bytes());
    // Executable image, large-address aware.
    f[coff + 18..coff + 20].copy_from_slice(&0x0022u16.to_le_bytes());
    let opt = coff + COFF_HEADER_LEN;
    let set32 = |f: &mut Vec<u8>, at: usize, v: u32| {
        f[opt + at..opt + at + 4].copy_from_slice(&v.to_le_bytes())
    };
    f[opt..opt + 2].copy_from_slice(&PE32PLUS_MAGIC.to_le_bytes());
    set32(&mut f, 16, 0x1000); // AddressOfEntryPoint
    f[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes()); // ImageBase
    set32(&mut f, OPT_SECTION_ALIGNMENT, 0x1000);
    set32(&mut f, OPT_FILE_ALIGNMENT, 0x200);
    set32(&mut f, OPT_SIZE_OF_HEADERS, 0x400);
    f[opt + OPT_SUBSYSTEM..opt + OPT_SUBSYSTEM + 2]
        .copy_from_slice(&SUBSYSTEM_EFI_APPLICATION.to_le_bytes());
    set32(&mut f, PE32PLUS_NUMBER_OF_RVA_AND_SIZES, 16);
    let table = opt + OPTIONAL_HEADER_SIZE;
    let mut address = 0x1000u32;
    for (i, (name, data)) in sections.iter().enumerate() {
        let raw = (data.len() as u32).div_ceil(0x200) * 0x200;
        let pointer = f.len() as u32;
        let h = table + i * SECTION_HEADER_LEN;
        let mut field = [0u8; 8];
        field[..name.len().min(8)].copy_from_slice(&name.as_bytes()[..name.len().min(8)]);
        f[h..h + 8].copy_from_slice(&field);
        f[h + 8..h + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        f[h + 12..h + 16].copy_from_slice(&address.to_le_bytes());
        f[h + 16..h + 20].copy_from_slice(&raw.to_le_bytes());
        f[h + 20..h + 24].copy_from_slice(&pointer.to_le_bytes());
        let characteristics = if *name == ".text" {
            0x6000_0020u32
        } else {
            0x4000_0040
        };
        f[h + 36..h + 40].copy_from_slice(&characteristics.to_le_bytes());
        f.extend_from_slice(data);
        f.resize((pointer + raw) as usize, 0);
        address += (data.len() as u32).div_ceil(0x1000).max(1) * 0x1000;
    }
    set32(&mut f, OPT_SIZE_OF_IMAGE, address);
    f
}

/// The usual test stub: `.text` and the `.abkit` marker.
pub fn minimal_stub() -> Vec<u8> {
    stub_with(&[(".text", &[0xc3]), (".abkit", b"abkit-stub 0.0.0-test")])
}
