//! A bounds-checked reader of PE/COFF headers and sections.
//!
//! The loader uses it on its own image as the firmware mapped it (sections at
//! their virtual addresses), `abkit uki` on files (sections at their file
//! offsets). It never panics and never reads outside the given bytes.

use core::fmt;

/// Offsets and constants of the PE/COFF format (Microsoft PE format spec).
pub mod layout {
    /// `MZ` at offset 0 of the DOS header.
    pub const DOS_MAGIC: &[u8; 2] = b"MZ";
    /// Offset of `e_lfanew` (u32): where the PE signature starts.
    pub const DOS_PE_OFFSET: usize = 0x3c;
    /// `PE\0\0`, followed by the COFF file header.
    pub const PE_SIGNATURE: &[u8; 4] = b"PE\0\0";

    /// COFF file header (20 bytes), offsets from its start (PE offset + 4).
    pub const COFF_HEADER_LEN: usize = 20;
    pub const COFF_MACHINE: usize = 0;
    pub const COFF_NUMBER_OF_SECTIONS: usize = 2;
    pub const COFF_SIZE_OF_OPTIONAL_HEADER: usize = 16;

    /// Optional header, offsets from its start (PE offset + 24).
    pub const OPT_MAGIC: usize = 0;
    pub const OPT_SIZE_OF_CODE: usize = 4;
    pub const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
    pub const OPT_SECTION_ALIGNMENT: usize = 32;
    pub const OPT_FILE_ALIGNMENT: usize = 36;
    pub const OPT_SIZE_OF_IMAGE: usize = 56;
    pub const OPT_SIZE_OF_HEADERS: usize = 60;
    pub const OPT_CHECKSUM: usize = 64;
    pub const OPT_SUBSYSTEM: usize = 68;
    /// `NumberOfRvaAndSizes` and the data directories differ in PE32 and PE32+.
    pub const PE32_NUMBER_OF_RVA_AND_SIZES: usize = 92;
    pub const PE32PLUS_NUMBER_OF_RVA_AND_SIZES: usize = 108;
    pub const PE32_MAGIC: u16 = 0x10b;
    pub const PE32PLUS_MAGIC: u16 = 0x20b;
    /// Index of the certificate table (Authenticode signature) directory.
    pub const DIR_SECURITY: usize = 4;

    /// Section header (40 bytes), offsets from its start.
    pub const SECTION_HEADER_LEN: usize = 40;
    pub const SEC_VIRTUAL_SIZE: usize = 8;
    pub const SEC_VIRTUAL_ADDRESS: usize = 12;
    pub const SEC_SIZE_OF_RAW_DATA: usize = 16;
    pub const SEC_POINTER_TO_RAW_DATA: usize = 20;
    pub const SEC_CHARACTERISTICS: usize = 36;

    pub const MACHINE_X86_64: u16 = 0x8664;
    pub const SUBSYSTEM_EFI_APPLICATION: u16 = 10;
    pub const SCN_CNT_CODE: u32 = 0x20;
    pub const SCN_CNT_INITIALIZED_DATA: u32 = 0x40;
    pub const SCN_MEM_READ: u32 = 0x4000_0000;
}

use layout::*;

/// Why bytes are not a readable PE image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    #[error("not a PE image: no MZ signature at offset 0")]
    NoDosMagic,
    #[error("not a PE image: {len} bytes are too short for a DOS header")]
    TooShort { len: usize },
    #[error("not a PE image: the PE header offset {offset:#x} lies outside the {len} bytes")]
    PeOffsetOutOfRange { offset: u32, len: usize },
    #[error("not a PE image: no PE signature at offset {offset:#x}")]
    NoPeSignature { offset: usize },
    #[error("unknown optional-header magic {magic:#x} (neither PE32 nor PE32+)")]
    UnknownOptionalMagic { magic: u16 },
    #[error("the optional header ({size} bytes) is too short for its fields")]
    OptionalHeaderTooShort { size: u16 },
    #[error("the section table ({count} sections at {offset:#x}) extends past the {len} bytes")]
    SectionTableOutOfRange {
        count: u16,
        offset: usize,
        len: usize,
    },
    #[error(
        "section {name}: its data at {start:#x}+{size:#x} extends past the {len} bytes of the image"
    )]
    SectionOutOfRange {
        name: SectionName,
        start: u32,
        size: u32,
        len: usize,
    },
    #[error("its subsystem is {subsystem}, not 10 (EFI application)")]
    NotEfiApplication { subsystem: u16 },
}

