//! UEFI device paths: the byte layout of nodes and their text form.
//!
//! `HardDrive` and `FilePath` nodes, which abkit creates and matches, are
//! typed when their bytes are canonical; every other node, and any such node
//! whose bytes are not canonical (garbage in an MBR signature's padding,
//! bytes after a file path's NUL, an unpaired surrogate), is kept as raw
//! (type, subtype, bytes). A decoded path therefore encodes back to exactly
//! the bytes it came from, a damaged node never makes its entry unreadable,
//! and a raw node is never taken for one of abkit's files.

use std::fmt;

use thiserror::Error;
use uuid::Uuid;

use crate::ucs2;

/// Byte layout constants of device path nodes (UEFI spec, "Device Path Protocol").
mod layout {
    pub const HEADER_LEN: usize = 4;
    pub const TYPE_HARDWARE: u8 = 0x01;
    pub const TYPE_ACPI: u8 = 0x02;
    pub const TYPE_MESSAGING: u8 = 0x03;
    pub const SUBTYPE_SATA: u8 = 0x12;
    pub const TYPE_MEDIA: u8 = 0x04;
    pub const TYPE_END: u8 = 0x7F;
    pub const SUBTYPE_PCI: u8 = 0x01;
    pub const SUBTYPE_ACPI: u8 = 0x01;
    pub const SUBTYPE_HARD_DRIVE: u8 = 0x01;
    pub const SUBTYPE_VENDOR_MEDIA: u8 = 0x03;
    pub const SUBTYPE_FILE_PATH: u8 = 0x04;
    pub const SUBTYPE_FV_FILE: u8 = 0x06;
    pub const SUBTYPE_FV: u8 = 0x07;
    pub const SUBTYPE_END_INSTANCE: u8 = 0x01;
    pub const SUBTYPE_END_ENTIRE: u8 = 0xFF;
    /// HardDrive node: header, partition number u32, start u64, size u64,
    /// signature [16], partition format u8, signature type u8.
    pub const HARD_DRIVE_LEN: usize = 42;
    pub const FORMAT_MBR: u8 = 0x01;
    pub const FORMAT_GPT: u8 = 0x02;
    pub const SIGNATURE_MBR: u8 = 0x01;
    pub const SIGNATURE_GUID: u8 = 0x02;
}

/// A device path that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DevicePathError {
    #[error(
        "device path node at byte {offset} is truncated: {available} bytes left, header needs 4"
    )]
    TruncatedHeader { offset: usize, available: usize },
    #[error("device path node at byte {offset} declares length {length}, below the 4-byte minimum")]
    LengthTooSmall { offset: usize, length: u16 },
    #[error(
        "device path node at byte {offset} declares length {length}, but only {available} bytes are left"
    )]
    LengthOverrun {
        offset: usize,
        length: u16,
        available: usize,
    },
    #[error("end node at byte {offset} has length {length}, expected 4")]
    BadEndNode { offset: usize, length: u16 },
    #[error("device path has no end node within its {0} bytes")]
    Unterminated(usize),
    #[error("device path node of {0} bytes does not fit the 16-bit node length")]
    NodeTooLong(usize),
}

/// How a partition in a `HardDrive` node is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionSignature {
    /// GPT unique partition GUID.
    Gpt(Uuid),
    /// MBR disk signature (32 bits).
    Mbr(u32),
}

/// `HD(...)`: a partition on a disk (media type 4, subtype 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HardDrive {
    /// 1-based partition number.
    pub partition_number: u32,
    /// First LBA of the partition.
    pub partition_start: u64,
    /// Size in logical blocks.
    pub partition_size: u64,
    pub signature: PartitionSignature,
}

/// One node of a device path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DevicePathNode {
    HardDrive(HardDrive),
    /// A file path on the partition, e.g. `\EFI\abkit\boot-a.efi`.
    FilePath(String),
    /// End of one instance in a multi-instance path (type 0x7F, subtype 0x01).
    EndInstance,
    /// Any node abkit does not interpret, kept byte for byte.
    Raw {
        kind: u8,
        subtype: u8,
        data: Vec<u8>,
    },
}

/// A single device path: its nodes, without the final End Entire node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DevicePath {
    pub nodes: Vec<DevicePathNode>,
}

