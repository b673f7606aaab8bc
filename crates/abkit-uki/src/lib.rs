//! Unified kernel images (UKIs): the abkit loader stub with the kernel, initrd,
//! command line and os-release appended as PE sections, and the reverse view.
//!
//! A crate of its own rather than a feature of `abkit-loader-core`: writing
//! needs `std` (owned buffers, error sources) while the core must stay
//! `no_std` for the loader; both read headers with the core's PE reader, so
//! the writer and the loader agree on the layout by construction.
//!
//! It also writes the slot stamp ([`stamp`], [`read_stamp`]) and computes the
//! Authenticode digest ([`authenticode_sha256`]) that the stamp leaves alone,
//! and signs and verifies loaders for Secure Boot ([`sign()`], [`verify`]).

use abkit_loader_core::pe::{
    Layout, PeError, PeImage, SectionHeader, SectionName, check_efi_application, layout::*,
};
use abkit_loader_core::{STUB_MARKER_PREFIX, STUB_MARKER_SECTION, UKI_SECTIONS};
use serde::Serialize;

mod boot_protocol;
pub mod root;
mod sign;
mod stamp;
pub use abkit_loader_core::{Slot, StampError};
pub use sign::{
    SignError, SignatureCheck, SignatureProblem, SigningKey, Verification,
    certificate_for_firmware, parse_certificate, sign, signature_for_digest, verify,
};
pub use stamp::{authenticode_sha256, read_stamp, remove_stamp, stamp};
/// The X.509 certificate type [`verify`] takes.
pub use x509_cert::Certificate;

/// What goes into a UKI besides the stub.
#[derive(Debug, Clone, Copy, Default)]
pub struct UkiParts<'a> {
    /// The kernel (an EFI-stub PE, e.g. `vmlinuz`): the `.linux` section.
    pub linux: &'a [u8],
    /// The initrd: the `.initrd` section, handed to the kernel through LoadFile2.
    pub initrd: Option<&'a [u8]>,
    /// The command line, `SYSTEM-X` marking the slot: the `.cmdline` section.
    pub cmdline: Option<&'a [u8]>,
    /// An os-release file: the `.osrel` section.
    pub osrel: Option<&'a [u8]>,
}

