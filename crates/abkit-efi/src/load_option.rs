//! EFI_LOAD_OPTION: the content of a `Boot####` variable.
//!
//! Layout (UEFI spec 3.1.3): u32 attributes, u16 FilePathListLength, a
//! NUL-terminated UCS-2 description, FilePathListLength bytes of device
//! paths, then optional data up to the end. Decoding then encoding any
//! well-formed input returns the same bytes.

use std::fmt;

use serde::Serialize;
use thiserror::Error;

use crate::device_path::{DevicePath, DevicePathError};
use crate::ucs2::{self, Ucs2Error};

/// A `Boot####` value that cannot be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoadOptionError {
    #[error("load option is {0} bytes, shorter than its 6-byte fixed header")]
    TooShort(usize),
    #[error("load option description: {0}")]
    Description(Ucs2Error),
    #[error(
        "load option declares {declared} bytes of device paths, but only {available} follow the description"
    )]
    FilePathListOverrun { declared: usize, available: usize },
    #[error("load option device path list: {0}")]
    DevicePath(#[from] DevicePathError),
    #[error("load option device path list is {0} bytes, over the 65535 the format allows")]
    FilePathListTooLong(usize),
}

/// Attribute bits of a load option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct LoadOptionAttributes(pub u32);

impl LoadOptionAttributes {
    pub const ACTIVE: u32 = 0x0000_0001;
    pub const FORCE_RECONNECT: u32 = 0x0000_0002;
    pub const HIDDEN: u32 = 0x0000_0008;
    pub const CATEGORY_MASK: u32 = 0x0000_1F00;
    pub const CATEGORY_BOOT: u32 = 0x0000_0000;
    pub const CATEGORY_APP: u32 = 0x0000_0100;

    pub fn is_active(self) -> bool {
        self.0 & Self::ACTIVE != 0
    }
    pub fn is_hidden(self) -> bool {
        self.0 & Self::HIDDEN != 0
    }
    pub fn forces_reconnect(self) -> bool {
        self.0 & Self::FORCE_RECONNECT != 0
    }
    /// The category field (`CATEGORY_BOOT`, `CATEGORY_APP` or a reserved value).
    pub fn category(self) -> u32 {
        self.0 & Self::CATEGORY_MASK
    }
    /// These attributes with ACTIVE set or cleared; other bits unchanged.
    pub fn with_active(self, active: bool) -> Self {
        if active {
            Self(self.0 | Self::ACTIVE)
        } else {
            Self(self.0 & !Self::ACTIVE)
        }
    }
}

impl fmt::Display for LoadOptionAttributes {
    /// Readable flags, e.g. `active,hidden,app`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.is_active() {
            parts.push("active".to_string());
        }
        if self.forces_reconnect() {
            parts.push("force-reconnect".to_string());
        }
        if self.is_hidden() {
            parts.push("hidden".to_string());
        }
        match self.category() {
            Self::CATEGORY_BOOT => {}
            Self::CATEGORY_APP => parts.push("app".to_string()),
            other => parts.push(format!("category=0x{other:x}")),
        }
        let known = Self::ACTIVE | Self::FORCE_RECONNECT | Self::HIDDEN | Self::CATEGORY_MASK;
        if self.0 & !known != 0 {
            parts.push(format!("reserved=0x{:x}", self.0 & !known));
        }
        f.write_str(&parts.join(","))
    }
}