impl HardDrive {
    fn decode(data: &[u8]) -> Option<HardDrive> {
        use layout::*;
        if data.len() != HARD_DRIVE_LEN - HEADER_LEN {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap_or_default());
        let sig: [u8; 16] = data[20..36].try_into().ok()?;
        let signature = match (data[36], data[37]) {
            (FORMAT_GPT, SIGNATURE_GUID) => PartitionSignature::Gpt(Uuid::from_bytes_le(sig)),
            (FORMAT_MBR, SIGNATURE_MBR) => {
                PartitionSignature::Mbr(u32::from_le_bytes(sig[..4].try_into().ok()?))
            }
            _ => return None,
        };
        let hd = HardDrive {
            partition_number: u32_at(0),
            partition_start: u64_at(4),
            partition_size: u64_at(12),
            signature,
        };
        // Only take the typed form when it re-encodes to the same bytes
        // (e.g. an MBR signature with non-zero padding stays raw).
        (hd.encode_data() == data).then_some(hd)
    }

    fn encode_data(&self) -> Vec<u8> {
        use layout::*;
        let mut out = Vec::with_capacity(HARD_DRIVE_LEN - HEADER_LEN);
        out.extend_from_slice(&self.partition_number.to_le_bytes());
        out.extend_from_slice(&self.partition_start.to_le_bytes());
        out.extend_from_slice(&self.partition_size.to_le_bytes());
        match self.signature {
            PartitionSignature::Gpt(guid) => {
                out.extend_from_slice(&guid.to_bytes_le());
                out.extend_from_slice(&[FORMAT_GPT, SIGNATURE_GUID]);
            }
            PartitionSignature::Mbr(sig) => {
                out.extend_from_slice(&sig.to_le_bytes());
                out.extend_from_slice(&[0; 12]);
                out.extend_from_slice(&[FORMAT_MBR, SIGNATURE_MBR]);
            }
        }
        out
    }

    /// The GPT partition GUID, if this node names a GPT partition.
    pub fn gpt_guid(&self) -> Option<Uuid> {
        match self.signature {
            PartitionSignature::Gpt(g) => Some(g),
            PartitionSignature::Mbr(_) => None,
        }
    }
}

impl DevicePathNode {
    /// The typed node when its bytes are canonical, else a raw node (never
    /// an error: the node's length has already been checked).
    fn decode(kind: u8, subtype: u8, data: &[u8]) -> Self {
        use layout::*;
        let typed = match (kind, subtype) {
            (TYPE_MEDIA, SUBTYPE_HARD_DRIVE) => HardDrive::decode(data).map(Self::HardDrive),
            // Exactly one string and its NUL; anything after the NUL (or an
            // odd length, or an unpaired surrogate) has no string form.
            (TYPE_MEDIA, SUBTYPE_FILE_PATH) => ucs2::decode_exact(data).ok().map(Self::FilePath),
            _ => None,
        };
        typed.unwrap_or_else(|| DevicePathNode::Raw {
            kind,
            subtype,
            data: data.to_vec(),
        })
    }

    fn kind_subtype_data(&self) -> (u8, u8, std::borrow::Cow<'_, [u8]>) {
        use layout::*;
        use std::borrow::Cow;
        match self {
            DevicePathNode::HardDrive(hd) => {
                (TYPE_MEDIA, SUBTYPE_HARD_DRIVE, Cow::Owned(hd.encode_data()))
            }
            DevicePathNode::FilePath(p) => (
                TYPE_MEDIA,
                SUBTYPE_FILE_PATH,
                Cow::Owned(ucs2::encode_nul_terminated(p)),
            ),
            DevicePathNode::EndInstance => (TYPE_END, SUBTYPE_END_INSTANCE, Cow::Borrowed(&[])),
            DevicePathNode::Raw {
                kind,
                subtype,
                data,
            } => (*kind, *subtype, Cow::Borrowed(data.as_slice())),
        }
    }

    /// Appends this node's bytes (header included) to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), DevicePathError> {
        let (kind, subtype, data) = self.kind_subtype_data();
        let total = layout::HEADER_LEN + data.len();
        let len = u16::try_from(total).map_err(|_| DevicePathError::NodeTooLong(total))?;
        out.extend_from_slice(&[kind, subtype]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&data);
        Ok(())
    }
}