/// Parses `bytes` and accepts them only as an EFI application (Subsystem
/// 10): the check an image build, an install and `abkit uki build` make
/// before a file may become a loader.
pub fn check_efi_application(bytes: &[u8]) -> Result<PeImage<'_>, PeError> {
    let pe = PeImage::parse(bytes)?;
    match pe.optional.subsystem {
        SUBSYSTEM_EFI_APPLICATION => Ok(pe),
        subsystem => Err(PeError::NotEfiApplication { subsystem }),
    }
}

/// The 8-byte name field of a section header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SectionName(pub [u8; 8]);

impl SectionName {
    /// The name without its NUL padding.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(8);
        &self.0[..end]
    }

    /// The name field for `name` (at most 8 bytes; longer names are cut).
    pub fn new(name: &str) -> SectionName {
        let mut field = [0u8; 8];
        for (f, b) in field.iter_mut().zip(name.bytes()) {
            *f = b;
        }
        SectionName(field)
    }
}

impl fmt::Display for SectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.as_bytes() {
            if b.is_ascii_graphic() {
                fmt::Write::write_char(f, char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// One entry of the section table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionHeader {
    pub name: SectionName,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    pub characteristics: u32,
}

/// Where a section's bytes are: in a file, or in an image the firmware mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Bytes of a PE file: sections at `PointerToRawData`.
    File,
    /// An image loaded into memory: sections at `VirtualAddress`.
    Mapped,
}

impl SectionHeader {
    /// Length of the section's content: `VirtualSize` cut to `SizeOfRawData`
    /// when both are set (the rest is alignment padding), else whichever is set.
    /// In a file, zero-fill beyond `SizeOfRawData` is not present.
    pub fn data_len(&self, layout: Layout) -> u32 {
        match (self.virtual_size, self.size_of_raw_data, layout) {
            (0, raw, _) => raw,
            (virt, 0, Layout::Mapped) => virt,
            (_, 0, Layout::File) => 0,
            (virt, raw, _) => virt.min(raw),
        }
    }

    /// Offset of the section's content in the given layout.
    pub fn data_start(&self, layout: Layout) -> u32 {
        match layout {
            Layout::File => self.pointer_to_raw_data,
            Layout::Mapped => self.virtual_address,
        }
    }
}

/// Header fields of the optional header this crate and `abkit uki` need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalHeader {
    /// [`layout::PE32_MAGIC`] or [`layout::PE32PLUS_MAGIC`].
    pub magic: u16,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub checksum: u32,
    pub subsystem: u16,
    /// The certificate table (virtual address = file offset, size), if the
    /// header has that directory.
    pub security_directory: Option<(u32, u32)>,
}

/// A parsed PE image over borrowed bytes (a file, or a mapped image).
#[derive(Debug, Clone, Copy)]
pub struct PeImage<'a> {
    bytes: &'a [u8],
    /// Offset of the `PE\0\0` signature.
    pub pe_offset: usize,
    /// Offset of the optional header.
    pub optional_header_offset: usize,
    pub size_of_optional_header: u16,
    /// Offset of the first section header.
    pub section_table_offset: usize,
    pub number_of_sections: u16,
    pub machine: u16,
    pub optional: OptionalHeader,
}