/// A decoded `Boot####` value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoadOption {
    pub attributes: LoadOptionAttributes,
    pub description: String,
    /// The first path is the one the firmware boots; further paths are optional extras.
    pub file_paths: Vec<DevicePath>,
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    /// An active boot-category entry with one device path and no optional data.
    pub fn new(description: impl Into<String>, path: DevicePath) -> LoadOption {
        LoadOption {
            attributes: LoadOptionAttributes(LoadOptionAttributes::ACTIVE),
            description: description.into(),
            file_paths: vec![path],
            optional_data: Vec::new(),
        }
    }

    /// The device path the firmware boots (the first of the list).
    pub fn boot_path(&self) -> Option<&DevicePath> {
        self.file_paths.first()
    }

    pub fn decode(bytes: &[u8]) -> Result<LoadOption, LoadOptionError> {
        if bytes.len() < 6 {
            return Err(LoadOptionError::TooShort(bytes.len()));
        }
        let attributes = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let list_len = usize::from(u16::from_le_bytes([bytes[4], bytes[5]]));
        let (description, used) =
            ucs2::decode_nul_terminated(&bytes[6..]).map_err(LoadOptionError::Description)?;
        let rest = &bytes[6 + used..];
        if list_len > rest.len() {
            return Err(LoadOptionError::FilePathListOverrun {
                declared: list_len,
                available: rest.len(),
            });
        }
        let file_paths = DevicePath::decode_list(&rest[..list_len])?;
        Ok(LoadOption {
            attributes: LoadOptionAttributes(attributes),
            description,
            file_paths,
            optional_data: rest[list_len..].to_vec(),
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, LoadOptionError> {
        let mut paths = Vec::new();
        for p in &self.file_paths {
            p.encode_into(&mut paths)?;
        }
        let list_len = u16::try_from(paths.len())
            .map_err(|_| LoadOptionError::FilePathListTooLong(paths.len()))?;
        let description = ucs2::encode_nul_terminated(&self.description);
        let mut out =
            Vec::with_capacity(6 + description.len() + paths.len() + self.optional_data.len());
        out.extend_from_slice(&self.attributes.0.to_le_bytes());
        out.extend_from_slice(&list_len.to_le_bytes());
        out.extend_from_slice(&description);
        out.extend_from_slice(&paths);
        out.extend_from_slice(&self.optional_data);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_path::{DevicePathNode, HardDrive, PartitionSignature};
    use proptest::prelude::*;
    use uuid::Uuid;

    fn sample() -> LoadOption {
        LoadOption::new(
            "abkit slot A",
            DevicePath::hard_drive_file(
                HardDrive {
                    partition_number: 1,
                    partition_start: 2048,
                    partition_size: 262144,
                    signature: PartitionSignature::Gpt(Uuid::from_u128(0x1234)),
                },
                "\\EFI\\abkit\\boot-a.efi",
            ),
        )
    }

    #[test]
    fn layout_of_an_abkit_entry() {
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[..4], &1u32.to_le_bytes());
        let list_len = usize::from(u16::from_le_bytes([bytes[4], bytes[5]]));
        let desc_len = ("abkit slot A".len() + 1) * 2;
        assert_eq!(&bytes[6..8], &[b'a', 0]);
        assert_eq!(&bytes[6 + desc_len - 2..6 + desc_len], &[0, 0]);
        assert_eq!(bytes.len(), 6 + desc_len + list_len);
        assert_eq!(LoadOption::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn optional_data_and_extra_paths_round_trip() {
        let mut opt = sample();
        opt.attributes =
            LoadOptionAttributes(LoadOptionAttributes::HIDDEN | LoadOptionAttributes::CATEGORY_APP);
        opt.file_paths.push(DevicePath {
            nodes: vec![DevicePathNode::FilePath("\\x".into())],
        });
        opt.optional_data = b"slot=B\0".to_vec();
        let bytes = opt.encode().unwrap();
        let back = LoadOption::decode(&bytes).unwrap();
        assert_eq!(back, opt);
        assert_eq!(back.attributes.to_string(), "hidden,app");
        assert!(!back.attributes.is_active());
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            LoadOption::decode(&[1, 0, 0]),
            Err(LoadOptionError::TooShort(3))
        );
        // Description without terminator.
        assert!(matches!(
            LoadOption::decode(&[1, 0, 0, 0, 0, 0, b'a', 0]),
            Err(LoadOptionError::Description(Ucs2Error::Unterminated(2)))
        ));
        // Unpaired surrogate in the description.
        assert!(matches!(
            LoadOption::decode(&[1, 0, 0, 0, 0, 0, 0x00, 0xDC, 0, 0]),
            Err(LoadOptionError::Description(
                Ucs2Error::UnpairedSurrogate { .. }
            ))
        ));
        // Path list longer than the rest.
        assert_eq!(
            LoadOption::decode(&[1, 0, 0, 0, 10, 0, 0, 0, 1, 2]),
            Err(LoadOptionError::FilePathListOverrun {
                declared: 10,
                available: 2
            })
        );
        // A bad node inside the list.
        assert!(matches!(
            LoadOption::decode(&[1, 0, 0, 0, 4, 0, 0, 0, 4, 1, 1, 0]),
            Err(LoadOptionError::DevicePath(
                DevicePathError::LengthTooSmall { .. }
            ))
        ));
        // Too long to encode.
        let mut huge = sample();
        huge.file_paths = vec![huge.file_paths[0].clone(); 2000];
        assert!(matches!(
            huge.encode(),
            Err(LoadOptionError::FilePathListTooLong(_))
        ));
    }

    #[test]
    fn entry_with_bytes_after_its_file_path_nul_decodes_and_round_trips() {
        let mut bytes = sample().encode().unwrap();
        // Append two bytes inside the FilePath node (after its NUL) and
        // grow the node and list lengths to match.
        let desc_len = ("abkit slot A".len() + 1) * 2;
        let fp = 6 + desc_len + 42;
        assert_eq!(bytes[fp..fp + 2], [0x04, 0x04]);
        let node_len = u16::from_le_bytes([bytes[fp + 2], bytes[fp + 3]]);
        let end = fp + usize::from(node_len);
        bytes.splice(end..end, [0x5A, 0xA5]);
        bytes[fp + 2..fp + 4].copy_from_slice(&(node_len + 2).to_le_bytes());
        let list_len = u16::from_le_bytes([bytes[4], bytes[5]]);
        bytes[4..6].copy_from_slice(&(list_len + 2).to_le_bytes());

        let opt = LoadOption::decode(&bytes).unwrap();
        assert_eq!(opt.description, "abkit slot A");
        let path = opt.boot_path().unwrap();
        assert!(matches!(
            &path.nodes[1],
            DevicePathNode::Raw { kind: 4, subtype: 4, data } if data.ends_with(&[0, 0, 0x5A, 0xA5])
        ));
        assert_eq!(opt.encode().unwrap(), bytes);
        assert!(path.to_string().starts_with("HD(1,GPT,"), "{path}");
        // A damaged path is never taken for ours.
        assert_eq!(path.file_path(), None);
    }

    fn arb_node() -> impl Strategy<Value = DevicePathNode> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u128>()).prop_map(|(n, s, z, g)| {
                DevicePathNode::HardDrive(HardDrive {
                    partition_number: n,
                    partition_start: s,
                    partition_size: z,
                    signature: PartitionSignature::Gpt(Uuid::from_u128(g)),
                })
            }),
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(n, s, z, m)| {
                DevicePathNode::HardDrive(HardDrive {
                    partition_number: n,
                    partition_start: s,
                    partition_size: z,
                    signature: PartitionSignature::Mbr(m),
                })
            }),
            "[^\u{0}]{0,40}".prop_map(DevicePathNode::FilePath),
            // A FilePath node with bytes after its NUL stays raw.
            (
                "[^\u{0}]{0,20}",
                proptest::collection::vec(any::<u8>(), 1..10)
            )
                .prop_map(|(path, after)| {
                    let mut data = ucs2::encode_nul_terminated(&path);
                    data.extend(after);
                    DevicePathNode::Raw {
                        kind: 4,
                        subtype: 4,
                        data,
                    }
                }),
            Just(DevicePathNode::EndInstance),
            (
                any::<u8>().prop_filter("not an end node", |k| *k != 0x7F),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_filter("not a typed node", |(k, s, _)| {
                    !(*k == 4 && (*s == 1 || *s == 4))
                })
                .prop_map(|(kind, subtype, data)| DevicePathNode::Raw {
                    kind,
                    subtype,
                    data
                }),
        ]
    }

    fn arb_option() -> impl Strategy<Value = LoadOption> {
        (
            any::<u32>(),
            "[^\u{0}]{0,30}",
            proptest::collection::vec(
                proptest::collection::vec(arb_node(), 0..5).prop_map(|nodes| DevicePath { nodes }),
                0..3,
            ),
            proptest::collection::vec(any::<u8>(), 0..30),
        )
            .prop_map(|(a, d, p, o)| LoadOption {
                attributes: LoadOptionAttributes(a),
                description: d,
                file_paths: p,
                optional_data: o,
            })
    }

    proptest! {
        #[test]
        fn structured_options_round_trip(opt in arb_option()) {
            let bytes = opt.encode().unwrap();
            let back = LoadOption::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &opt);
            prop_assert_eq!(back.encode().unwrap(), bytes);
        }

        #[test]
        fn any_decodable_bytes_encode_back_identically(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(opt) = LoadOption::decode(&bytes) {
                prop_assert_eq!(opt.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn mutated_real_options_never_panic_and_round_trip(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
        ) {
            let mut bytes = sample().encode().unwrap();
            for (i, v) in flips {
                let i = i.index(bytes.len());
                bytes[i] = v;
            }
            if let Ok(opt) = LoadOption::decode(&bytes) {
                prop_assert_eq!(opt.encode().unwrap(), bytes);
            }
        }
    }
}