impl DevicePath {
    /// The path abkit uses for its loaders: `HD(...)/\path\to\file.efi`.
    pub fn hard_drive_file(hd: HardDrive, path: &str) -> DevicePath {
        DevicePath {
            nodes: vec![
                DevicePathNode::HardDrive(hd),
                DevicePathNode::FilePath(path.to_owned()),
            ],
        }
    }

    /// Decodes one device path from the start of `bytes`, up to and including
    /// its End Entire node. Returns the path and the number of bytes used.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(DevicePath, usize), DevicePathError> {
        use layout::*;
        let mut nodes = Vec::new();
        let mut offset = 0;
        loop {
            let rest = &bytes[offset..];
            if rest.len() < HEADER_LEN {
                return Err(if rest.is_empty() {
                    DevicePathError::Unterminated(bytes.len())
                } else {
                    DevicePathError::TruncatedHeader {
                        offset,
                        available: rest.len(),
                    }
                });
            }
            let (kind, subtype) = (rest[0], rest[1]);
            let length = u16::from_le_bytes([rest[2], rest[3]]);
            let len = usize::from(length);
            if len < HEADER_LEN {
                return Err(DevicePathError::LengthTooSmall { offset, length });
            }
            if len > rest.len() {
                return Err(DevicePathError::LengthOverrun {
                    offset,
                    length,
                    available: rest.len(),
                });
            }
            if kind == TYPE_END
                && (subtype == SUBTYPE_END_ENTIRE || subtype == SUBTYPE_END_INSTANCE)
            {
                if len != HEADER_LEN {
                    return Err(DevicePathError::BadEndNode { offset, length });
                }
                if subtype == SUBTYPE_END_ENTIRE {
                    return Ok((DevicePath { nodes }, offset + len));
                }
                nodes.push(DevicePathNode::EndInstance);
            } else {
                nodes.push(DevicePathNode::decode(
                    kind,
                    subtype,
                    &rest[HEADER_LEN..len],
                ));
            }
            offset += len;
        }
    }

    /// Decodes a packed list of device paths (as in EFI_LOAD_OPTION's FilePathList).
    pub fn decode_list(mut bytes: &[u8]) -> Result<Vec<DevicePath>, DevicePathError> {
        let mut paths = Vec::new();
        let mut base = 0;
        while !bytes.is_empty() {
            let (path, used) = DevicePath::decode_prefix(bytes).map_err(|e| e.shifted(base))?;
            paths.push(path);
            bytes = &bytes[used..];
            base += used;
        }
        Ok(paths)
    }

    /// Encodes the nodes followed by an End Entire node.
    ///
    /// Fails only for a node too long for its 16-bit length field, which no
    /// decoded path has.
    pub fn encode(&self) -> Result<Vec<u8>, DevicePathError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), DevicePathError> {
        for node in &self.nodes {
            node.encode_into(out)?;
        }
        out.extend_from_slice(&[layout::TYPE_END, layout::SUBTYPE_END_ENTIRE, 4, 0]);
        Ok(())
    }

    /// The first `HardDrive` node, if any.
    pub fn hard_drive(&self) -> Option<&HardDrive> {
        self.nodes.iter().find_map(|n| match n {
            DevicePathNode::HardDrive(hd) => Some(hd),
            _ => None,
        })
    }

    /// The file path: all `FilePath` nodes joined (firmware may split a path
    /// over several nodes), or `None` if there is none.
    pub fn file_path(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .nodes
            .iter()
            .filter_map(|n| match n {
                DevicePathNode::FilePath(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        if parts.is_empty() {
            return None;
        }
        let mut joined = String::new();
        for p in parts {
            if !joined.is_empty() && !joined.ends_with('\\') && !p.starts_with('\\') {
                joined.push('\\');
            }
            joined.push_str(p);
        }
        Some(joined)
    }
}

impl DevicePathError {
    fn shifted(self, base: usize) -> Self {
        use DevicePathError::*;
        match self {
            TruncatedHeader { offset, available } => TruncatedHeader {
                offset: offset + base,
                available,
            },
            LengthTooSmall { offset, length } => LengthTooSmall {
                offset: offset + base,
                length,
            },
            LengthOverrun {
                offset,
                length,
                available,
            } => LengthOverrun {
                offset: offset + base,
                length,
                available,
            },
            BadEndNode { offset, length } => BadEndNode {
                offset: offset + base,
                length,
            },
            Unterminated(n) => Unterminated(n + base),
            NodeTooLong(n) => NodeTooLong(n),
        }
    }
}

/// Compares two firmware file paths the way FAT does: case-insensitive, and
/// `/` and `\` are the same separator.
pub fn same_file_path(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim_start_matches(['\\', '/'])
            .replace('/', "\\")
            .to_lowercase()
    };
    norm(a) == norm(b)
}

fn fmt_hex(f: &mut fmt::Formatter<'_>, data: &[u8]) -> fmt::Result {
    for b in data {
        write!(f, "{b:02X}")?;
    }
    Ok(())
}

impl fmt::Display for DevicePathNode {
    /// The UEFI text form ("Device Path Node Text Representation"); nodes
    /// abkit does not model use the generic `Path(type,subtype,hex)` form,
    /// except a few common ones that make firmware entries readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use layout::*;
        match self {
            DevicePathNode::HardDrive(hd) => {
                write!(f, "HD({},", hd.partition_number)?;
                match hd.signature {
                    PartitionSignature::Gpt(g) => write!(f, "GPT,{}", g.hyphenated())?,
                    PartitionSignature::Mbr(s) => write!(f, "MBR,0x{s:08X}")?,
                }
                write!(f, ",0x{:X},0x{:X})", hd.partition_start, hd.partition_size)
            }
            DevicePathNode::FilePath(p) => f.write_str(p),
            DevicePathNode::EndInstance => f.write_str(","),
            DevicePathNode::Raw {
                kind,
                subtype,
                data,
            } => {
                let guid = || Uuid::from_bytes_le(data[..16].try_into().unwrap_or_default());
                match (*kind, *subtype, data.len()) {
                    (TYPE_HARDWARE, SUBTYPE_PCI, 2) => {
                        write!(f, "Pci(0x{:X},0x{:X})", data[1], data[0])
                    }
                    (TYPE_ACPI, SUBTYPE_ACPI, 8) if data[..4] == [0xD0, 0x41, 0x03, 0x0A] => {
                        let uid = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
                        write!(f, "PciRoot(0x{uid:X})")
                    }
                    (TYPE_MESSAGING, SUBTYPE_SATA, 6) => {
                        let u = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
                        write!(f, "Sata(0x{:X},0x{:X},0x{:X})", u(0), u(2), u(4))
                    }
                    (TYPE_MEDIA, SUBTYPE_FV, 16) => write!(f, "Fv({})", guid()),
                    (TYPE_MEDIA, SUBTYPE_FV_FILE, 16) => write!(f, "FvFile({})", guid()),
                    (TYPE_MEDIA, SUBTYPE_VENDOR_MEDIA, n) if n >= 16 => {
                        write!(f, "VenMedia({}", guid())?;
                        if n > 16 {
                            f.write_str(",")?;
                            fmt_hex(f, &data[16..])?;
                        }
                        f.write_str(")")
                    }
                    _ => {
                        write!(f, "Path({kind},{subtype}")?;
                        if !data.is_empty() {
                            f.write_str(",")?;
                            fmt_hex(f, data)?;
                        }
                        f.write_str(")")
                    }
                }
            }
        }
    }
}

