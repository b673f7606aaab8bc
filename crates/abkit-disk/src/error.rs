//! The one error type of this crate: every refusal names its problem.

use std::path::PathBuf;

use abkit_loader_core::PeError;

/// Everything that can go wrong building, opening or changing a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// An I/O call failed; `context` says on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The loader file is not something UEFI firmware would start.
    #[error("the loader is not a PE/COFF EFI application: {0}")]
    NotEfiApplication(#[from] PeError),
    /// The system image does not fit into its slot.
    #[error(
        "the system image is {image} bytes but a slot holds only {slot} bytes (raise --system-size)"
    )]
    SystemImageTooLarge { image: u64, slot: u64 },
    /// A requested size is below what its partition needs.
    #[error("{what} of {size} bytes is too small: at least {min} bytes are needed")]
    SizeTooSmall {
        what: &'static str,
        size: u64,
        min: u64,
    },
    /// The partitions do not fit into the requested disk size.
    #[error(
        "the partitions need a disk of at least {needed} bytes but the disk size is {disk} bytes"
    )]
    DiskTooSmall { disk: u64, needed: u64 },
    /// Sizes so large that the arithmetic overflows.
    #[error("sizes too large: {0}")]
    SizeOverflow(&'static str),
    /// Partition names are UTF-16 with room for 36 units.
    #[error("invalid label prefix {prefix:?}: {reason}")]
    BadLabelPrefix {
        prefix: String,
        reason: &'static str,
    },
    /// The output exists and is a block device, and `force` was not given.
    #[error("{0} is an existing block device: refusing to overwrite it without --force")]
    BlockDeviceWithoutForce(PathBuf),
    /// The output block device is in use (the kernel refused an exclusive
    /// open): never overwritten, `force` or not.
    #[error(
        "{0} is in use (a filesystem on it or on one of its partitions is mounted, or device-mapper, RAID or swap holds it): refusing to overwrite it, even with --force"
    )]
    BlockDeviceInUse(PathBuf),
    /// The output is one of the inputs (building would destroy it).
    #[error("the output {0} is also an input file")]
    OutputIsInput(PathBuf),
    /// An input (the loader or the system image) is neither a regular file
    /// nor a block device: a FIFO would block the build forever, a
    /// character device such as `/dev/null` reads as nothing.
    #[error("the {what} {path} is neither a regular file nor a block device")]
    InputNotFileOrBlockDevice { what: &'static str, path: PathBuf },
    /// The system image has no bytes: slot A would be empty yet active.
    #[error("the system image {0} is empty (0 bytes)")]
    EmptySystemImage(PathBuf),
    /// The output exists and is neither a regular file nor a block device.
    #[error("{0} is neither a regular file nor a block device")]
    NotFileOrBlockDevice(PathBuf),
    /// The disk has no readable GPT.
    #[error("{path}: no valid GPT partition table: {reason}")]
    NoGpt { path: PathBuf, reason: String },
    /// A damaged GPT copy could not be rewritten from the good one.
    #[error("{path}: cannot repair the GPT: {reason}")]
    GptRepair { path: PathBuf, reason: String },
    /// A partition with a required type GUID is absent.
    #[error("no {role} partition (type GUID {type_guid})")]
    MissingPartition {
        role: &'static str,
        type_guid: uuid::Uuid,
    },
    /// More than one partition carries a type GUID that must be unique.
    #[error("partitions {first} and {second} both have the {role} type GUID")]
    DuplicatePartition {
        role: &'static str,
        first: u32,
        second: u32,
    },
    /// A partition entry points outside the disk.
    #[error("partition {number} ends at byte {end}, beyond the disk's {disk} bytes")]
    PartitionOutsideDisk { number: u32, end: u64, disk: u64 },
    /// The ESP's FAT file system could not be formatted, read or changed.
    #[error("ESP {context}: {source}")]
    Fat {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A path inside the ESP is empty or has an empty or dot component.
    #[error("invalid ESP path {0:?}")]
    BadEspPath(String),
    /// The OVMF VARS file (or another variable store) failed.
    #[error("variable store: {0}")]
    VarStore(#[from] abkit_efi::StoreError),
    /// Writing the boot entries failed.
    #[error("boot entries: {0}")]
    BootEntries(#[from] abkit_efi::BootError),
    /// The ESP has no such file.
    #[error("ESP file {0} not found")]
    EspFileNotFound(String),
    /// The cluster chain of an ESP file or directory is damaged (`path` is
    /// `\` for the root directory). Nothing was changed.
    #[error("ESP: cluster chain of {path} {problem}")]
    BadClusterChain { path: String, problem: ChainProblem },
}

/// What is wrong with a cluster chain in the ESP's FAT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainProblem {
    /// The chain comes back to a cluster it already passed.
    #[error("loops (back to cluster {cluster})")]
    Loops { cluster: u32 },
    /// A link names a cluster number outside the volume (or a reserved one).
    #[error("points to cluster {cluster}, outside the volume")]
    OutOfRange { cluster: u32 },
    /// A link leads to a cluster the FAT marks free.
    #[error("runs into a free cluster after cluster {after}")]
    Free { after: u32 },
    /// A link leads to a cluster the FAT marks bad.
    #[error("runs into a bad cluster after cluster {after}")]
    Bad { after: u32 },
    /// A directory longer than FAT's limit of 65,536 entries.
    #[error("is {clusters} clusters long, more than a directory may be")]
    DirectoryTooLong { clusters: u64 },
    /// A file's chain has fewer clusters than its size needs.
    #[error("has {clusters} clusters, too few for its {size} bytes")]
    TooShort { clusters: u64, size: u64 },
}

impl DiskError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
        let context = context.into();
        move |source| DiskError::Io { context, source }
    }

    pub(crate) fn fat(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
        let context = context.into();
        move |source| DiskError::Fat { context, source }
    }
}