/// Why a UKI cannot be built from a stub, or a file cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("the stub is not an EFI application: {0}")]
    StubNotEfiApplication(#[source] PeError),
    #[error("the stub is corrupt: {0}")]
    StubCorrupt(#[source] PeError),
    #[error("the stub is for machine {0:#06x}, not x86-64 (0x8664)")]
    StubWrongMachine(u16),
    #[error("the stub is a 32-bit PE32 image; a PE32+ EFI stub is needed")]
    StubNotPe32Plus,
    #[error(
        "the stub has no {STUB_MARKER_SECTION} section: it is not an abkit loader stub (build one with `make stub`)"
    )]
    StubNotAbkit,
    #[error(
        "the stub's {STUB_MARKER_SECTION} section does not start with `{STUB_MARKER_PREFIX}`: the stub is corrupt"
    )]
    StubBadMarker,
    #[error("the stub already has a {0} section: give the bare stub, not a built UKI")]
    StubAlreadyHas(&'static str),
    #[error("the stub is signed (it has a certificate table): sign the built UKI instead")]
    StubSigned,
    #[error("the stub's alignments are unusable (sections {section:#x}, file {file:#x})")]
    StubBadAlignment { section: u32, file: u32 },
    #[error("the stub's headers have no room for {needed} more section headers")]
    StubNoHeaderRoom { needed: usize },
    #[error("the loader carries no kernel (.linux section)")]
    NoKernel,
    #[error("the kernel (.linux) is empty")]
    EmptyKernel,
    /// The loader would refuse this command line at boot.
    #[error("the command line cannot be handed to the kernel: {0}")]
    Cmdline(#[source] abkit_loader_core::CmdlineError),
    #[error(
        "the command line is {len} bytes; this kernel reads at most {max} (its setup header's cmdline_size) and would cut the rest"
    )]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the {0} section would grow the image past 4 GiB")]
    TooLarge(&'static str),
    #[error("not a PE image: {0}")]
    NotPe(#[source] PeError),
    #[error("corrupt image: {0}")]
    Corrupt(#[source] PeError),
}

/// One row of the section table, as `abkit uki inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionInfo {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub file_offset: u32,
    pub raw_size: u32,
    pub characteristics: u32,
}

/// What a UKI (or a bare stub) holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UkiInfo {
    /// The section table, in order.
    pub sections: Vec<SectionInfo>,
    /// The stub's marker, e.g. `abkit-stub 0.1.0` (none: not an abkit stub).
    pub stub: Option<String>,
    /// The command line as stored, `SYSTEM-X` and all.
    pub cmdline: Option<String>,
    /// `roothash=` from the command line: the dm-verity root hash of the
    /// root filesystem this UKI boots (see [`root`]).
    pub root_hash: Option<String>,
    /// `PRETTY_NAME` from `.osrel`.
    pub os_pretty_name: Option<String>,
    pub linux_size: Option<u64>,
    pub initrd_size: Option<u64>,
    /// The header's checksum field and the checksum of the file.
    pub checksum_stored: u32,
    pub checksum_computed: u32,
    /// The slot stamped into the certificate table (`A`/`B`), if any.
    pub slot_stamp: Option<String>,
    /// Why the certificate table or stamp cannot be read, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stamp_problem: Option<String>,
    /// Number of entries in the certificate table (signatures and stamp).
    pub certificates: usize,
    /// The Authenticode SHA-256 digest (hex): what a signature covers and
    /// what firmware measures into PCR 4. Equal for stamped and unstamped
    /// copies of one loader.
    pub authenticode_sha256: Option<String>,
    /// PCR 11 (SHA-256 bank, hex) after the loader measured this UKI's
    /// sections into a PCR 11 that starts at zero, as systemd-stub does
    /// (`abkit_loader_core::measure`); `None` for a bare stub.
    pub pcr11_sha256: Option<String>,
}

impl UkiInfo {
    /// True when it carries a kernel: a UKI rather than a bare stub.
    pub fn is_uki(&self) -> bool {
        self.linux_size.is_some()
    }
}

fn round_up(value: u64, align: u32) -> u64 {
    value.div_ceil(u64::from(align)) * u64::from(align)
}

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Checks that `stub` is an abkit loader stub that sections can be appended
/// to; returns it parsed.
fn check_stub(stub: &[u8]) -> Result<PeImage<'_>, UkiError> {
    let pe = check_efi_application(stub).map_err(UkiError::StubNotEfiApplication)?;
    if pe.machine != MACHINE_X86_64 {
        return Err(UkiError::StubWrongMachine(pe.machine));
    }
    if pe.optional.magic != PE32PLUS_MAGIC {
        return Err(UkiError::StubNotPe32Plus);
    }
    for section in pe.sections() {
        pe.section_data(&section, Layout::File)
            .map_err(UkiError::StubCorrupt)?;
    }
    let marker = pe
        .find_section_data(STUB_MARKER_SECTION, Layout::File)
        .map_err(UkiError::StubCorrupt)?
        .ok_or(UkiError::StubNotAbkit)?;
    if !marker.starts_with(STUB_MARKER_PREFIX.as_bytes()) {
        return Err(UkiError::StubBadMarker);
    }
    if let Some(name) = UKI_SECTIONS.iter().find(|name| pe.section(name).is_some()) {
        return Err(UkiError::StubAlreadyHas(name));
    }
    if pe
        .optional
        .security_directory
        .is_some_and(|(_, size)| size != 0)
    {
        return Err(UkiError::StubSigned);
    }
    let (section, file) = (pe.optional.section_alignment, pe.optional.file_alignment);
    if !section.is_power_of_two() || !file.is_power_of_two() || file < 512 || section < file {
        return Err(UkiError::StubBadAlignment { section, file });
    }
    Ok(pe)
}