impl fmt::Display for DevicePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for node in &self.nodes {
            if !first && !matches!(node, DevicePathNode::EndInstance) {
                f.write_str("/")?;
            }
            first = matches!(node, DevicePathNode::EndInstance);
            write!(f, "{node}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp_guid() -> Uuid {
        Uuid::parse_str("0f4c6b0e-8a8c-4a1b-9c3e-2b7e4a6f5d10").unwrap()
    }

    fn abkit_path() -> DevicePath {
        DevicePath::hard_drive_file(
            HardDrive {
                partition_number: 1,
                partition_start: 0x800,
                partition_size: 0x100000,
                signature: PartitionSignature::Gpt(esp_guid()),
            },
            "\\EFI\\abkit\\boot-a.efi",
        )
    }

    #[test]
    fn text_form_matches_uefi_spec() {
        assert_eq!(
            abkit_path().to_string(),
            "HD(1,GPT,0f4c6b0e-8a8c-4a1b-9c3e-2b7e4a6f5d10,0x800,0x100000)/\\EFI\\abkit\\boot-a.efi"
        );
    }

    #[test]
    fn hard_drive_bytes_follow_the_spec_layout() {
        let bytes = abkit_path().encode().unwrap();
        assert_eq!(&bytes[..4], &[0x04, 0x01, 42, 0]);
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &0x800u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &0x100000u64.to_le_bytes());
        // Mixed-endian GUID: first three fields little-endian.
        assert_eq!(&bytes[24..28], &[0x0e, 0x6b, 0x4c, 0x0f]);
        assert_eq!(&bytes[40..42], &[0x02, 0x02]);
        // File path node: header + UCS-2 with NUL.
        let fp = &bytes[42..];
        let name_len = ("\\EFI\\abkit\\boot-a.efi".len() + 1) * 2;
        assert_eq!(fp[..2], [0x04, 0x04]);
        assert_eq!(
            usize::from(u16::from_le_bytes([fp[2], fp[3]])),
            4 + name_len
        );
        assert_eq!(&fp[4 + name_len..], &[0x7F, 0xFF, 4, 0]);
        let (back, used) = DevicePath::decode_prefix(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, abkit_path());
    }

    #[test]
    fn unknown_nodes_are_kept_byte_for_byte() {
        // PciRoot(0x0)/Pci(0x1,0x1)/Path(3,18,...)/MAC-ish unknown node
        let bytes: Vec<u8> = [
            &[0x02, 0x01, 12, 0, 0xD0, 0x41, 0x03, 0x0A, 0, 0, 0, 0][..],
            &[0x01, 0x01, 6, 0, 0x01, 0x01],
            &[0x03, 0x12, 10, 0, 1, 2, 3, 4, 5, 6],
            &[0x7F, 0xFF, 4, 0],
        ]
        .concat();
        let (p, used) = DevicePath::decode_prefix(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(p.encode().unwrap(), bytes);
        assert_eq!(
            p.to_string(),
            "PciRoot(0x0)/Pci(0x1,0x1)/Sata(0x201,0x403,0x605)"
        );
    }

    #[test]
    fn mbr_hard_drive_and_noncanonical_hard_drive() {
        let mut data = vec![0x04, 0x01, 42, 0];
        data.extend_from_slice(&2u32.to_le_bytes());
        data.extend_from_slice(&63u64.to_le_bytes());
        data.extend_from_slice(&1000u64.to_le_bytes());
        data.extend_from_slice(&0xDEADBEEFu32.to_le_bytes());
        data.extend_from_slice(&[0; 12]);
        data.extend_from_slice(&[1, 1, 0x7F, 0xFF, 4, 0]);
        let (p, _) = DevicePath::decode_prefix(&data).unwrap();
        assert_eq!(p.to_string(), "HD(2,MBR,0xDEADBEEF,0x3F,0x3E8)");
        assert_eq!(p.encode().unwrap(), data);
        // Garbage in the MBR padding: kept raw, still round trips.
        data[30] = 0x55;
        let (p, _) = DevicePath::decode_prefix(&data).unwrap();
        assert!(matches!(p.nodes[0], DevicePathNode::Raw { .. }));
        assert_eq!(p.encode().unwrap(), data);
    }

    #[test]
    fn malformed_paths_are_typed_errors() {
        assert_eq!(
            DevicePath::decode_prefix(&[0x04, 0x01]),
            Err(DevicePathError::TruncatedHeader {
                offset: 0,
                available: 2
            })
        );
        assert_eq!(
            DevicePath::decode_prefix(&[0x04, 0x01, 2, 0]),
            Err(DevicePathError::LengthTooSmall {
                offset: 0,
                length: 2
            })
        );
        assert_eq!(
            DevicePath::decode_prefix(&[0x04, 0x01, 42, 0, 0, 0]),
            Err(DevicePathError::LengthOverrun {
                offset: 0,
                length: 42,
                available: 6
            })
        );
        assert_eq!(
            DevicePath::decode_prefix(&[0x7F, 0xFF, 6, 0, 0, 0]),
            Err(DevicePathError::BadEndNode {
                offset: 0,
                length: 6
            })
        );
        assert_eq!(
            DevicePath::decode_prefix(&[0x01, 0x01, 6, 0, 1, 1]),
            Err(DevicePathError::Unterminated(6))
        );
        // Errors in the second path of a list report absolute offsets.
        let mut list = abkit_path().encode().unwrap();
        let second = list.len();
        list.extend_from_slice(&[0x04, 0x01, 3, 0]);
        assert_eq!(
            DevicePath::decode_list(&list),
            Err(DevicePathError::LengthTooSmall {
                offset: second,
                length: 3
            })
        );
    }

    /// A FilePath node's bytes with `after` appended after its NUL.
    fn file_path_node(path: &str, after: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data = crate::ucs2::encode_nul_terminated(path);
        data.extend_from_slice(after);
        let mut node = vec![0x04, 0x04];
        node.extend_from_slice(&u16::try_from(4 + data.len()).unwrap().to_le_bytes());
        node.extend_from_slice(&data);
        (node, data)
    }

    #[test]
    fn noncanonical_file_paths_are_kept_raw() {
        let hd = abkit_path().encode().unwrap();
        let hd_node = &hd[..42];
        // Bytes after the NUL (seen from firmware that pads or reuses buffers),
        // an unpaired surrogate, an odd length, no NUL at all.
        let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            file_path_node("\\EFI\\x.efi", &[0xAA, 0xBB, 0, 0]),
            file_path_node("\\EFI\\x.efi", &[0, 0]),
            file_path_node("", &[0x41]),
            {
                let data = vec![0x00, 0xD8, 0, 0];
                ([&[0x04, 0x04, 8, 0][..], &data].concat(), data)
            },
            {
                let data = vec![b'a', 0];
                ([&[0x04, 0x04, 6, 0][..], &data].concat(), data)
            },
        ];
        for (node, data) in cases {
            let bytes = [hd_node, &node, &[0x7F, 0xFF, 4, 0]].concat();
            let (p, used) = DevicePath::decode_prefix(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(
                p.nodes[1],
                DevicePathNode::Raw {
                    kind: 4,
                    subtype: 4,
                    data: data.clone()
                }
            );
            assert_eq!(p.encode().unwrap(), bytes, "{data:02x?}");
            // Shown in the generic form, never matched as a file of ours.
            assert!(p.to_string().contains("/Path(4,4,"), "{p}");
            assert_eq!(p.file_path(), None);
        }
        // The canonical form is still typed.
        let (node, _) = file_path_node("\\EFI\\x.efi", &[]);
        let bytes = [&node[..], &[0x7F, 0xFF, 4, 0]].concat();
        let (p, _) = DevicePath::decode_prefix(&bytes).unwrap();
        assert_eq!(p.nodes, [DevicePathNode::FilePath("\\EFI\\x.efi".into())]);
    }

    proptest::proptest! {
        #[test]
        fn any_file_path_node_decodes_and_round_trips(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60)
        ) {
            let mut bytes = vec![0x04, 0x04];
            bytes.extend_from_slice(&u16::try_from(4 + data.len()).unwrap().to_le_bytes());
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(&[0x7F, 0xFF, 4, 0]);
            let (p, _) = DevicePath::decode_prefix(&bytes).unwrap();
            proptest::prop_assert_eq!(p.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn multi_instance_paths_round_trip() {
        let bytes = [
            0x01, 0x01, 6, 0, 0, 1, 0x7F, 0x01, 4, 0, 0x01, 0x01, 6, 0, 0, 2, 0x7F, 0xFF, 4, 0,
        ];
        let (p, _) = DevicePath::decode_prefix(&bytes).unwrap();
        assert_eq!(p.nodes[1], DevicePathNode::EndInstance);
        assert_eq!(p.encode().unwrap(), bytes);
        assert_eq!(p.to_string(), "Pci(0x1,0x0),Pci(0x2,0x0)");
    }

    #[test]
    fn file_paths_compare_like_fat() {
        assert!(same_file_path(
            "\\EFI\\abkit\\BOOT-A.EFI",
            "/efi/abkit/boot-a.efi"
        ));
        assert!(!same_file_path(
            "\\EFI\\abkit\\boot-a.efi",
            "\\EFI\\abkit\\boot-b.efi"
        ));
    }
}
