//! Where EFI variables live: one trait, several backends.
//!
//! Every backend stores (vendor GUID, name) → (attributes, data). Writers
//! compare before writing: an unchanged value is never written again, since
//! firmware NVRAM wears out.

mod efivarfs;
mod memory;
mod ovmf;

pub use efivarfs::{EFIVARFS_PATH, EfivarfsStore, is_efivarfs};
pub use memory::MemoryStore;
pub use ovmf::{OvmfFormatError, OvmfVarsFile};

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;
use uuid::Uuid;

/// Attribute bits of EFI variables (UEFI spec, SetVariable()).
pub mod attributes {
    pub const NON_VOLATILE: u32 = 0x01;
    pub const BOOTSERVICE_ACCESS: u32 = 0x02;
    pub const RUNTIME_ACCESS: u32 = 0x04;
    pub const HARDWARE_ERROR_RECORD: u32 = 0x08;
    pub const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;
    pub const APPEND_WRITE: u32 = 0x40;
    /// What `Boot####`, `BootOrder` and `BootNext` carry: NV | BS | RT.
    pub const BOOT_VARIABLE: u32 = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS;
}

/// The key of a variable: vendor GUID and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VarName {
    pub vendor: Uuid,
    pub name: String,
}

impl VarName {
    pub fn new(vendor: Uuid, name: impl Into<String>) -> VarName {
        VarName {
            vendor,
            name: name.into(),
        }
    }

    /// A variable of the boot manager (EFI global variable vendor).
    pub fn global(name: impl Into<String>) -> VarName {
        VarName::new(crate::boot_vars::EFI_GLOBAL_VARIABLE, name)
    }
}

impl fmt::Display for VarName {
    /// The efivarfs file name form: `Name-vendor-guid`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.name, self.vendor.hyphenated())
    }
}

/// A variable's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub attributes: u32,
    pub data: Vec<u8>,
}

/// A variable store operation that failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: not a usable OVMF VARS file: {source}")]
    OvmfFormat {
        path: PathBuf,
        #[source]
        source: OvmfFormatError,
    },
    #[error("variable store full: {needed} bytes needed for {name}, {free} free after compaction")]
    Full {
        name: String,
        needed: usize,
        free: usize,
    },
    #[error(
        "{path}: the VARS file has no authenticated variable store (no timestamps), so it cannot hold Secure Boot keys; start from OVMF_VARS_4M.fd"
    )]
    NotAuthenticated { path: PathBuf },
    #[error("invalid variable name {0:?}")]
    InvalidName(String),
}

/// A place that holds EFI variables.
pub trait VarStore {
    /// Reads a variable; `Ok(None)` if it does not exist.
    fn get(&self, name: &VarName) -> Result<Option<Variable>, StoreError>;

    /// Creates or replaces a variable. Returns `false` without writing
    /// anything when the store already holds exactly this value.
    fn set(&mut self, name: &VarName, value: &Variable) -> Result<bool, StoreError>;

    /// Deletes a variable. Returns `false` when it did not exist.
    fn delete(&mut self, name: &VarName) -> Result<bool, StoreError>;

    /// Every variable name in the store, sorted.
    fn list(&self) -> Result<Vec<VarName>, StoreError>;
}

/// Rejects names that could not be stored as a file or firmware variable.
pub(crate) fn check_name(name: &VarName) -> Result<(), StoreError> {
    if name.name.is_empty() || name.name.contains(['/', '\0']) {
        return Err(StoreError::InvalidName(name.name.clone()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every backend must show, run against each of them.
    use super::*;

    pub fn check_store_contract(store: &mut dyn VarStore) {
        let a = VarName::global("Boot0001");
        let b = VarName::new(Uuid::from_u128(0xabcdef), "Other");
        assert_eq!(store.get(&a).unwrap(), None);
        assert!(
            !store.delete(&a).unwrap(),
            "deleting a missing variable reports false"
        );
        let v1 = Variable {
            attributes: attributes::BOOT_VARIABLE,
            data: vec![1, 2, 3],
        };
        assert!(store.set(&a, &v1).unwrap(), "first write writes");
        assert!(
            !store.set(&a, &v1).unwrap(),
            "identical value is not rewritten"
        );
        assert_eq!(store.get(&a).unwrap(), Some(v1.clone()));
        let v2 = Variable {
            attributes: attributes::BOOTSERVICE_ACCESS | attributes::RUNTIME_ACCESS,
            data: vec![9; 300],
        };
        assert!(
            store.set(&a, &v2).unwrap(),
            "changed attributes or data are written"
        );
        assert_eq!(store.get(&a).unwrap(), Some(v2));
        store.set(&b, &v1).unwrap();
        let names = store.list().unwrap();
        assert!(names.contains(&a) && names.contains(&b), "{names:?}");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "list is sorted");
        assert!(store.delete(&a).unwrap());
        assert_eq!(store.get(&a).unwrap(), None);
        assert!(!store.list().unwrap().contains(&a));
        assert!(matches!(
            store.set(&VarName::global("a/b"), &v1),
            Err(StoreError::InvalidName(_))
        ));
    }
}