/// Refuses a command line the loader would refuse at boot (its own check:
/// UTF-8, UCS-2, no NUL) or one longer than `kernel` reads (the slot
/// placeholder keeps its length).
fn check_cmdline(cmdline: &[u8], kernel: &[u8]) -> Result<(), UkiError> {
    let text = abkit_loader_core::trim_cmdline(cmdline);
    let _units = abkit_loader_core::cmdline::ucs2_units(text).map_err(UkiError::Cmdline)?;
    match boot_protocol::max_cmdline_len(kernel) {
        Some(max) if text.len() > max => Err(UkiError::CmdlineTooLong {
            len: text.len(),
            max,
        }),
        _ => Ok(()),
    }
}

/// Appends `parts` to `stub` as the sections `.osrel .cmdline .initrd .linux`
/// (absent or empty optional parts are left out) the way systemd's ukify
/// does: each at the next free section-aligned address and file-aligned
/// offset, the headers (section count, image size, code and data sizes) and
/// the checksum updated. The result is ready to be signed.
pub fn build(stub: &[u8], parts: &UkiParts<'_>) -> Result<Vec<u8>, UkiError> {
    let pe = check_stub(stub)?;
    if parts.linux.is_empty() {
        return Err(UkiError::EmptyKernel);
    }
    if let Some(cmdline) = parts.cmdline {
        check_cmdline(cmdline, parts.linux)?;
    }
    let new: Vec<(&'static str, &[u8], u32)> = [
        (".osrel", parts.osrel),
        (".cmdline", parts.cmdline),
        (".initrd", parts.initrd),
        (".linux", Some(parts.linux)),
    ]
    .into_iter()
    .filter_map(|(name, data)| data.filter(|d| !d.is_empty()).map(|d| (name, d)))
    .map(|(name, data)| {
        let kind = if name == ".linux" {
            SCN_CNT_CODE
        } else {
            SCN_CNT_INITIALIZED_DATA
        };
        (name, data, kind | SCN_MEM_READ)
    })
    .collect();

    // Room for the new headers between the section table and the first data.
    let old_table_end =
        pe.section_table_offset + usize::from(pe.number_of_sections) * SECTION_HEADER_LEN;
    let new_table_end = old_table_end + new.len() * SECTION_HEADER_LEN;
    let first_data = pe
        .sections()
        .filter(|s| s.size_of_raw_data != 0)
        .map(|s| s.pointer_to_raw_data as usize)
        .min()
        .unwrap_or(usize::MAX)
        .min(pe.optional.size_of_headers as usize);
    let gap_is_free = stub
        .get(old_table_end..new_table_end)
        .is_some_and(|gap| gap.iter().all(|&b| b == 0));
    if new_table_end > first_data || !gap_is_free {
        return Err(UkiError::StubNoHeaderRoom { needed: new.len() });
    }
    let number_of_sections = u16::try_from(usize::from(pe.number_of_sections) + new.len())
        .map_err(|_| UkiError::StubNoHeaderRoom { needed: new.len() })?;

    let (section_align, file_align) = (pe.optional.section_alignment, pe.optional.file_alignment);
    let image_end = pe
        .sections()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.size_of_raw_data)))
        .fold(u64::from(pe.optional.size_of_image), u64::max);
    let mut next_address = round_up(image_end, section_align);

    let mut out = stub.to_vec();
    let file_end = round_up(out.len() as u64, file_align);
    out.resize(
        usize::try_from(file_end).map_err(|_| UkiError::TooLarge(".linux"))?,
        0,
    );
    let (mut code_size, mut data_size) = (0u64, 0u64);
    for (i, (name, data, characteristics)) in new.iter().enumerate() {
        let too_large = || UkiError::TooLarge(name);
        let raw_size = round_up(data.len() as u64, file_align);
        let header = SectionHeader {
            name: SectionName::new(name),
            virtual_size: u32::try_from(data.len()).map_err(|_| too_large())?,
            virtual_address: u32::try_from(next_address).map_err(|_| too_large())?,
            size_of_raw_data: u32::try_from(raw_size).map_err(|_| too_large())?,
            pointer_to_raw_data: u32::try_from(out.len()).map_err(|_| too_large())?,
            characteristics: *characteristics,
        };
        u32::try_from(u64::from(header.pointer_to_raw_data) + raw_size).map_err(|_| too_large())?;
        write_section_header(&mut out[old_table_end + i * SECTION_HEADER_LEN..], &header);
        out.extend_from_slice(data);
        out.resize(header.pointer_to_raw_data as usize + raw_size as usize, 0);
        next_address = round_up(next_address + data.len() as u64, section_align);
        if *characteristics & SCN_CNT_CODE != 0 {
            code_size += raw_size;
        } else {
            data_size += raw_size;
        }
    }
    let size_of_image = u32::try_from(next_address).map_err(|_| UkiError::TooLarge(".linux"))?;

    let coff = pe.pe_offset + 4;
    let opt = pe.optional_header_offset;
    put_u16(&mut out, coff + COFF_NUMBER_OF_SECTIONS, number_of_sections);
    put_u32(&mut out, opt + OPT_SIZE_OF_IMAGE, size_of_image);
    for (field, added) in [
        (OPT_SIZE_OF_CODE, code_size),
        (OPT_SIZE_OF_INITIALIZED_DATA, data_size),
    ] {
        let old = u32::from_le_bytes(
            out[opt + field..opt + field + 4]
                .try_into()
                .unwrap_or_default(),
        );
        let sum =
            u32::try_from(u64::from(old) + added).map_err(|_| UkiError::TooLarge(".linux"))?;
        put_u32(&mut out, opt + field, sum);
    }
    let checksum = pe_checksum(&out, opt + OPT_CHECKSUM);
    put_u32(&mut out, opt + OPT_CHECKSUM, checksum);
    Ok(out)
}