impl PeImage<'_> {
    /// File offset of the PE checksum field (excluded from the Authenticode
    /// hash, recomputed by writers).
    pub fn checksum_offset(&self) -> usize {
        self.optional_header_offset + OPT_CHECKSUM
    }

    /// File offset of the 8-byte certificate-table directory entry (address
    /// then size), if the optional header has that directory.
    pub fn security_directory_offset(&self) -> Option<usize> {
        let dirs_at = match self.optional.magic {
            PE32_MAGIC => PE32_NUMBER_OF_RVA_AND_SIZES,
            _ => PE32PLUS_NUMBER_OF_RVA_AND_SIZES,
        };
        self.optional
            .security_directory
            .map(|_| self.optional_header_offset + dirs_at + 4 + DIR_SECURITY * 8)
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> PeImage<'a> {
    /// Parses the DOS, COFF and optional headers and checks that the section
    /// table lies inside `bytes`. Section contents are checked when read.
    pub fn parse(bytes: &'a [u8]) -> Result<PeImage<'a>, PeError> {
        let len = bytes.len();
        if bytes.get(..2) != Some(DOS_MAGIC.as_slice()) {
            return Err(if len < 2 {
                PeError::TooShort { len }
            } else {
                PeError::NoDosMagic
            });
        }
        let lfanew = read_u32(bytes, DOS_PE_OFFSET).ok_or(PeError::TooShort { len })?;
        let pe_offset = usize::try_from(lfanew).map_err(|_| PeError::PeOffsetOutOfRange {
            offset: lfanew,
            len,
        })?;
        let coff = pe_offset
            .checked_add(4)
            .filter(|&c| c.checked_add(COFF_HEADER_LEN).is_some_and(|end| end <= len))
            .ok_or(PeError::PeOffsetOutOfRange {
                offset: lfanew,
                len,
            })?;
        if bytes.get(pe_offset..coff) != Some(PE_SIGNATURE.as_slice()) {
            return Err(PeError::NoPeSignature { offset: pe_offset });
        }
        let field16 = |at: usize| {
            read_u16(bytes, coff + at).ok_or(PeError::PeOffsetOutOfRange {
                offset: lfanew,
                len,
            })
        };
        let machine = field16(COFF_MACHINE)?;
        let number_of_sections = field16(COFF_NUMBER_OF_SECTIONS)?;
        let size_of_optional_header = field16(COFF_SIZE_OF_OPTIONAL_HEADER)?;
        let optional_header_offset = coff + COFF_HEADER_LEN;
        let section_table_offset = optional_header_offset + usize::from(size_of_optional_header);
        let table_end = usize::from(number_of_sections)
            .checked_mul(SECTION_HEADER_LEN)
            .and_then(|n| n.checked_add(section_table_offset));
        if table_end.is_none_or(|end| end > len) {
            return Err(PeError::SectionTableOutOfRange {
                count: number_of_sections,
                offset: section_table_offset,
                len,
            });
        }
        let optional = Self::parse_optional(
            &bytes[optional_header_offset..section_table_offset],
            size_of_optional_header,
        )?;
        Ok(PeImage {
            bytes,
            pe_offset,
            optional_header_offset,
            size_of_optional_header,
            section_table_offset,
            number_of_sections,
            machine,
            optional,
        })
    }

    fn parse_optional(opt: &[u8], size: u16) -> Result<OptionalHeader, PeError> {
        let short = PeError::OptionalHeaderTooShort { size };
        let magic = read_u16(opt, OPT_MAGIC).ok_or(short.clone())?;
        let dirs_count_at = match magic {
            PE32_MAGIC => PE32_NUMBER_OF_RVA_AND_SIZES,
            PE32PLUS_MAGIC => PE32PLUS_NUMBER_OF_RVA_AND_SIZES,
            magic => return Err(PeError::UnknownOptionalMagic { magic }),
        };
        let u32_at = |at| read_u32(opt, at).ok_or(short.clone());
        let number_of_dirs = u32_at(dirs_count_at)?;
        let security_at = dirs_count_at + 4 + DIR_SECURITY * 8;
        let security_directory = if number_of_dirs as usize > DIR_SECURITY {
            match (read_u32(opt, security_at), read_u32(opt, security_at + 4)) {
                (Some(addr), Some(size)) => Some((addr, size)),
                _ => return Err(short),
            }
        } else {
            None
        };
        Ok(OptionalHeader {
            magic,
            section_alignment: u32_at(OPT_SECTION_ALIGNMENT)?,
            file_alignment: u32_at(OPT_FILE_ALIGNMENT)?,
            size_of_image: u32_at(OPT_SIZE_OF_IMAGE)?,
            size_of_headers: u32_at(OPT_SIZE_OF_HEADERS)?,
            checksum: u32_at(OPT_CHECKSUM)?,
            subsystem: read_u16(opt, OPT_SUBSYSTEM).ok_or(short.clone())?,
            security_directory,
        })
    }

    /// The bytes the image was parsed from.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The section headers, in table order.
    pub fn sections(&self) -> impl Iterator<Item = SectionHeader> + 'a {
        let bytes = self.bytes;
        let start = self.section_table_offset;
        (0..usize::from(self.number_of_sections)).filter_map(move |i| {
            let at = start + i * SECTION_HEADER_LEN;
            // In range: parse() checked the whole table.
            let raw = bytes.get(at..at + SECTION_HEADER_LEN)?;
            let mut name = [0u8; 8];
            name.copy_from_slice(&raw[..8]);
            Some(SectionHeader {
                name: SectionName(name),
                virtual_size: read_u32(raw, SEC_VIRTUAL_SIZE)?,
                virtual_address: read_u32(raw, SEC_VIRTUAL_ADDRESS)?,
                size_of_raw_data: read_u32(raw, SEC_SIZE_OF_RAW_DATA)?,
                pointer_to_raw_data: read_u32(raw, SEC_POINTER_TO_RAW_DATA)?,
                characteristics: read_u32(raw, SEC_CHARACTERISTICS)?,
            })
        })
    }

    /// The first section named `name` (e.g. `.linux`).
    pub fn section(&self, name: &str) -> Option<SectionHeader> {
        self.sections()
            .find(|s| s.name.as_bytes() == name.as_bytes())
    }

    /// The content of `section` in the given layout, checked to lie inside
    /// the image.
    pub fn section_data(
        &self,
        section: &SectionHeader,
        layout: Layout,
    ) -> Result<&'a [u8], PeError> {
        let start = section.data_start(layout);
        let size = section.data_len(layout);
        let out_of_range = PeError::SectionOutOfRange {
            name: section.name,
            start,
            size,
            len: self.bytes.len(),
        };
        let begin = usize::try_from(start).map_err(|_| out_of_range.clone())?;
        let end = usize::try_from(size)
            .ok()
            .and_then(|size| begin.checked_add(size))
            .ok_or(out_of_range.clone())?;
        self.bytes.get(begin..end).ok_or(out_of_range)
    }

    /// The content of the first section named `name`, if there is one.
    pub fn find_section_data(
        &self,
        name: &str,
        layout: Layout,
    ) -> Result<Option<&'a [u8]>, PeError> {
        match self.section(name) {
            Some(section) => self.section_data(&section, layout).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const PE_AT: usize = 0x80;

    /// A small PE32+ file: headers in 0x200 bytes, `sections` (name, data)
    /// each at a 0x200-aligned file offset and a 0x1000-aligned address.
    fn tiny_pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut f = std::vec![0u8; 0x200];
        f[..2].copy_from_slice(b"MZ");
        f[DOS_PE_OFFSET..DOS_PE_OFFSET + 4].copy_from_slice(&(PE_AT as u32).to_le_bytes());
        f[PE_AT..PE_AT + 4].copy_from_slice(PE_SIGNATURE);
        let coff = PE_AT + 4;
        f[coff..coff + 2].copy_from_slice(&MACHINE_X86_64.to_le_bytes());
        f[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        let opt_size: u16 = 240;
        f[coff + 16..coff + 18].copy_from_slice(&opt_size.to_le_bytes());
        let opt = coff + COFF_HEADER_LEN;
        f[opt..opt + 2].copy_from_slice(&PE32PLUS_MAGIC.to_le_bytes());
        f[opt + OPT_SECTION_ALIGNMENT..][..4].copy_from_slice(&0x1000u32.to_le_bytes());
        f[opt + OPT_FILE_ALIGNMENT..][..4].copy_from_slice(&0x200u32.to_le_bytes());
        f[opt + OPT_SIZE_OF_HEADERS..][..4].copy_from_slice(&0x200u32.to_le_bytes());
        f[opt + OPT_SUBSYSTEM..][..2].copy_from_slice(&SUBSYSTEM_EFI_APPLICATION.to_le_bytes());
        f[opt + PE32PLUS_NUMBER_OF_RVA_AND_SIZES..][..4].copy_from_slice(&16u32.to_le_bytes());
        let table = opt + usize::from(opt_size);
        let mut va = 0x1000u32;
        for (i, (name, data)) in sections.iter().enumerate() {
            let raw = (data.len() as u32).div_ceil(0x200) * 0x200;
            let ptr = f.len() as u32;
            let h = table + i * SECTION_HEADER_LEN;
            f[h..h + 8].copy_from_slice(&SectionName::new(name).0);
            f[h + 8..h + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
            f[h + 12..h + 16].copy_from_slice(&va.to_le_bytes());
            f[h + 16..h + 20].copy_from_slice(&raw.to_le_bytes());
            f[h + 20..h + 24].copy_from_slice(&ptr.to_le_bytes());
            f.extend_from_slice(data);
            f.resize((ptr + raw) as usize, 0);
            va += (data.len() as u32).div_ceil(0x1000).max(1) * 0x1000;
        }
        f[opt + OPT_SIZE_OF_IMAGE..][..4].copy_from_slice(&va.to_le_bytes());
        f
    }

    /// The same image as the firmware would map it.
    fn mapped(file: &[u8]) -> Vec<u8> {
        let pe = PeImage::parse(file).unwrap();
        let mut m = std::vec![0u8; pe.optional.size_of_image as usize];
        m[..0x200].copy_from_slice(&file[..0x200]);
        for s in pe.sections() {
            let data = pe.section_data(&s, Layout::File).unwrap();
            m[s.virtual_address as usize..][..data.len()].copy_from_slice(data);
        }
        m
    }

    #[test]
    fn reads_headers_and_sections_in_both_layouts() {
        let file = tiny_pe(&[(".cmdline", b"quiet SYSTEM-X"), (".linux", &[0xaa; 0x1234])]);
        let pe = PeImage::parse(&file).unwrap();
        assert_eq!(pe.machine, MACHINE_X86_64);
        assert_eq!(pe.number_of_sections, 2);
        assert_eq!(pe.optional.magic, PE32PLUS_MAGIC);
        assert_eq!(pe.optional.section_alignment, 0x1000);
        assert_eq!(pe.optional.file_alignment, 0x200);
        assert_eq!(pe.optional.subsystem, SUBSYSTEM_EFI_APPLICATION);
        assert_eq!(pe.optional.security_directory, Some((0, 0)));
        let names: Vec<_> = pe.sections().map(|s| std::format!("{}", s.name)).collect();
        assert_eq!(names, [".cmdline", ".linux"]);
        let linux = pe.section(".linux").unwrap();
        assert_eq!(
            (
                linux.virtual_address,
                linux.virtual_size,
                linux.size_of_raw_data
            ),
            (0x2000, 0x1234, 0x1400)
        );
        assert_eq!(
            pe.find_section_data(".cmdline", Layout::File).unwrap(),
            Some(&b"quiet SYSTEM-X"[..])
        );
        assert_eq!(pe.find_section_data(".initrd", Layout::File).unwrap(), None);

        let image = mapped(&file);
        let pe = PeImage::parse(&image).unwrap();
        assert_eq!(
            pe.find_section_data(".cmdline", Layout::Mapped).unwrap(),
            Some(&b"quiet SYSTEM-X"[..])
        );
        assert_eq!(
            pe.find_section_data(".linux", Layout::Mapped).unwrap(),
            Some(&[0xaa; 0x1234][..])
        );
    }

    #[test]
    fn data_length_rules() {
        let s = |virtual_size, size_of_raw_data| SectionHeader {
            name: SectionName::new(".x"),
            virtual_size,
            virtual_address: 0,
            size_of_raw_data,
            pointer_to_raw_data: 0,
            characteristics: 0,
        };
        assert_eq!(s(10, 512).data_len(Layout::File), 10);
        assert_eq!(s(10, 512).data_len(Layout::Mapped), 10);
        assert_eq!(s(0, 512).data_len(Layout::Mapped), 512);
        assert_eq!(s(4096, 0).data_len(Layout::Mapped), 4096);
        assert_eq!(s(4096, 0).data_len(Layout::File), 0);
        assert_eq!(s(4096, 512).data_len(Layout::File), 512);
    }

    #[test]
    fn each_malformation_has_its_error() {
        let good = tiny_pe(&[(".linux", b"kernel")]);
        assert_eq!(
            PeImage::parse(b"").unwrap_err(),
            PeError::TooShort { len: 0 }
        );
        assert_eq!(
            PeImage::parse(b"MZ").unwrap_err(),
            PeError::TooShort { len: 2 }
        );
        assert_eq!(
            PeImage::parse(&std::vec![0u8; 0x400]).unwrap_err(),
            PeError::NoDosMagic
        );

        let mut bad = good.clone();
        bad[DOS_PE_OFFSET..DOS_PE_OFFSET + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(
            PeImage::parse(&bad).unwrap_err(),
            PeError::PeOffsetOutOfRange {
                offset: 0xffff_fff0,
                len: good.len()
            }
        );

        let mut bad = good.clone();
        bad[PE_AT + 1] = b'X';
        assert_eq!(
            PeImage::parse(&bad).unwrap_err(),
            PeError::NoPeSignature { offset: PE_AT }
        );

        let mut bad = good.clone();
        bad[PE_AT + 24..PE_AT + 26].copy_from_slice(&0x107u16.to_le_bytes());
        assert_eq!(
            PeImage::parse(&bad).unwrap_err(),
            PeError::UnknownOptionalMagic { magic: 0x107 }
        );

        let mut bad = good.clone();
        bad[PE_AT + 4 + 16..PE_AT + 4 + 18].copy_from_slice(&8u16.to_le_bytes());
        assert_eq!(
            PeImage::parse(&bad).unwrap_err(),
            PeError::OptionalHeaderTooShort { size: 8 }
        );

        let mut bad = good.clone();
        bad[PE_AT + 6..PE_AT + 8].copy_from_slice(&900u16.to_le_bytes());
        assert!(matches!(
            PeImage::parse(&bad).unwrap_err(),
            PeError::SectionTableOutOfRange { count: 900, .. }
        ));

        // A section whose data runs past the end: the error names it.
        let cut = &good[..0x205];
        let pe = PeImage::parse(cut).unwrap();
        let err = pe.find_section_data(".linux", Layout::File).unwrap_err();
        assert_eq!(
            std::format!("{err}"),
            "section .linux: its data at 0x200+0x6 extends past the 517 bytes of the image"
        );
        assert_eq!(pe.find_section_data(".linux", Layout::File).ok(), None);
        // One byte more and it is whole.
        let pe = PeImage::parse(&good[..0x206]).unwrap();
        assert_eq!(
            pe.find_section_data(".linux", Layout::File).unwrap(),
            Some(&b"kernel"[..])
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let good = tiny_pe(&[(".cmdline", b"x"), (".linux", &[1; 700])]);
        for len in 0..good.len() {
            let cut = &good[..len];
            if let Ok(pe) = PeImage::parse(cut) {
                for s in pe.sections() {
                    let _ = pe.section_data(&s, Layout::File);
                    let _ = pe.section_data(&s, Layout::Mapped);
                }
                // .linux holds 700 bytes at 0x400.
                assert_eq!(
                    pe.find_section_data(".linux", Layout::File).is_ok(),
                    len >= 0x400 + 700,
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn section_names_display_escaped() {
        assert_eq!(
            std::format!("{}", SectionName(*b".a\x01b\0\0\0\0")),
            ".a\\x01b"
        );
        assert_eq!(SectionName::new(".toolongname").as_bytes(), b".toolong");
    }

    proptest::proptest! {
        #[test]
        fn corrupted_images_never_panic(
            edits in proptest::collection::vec((0usize..0x700, proptest::num::u8::ANY), 1..12),
        ) {
            let mut file = tiny_pe(&[(".cmdline", b"a b"), (".linux", &[7; 600])]);
            for (at, value) in edits {
                if let Some(b) = file.get_mut(at) {
                    *b = value;
                }
            }
            if let Ok(pe) = PeImage::parse(&file) {
                for s in pe.sections() {
                    for layout in [Layout::File, Layout::Mapped] {
                        if let Ok(data) = pe.section_data(&s, layout) {
                            proptest::prop_assert!(data.len() <= file.len());
                        }
                    }
                }
            }
        }
    }
}