fn write_section_header(out: &mut [u8], header: &SectionHeader) {
    out[..8].copy_from_slice(&header.name.0);
    put_u32(out, SEC_VIRTUAL_SIZE, header.virtual_size);
    put_u32(out, SEC_VIRTUAL_ADDRESS, header.virtual_address);
    put_u32(out, SEC_SIZE_OF_RAW_DATA, header.size_of_raw_data);
    put_u32(out, SEC_POINTER_TO_RAW_DATA, header.pointer_to_raw_data);
    out[SEC_POINTER_TO_RAW_DATA + 4..SEC_CHARACTERISTICS].fill(0);
    put_u32(out, SEC_CHARACTERISTICS, header.characteristics);
}

/// The PE image checksum (as `CheckSumMappedFile` computes it): the 16-bit
/// one's-complement-style sum of the file with the checksum field taken as
/// zero, plus the file length.
pub fn pe_checksum(bytes: &[u8], checksum_offset: usize) -> u32 {
    let field = checksum_offset..checksum_offset.saturating_add(4);
    let byte = |i: usize| {
        if field.contains(&i) {
            0
        } else {
            u32::from(bytes[i])
        }
    };
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let high = if i + 1 < bytes.len() { byte(i + 1) } else { 0 };
        sum += byte(i) | (high << 8);
        sum = (sum & 0xffff) + (sum >> 16);
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum.wrapping_add(bytes.len() as u32)
}

/// What a UKI boots, as its stub would boot it for `slot`: the kernel, the
/// initrd and the command line with every `SYSTEM-X` rewritten to the slot
/// (kexec activation starts exactly this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParts<'a> {
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    /// Without a trailing NUL or newline.
    pub cmdline: Vec<u8>,
}

/// The kernel, initrd and command line `image` (a UKI file) boots on `slot`.
pub fn boot_parts(image: &[u8], slot: Slot) -> Result<BootParts<'_>, UkiError> {
    let pe = PeImage::parse(image).map_err(UkiError::NotPe)?;
    let data = |name: &str| {
        pe.find_section_data(name, Layout::File)
            .map_err(UkiError::Corrupt)
    };
    let kernel = data(".linux")?.ok_or(UkiError::NoKernel)?;
    if kernel.is_empty() {
        return Err(UkiError::EmptyKernel);
    }
    let mut cmdline =
        abkit_loader_core::trim_cmdline(data(".cmdline")?.unwrap_or_default()).to_vec();
    abkit_loader_core::rewrite_slot_placeholder(&mut cmdline, slot);
    Ok(BootParts {
        kernel,
        initrd: data(".initrd")?,
        cmdline,
    })
}

/// Reads the section table and the UKI sections of `image` (a UKI or a bare
/// stub), checking that every section lies inside the file.
pub fn inspect(image: &[u8]) -> Result<UkiInfo, UkiError> {
    let pe = PeImage::parse(image).map_err(UkiError::NotPe)?;
    let mut sections = Vec::new();
    for s in pe.sections() {
        pe.section_data(&s, Layout::File)
            .map_err(UkiError::Corrupt)?;
        sections.push(SectionInfo {
            name: s.name.to_string(),
            virtual_address: s.virtual_address,
            virtual_size: s.virtual_size,
            file_offset: s.pointer_to_raw_data,
            raw_size: s.size_of_raw_data,
            characteristics: s.characteristics,
        });
    }
    // In range: every section was checked above.
    let data = |name: &str| pe.find_section_data(name, Layout::File).ok().flatten();
    let text =
        |bytes: &[u8]| String::from_utf8_lossy(abkit_loader_core::trim_cmdline(bytes)).into_owned();
    let os_pretty_name = data(".osrel").and_then(|osrel| {
        String::from_utf8_lossy(osrel).lines().find_map(|line| {
            let value = line.strip_prefix("PRETTY_NAME=")?;
            Some(value.trim_matches(|c| c == '"' || c == '\'').to_string())
        })
    });
    let (slot_stamp, stamp_problem) = match read_stamp(image) {
        Ok(slot) => (slot.map(|s| s.to_string()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let certificates = abkit_loader_core::stamp::table_of(&pe, image.len() as u64)
        .ok()
        .flatten()
        .map_or(0, |range| {
            abkit_loader_core::stamp::entries(&image[range.start as usize..])
                .take_while(Result::is_ok)
                .count()
        });
    let hex = |digest: [u8; 32]| {
        digest.iter().fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write;
            let _ = write!(hex, "{b:02x}");
            hex
        })
    };
    let authenticode_sha256 = authenticode_sha256(image).ok().map(hex);
    let pcr11_sha256 = data(".linux")
        .is_some()
        .then(|| expected_pcr11(image).ok().map(hex))
        .flatten();
    Ok(UkiInfo {
        sections,
        stub: data(STUB_MARKER_SECTION).map(text),
        cmdline: data(".cmdline").map(text),
        root_hash: data(".cmdline")
            .map(text)
            .and_then(|c| root::root_verity(&c))
            .map(|v| v.root_hash),
        os_pretty_name,
        linux_size: data(".linux").map(|d| d.len() as u64),
        initrd_size: data(".initrd").map(|d| d.len() as u64),
        checksum_stored: pe.optional.checksum,
        checksum_computed: pe_checksum(image, pe.optional_header_offset + OPT_CHECKSUM),
        slot_stamp,
        stamp_problem,
        certificates,
        authenticode_sha256,
        pcr11_sha256,
    })
}

/// The SHA-256 PCR 11 the loader leaves when it boots `image`: starting from
/// zeros, each measurement of `abkit_loader_core::measure::pcr11_measurements`
/// extends it (`pcr = SHA-256(pcr || SHA-256(data))`), as the TPM does.
pub fn expected_pcr11(image: &[u8]) -> Result<[u8; 32], UkiError> {
    use sha2::{Digest, Sha256};
    let pe = PeImage::parse(image).map_err(UkiError::NotPe)?;
    let mut pcr = [0u8; 32];
    abkit_loader_core::measure::pcr11_measurements(&pe, Layout::File, |m| {
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(Sha256::digest(m.data));
        pcr = h.finalize().into();
    })
    .map_err(UkiError::NotPe)?;
    Ok(pcr)
}

#[doc(hidden)]
pub mod fixture;

#[cfg(test)]
mod tests;
