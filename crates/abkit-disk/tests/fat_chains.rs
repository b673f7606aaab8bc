//! A damaged FAT (a cluster chain that loops, leaves the volume or ends too
//! early) must give an error naming the file or directory, never a hang:
//! the update engine runs `status`, `install` and `mark-good` on ESPs that
//! went through power cuts. Each operation runs in a thread with a timeout.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use abkit_disk::{ChainProblem, DiskError, DiskImage, LOADER_PATH_A, LOADER_PATH_B};
use common::*;

/// FAT32 geometry of the ESP, as byte offsets into the disk image.
struct Fat32 {
    fat: usize,
    fat_bytes: usize,
    fats: usize,
    data: usize,
    cluster: usize,
    root: u32,
}

fn u16_at(b: &[u8], o: usize) -> usize {
    u16::from_le_bytes([b[o], b[o + 1]]) as usize
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Fat32 {
    fn read(bytes: &[u8], esp: u64) -> Fat32 {
        let esp = esp as usize;
        let boot = &bytes[esp..esp + 512];
        let sector = u16_at(boot, 11);
        let reserved = u16_at(boot, 14);
        let fats = boot[16] as usize;
        let fat_sectors = u32_at(boot, 36) as usize;
        Fat32 {
            fat: esp + reserved * sector,
            fat_bytes: fat_sectors * sector,
            fats,
            data: esp + (reserved + fats * fat_sectors) * sector,
            cluster: boot[13] as usize * sector,
            root: u32_at(boot, 44),
        }
    }

    fn cluster_at(&self, cluster: u32) -> usize {
        self.data + (cluster as usize - 2) * self.cluster
    }

    fn next(&self, bytes: &[u8], cluster: u32) -> u32 {
        u32_at(bytes, self.fat + cluster as usize * 4) & 0x0fff_ffff
    }

    /// Sets FAT entry `cluster` in every copy of the FAT.
    fn set(&self, bytes: &mut [u8], cluster: u32, value: u32) {
        for copy in 0..self.fats {
            let at = self.fat + copy * self.fat_bytes + cluster as usize * 4;
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// (first cluster, size) of the entry with 8.3 name `short` in the
    /// first cluster of directory `dir`.
    fn entry(&self, bytes: &[u8], dir: u32, short: &[u8; 11]) -> (u32, u32) {
        let at = self.cluster_at(dir);
        let e = bytes[at..at + self.cluster]
            .chunks(32)
            .find(|e| &e[..11] == short)
            .unwrap_or_else(|| panic!("{} not found", String::from_utf8_lossy(short)));
        let cluster = (u16_at(e, 20) << 16 | u16_at(e, 26)) as u32;
        (cluster, u32_at(e, 28))
    }
}

/// Runs `op` in a thread; fails the test if it does not return in 10 s.
fn within_seconds<T: Send + 'static>(what: &str, op: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(op());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return within 10 s (hangs)"))
}

/// Opens `disk` (read-write), mounts the ESP and runs `op` on it, in a
/// thread with a timeout.
fn esp_op<T: Send + 'static>(
    disk: &Path,
    what: &str,
    op: impl FnOnce(&abkit_disk::Esp) -> T + Send + 'static,
) -> T {
    let disk: PathBuf = disk.to_path_buf();
    within_seconds(what, move || {
        let image = DiskImage::open(&disk).unwrap();
        let esp = image.esp().unwrap();
        op(&esp)
    })
}

/// A built disk whose `\EFI\abkit` spans more than one cluster (its first
/// cluster full of entries, so nothing there ends the directory), with the
/// first cluster's FAT entry pointing back at itself.
fn disk_with_looping_directory(fx: &Fixture) -> (PathBuf, u32) {
    let (disk, report) = fx.build("disk.img");
    {
        let image = DiskImage::open(&disk).unwrap();
        let esp = image.esp().unwrap();
        for i in 0..10 {
            esp.write_file(&format!("\\EFI\\abkit\\file-{i}.bin"), b"x")
                .unwrap();
        }
        esp.close().unwrap();
    }
    let mut bytes = std::fs::read(&disk).unwrap();
    let fat = Fat32::read(&bytes, report.partitions[0].start());
    let (efi, _) = fat.entry(&bytes, fat.root, b"EFI        ");
    let (abkit, _) = fat.entry(&bytes, efi, b"ABKIT      ");
    assert!(
        fat.next(&bytes, abkit) < 0x0fff_fff8,
        "\\EFI\\abkit should span more than one cluster"
    );
    fat.set(&mut bytes, abkit, abkit);
    std::fs::write(&disk, bytes).unwrap();
    (disk, abkit)
}

fn assert_chain_error<T>(result: abkit_disk::Result<T>, path: &str, what: &str) -> ChainProblem {
    match result {
        Err(DiskError::BadClusterChain { path: p, problem }) if p == path => problem,
        Err(e) => panic!("{what}: expected a bad cluster chain of {path}, got {e:?}"),
        Ok(_) => panic!("{what}: expected a bad cluster chain of {path}, got Ok"),
    }
}

#[test]
fn a_looping_directory_chain_is_an_error_naming_it_for_every_operation() {
    let fx = Fixture::new();
    let (disk, abkit) = disk_with_looping_directory(&fx);
    let before = std::fs::read(&disk).unwrap();
    let dir = "\\EFI\\abkit";

    let problem = assert_chain_error(
        esp_op(&disk, "read_file (missing)", |esp| {
            esp.read_file(LOADER_PATH_B)
        }),
        dir,
        "read_file (missing)",
    );
    assert_eq!(problem, ChainProblem::Loops { cluster: abkit });
    let err = esp_op(&disk, "read_file", |esp| esp.read_file(LOADER_PATH_A)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("ESP: cluster chain of \\EFI\\abkit loops (back to cluster {abkit})")
    );
    assert_chain_error(
        esp_op(&disk, "exists", |esp| esp.exists(LOADER_PATH_B)),
        dir,
        "exists",
    );
    assert_chain_error(
        esp_op(&disk, "file_size", |esp| esp.file_size(LOADER_PATH_B)),
        dir,
        "file_size",
    );
    assert_chain_error(
        esp_op(&disk, "write_file", |esp| {
            esp.write_file(LOADER_PATH_B, b"new loader")
        }),
        dir,
        "write_file",
    );
    assert_chain_error(
        esp_op(&disk, "write_file_from", |esp| {
            esp.write_file_from("\\EFI\\abkit\\slot-b.json.abkit-new", &mut &b"{}"[..])
        }),
        dir,
        "write_file_from",
    );
    assert_chain_error(
        esp_op(&disk, "rename", |esp| {
            esp.rename(LOADER_PATH_A, "\\boot.efi")
        }),
        dir,
        "rename (from)",
    );
    assert_chain_error(
        esp_op(&disk, "rename", |esp| {
            esp.rename("\\EFI\\BOOT\\BOOTX64.EFI", LOADER_PATH_B)
        }),
        dir,
        "rename (to)",
    );
    assert_chain_error(
        esp_op(&disk, "remove", |esp| esp.remove(LOADER_PATH_B)),
        dir,
        "remove",
    );
    assert_chain_error(
        esp_op(&disk, "create_dir_all", |esp| {
            esp.create_dir_all("\\EFI\\abkit\\sub")
        }),
        dir,
        "create_dir_all",
    );
    assert_chain_error(esp_op(&disk, "list", |esp| esp.list()), dir, "list");
    // Counting free clusters walks no chain: it still works.
    let free = esp_op(&disk, "free_bytes", |esp| esp.free_bytes()).unwrap();
    assert!(free > 0);
    // Files elsewhere are still readable.
    let fallback = esp_op(&disk, "read_file (fallback)", |esp| {
        esp.read_file("\\EFI\\BOOT\\BOOTX64.EFI")
    })
    .unwrap();
    assert_eq!(fallback, fx.loader_bytes);

    assert!(
        std::fs::read(&disk).unwrap() == before,
        "a refused operation changed the disk"
    );
}

#[test]
fn bad_file_and_root_chains_are_errors_naming_them() {
    let fx = Fixture::new();
    let (disk, report) = fx.build("disk.img");
    let big = noise(5_000, 9);
    {
        let image = DiskImage::open(&disk).unwrap();
        let esp = image.esp().unwrap();
        esp.write_file("\\big.bin", &big).unwrap();
        esp.close().unwrap();
    }
    let pristine = std::fs::read(&disk).unwrap();
    let fat = Fat32::read(&pristine, report.partitions[0].start());
    let (efi, _) = fat.entry(&pristine, fat.root, b"EFI        ");
    let (abkit, _) = fat.entry(&pristine, efi, b"ABKIT      ");
    let (loader, _) = fat.entry(&pristine, abkit, b"BOOT-A  EFI");
    let (big_first, big_size) = fat.entry(&pristine, fat.root, b"BIG     BIN");
    assert_eq!(big_size, 5_000);
    let second = fat.next(&pristine, big_first);
    let total = (report.partitions[0].size() as usize / fat.cluster) as u32;

    let cases: Vec<(u32, u32, &str, ChainProblem)> = vec![
        // The loader's chain points back at its own first cluster.
        (
            loader,
            loader,
            LOADER_PATH_A,
            ChainProblem::Loops { cluster: loader },
        ),
        // A longer loop: the file's second cluster leads back to its first.
        (
            second,
            big_first,
            "\\big.bin",
            ChainProblem::Loops { cluster: big_first },
        ),
        // The chain ends after one cluster but the file claims 5,000 bytes.
        (
            big_first,
            0x0fff_ffff,
            "\\big.bin",
            ChainProblem::TooShort {
                clusters: 1,
                size: 5_000,
            },
        ),
        // A link to a cluster number beyond the volume.
        (
            big_first,
            total + 100,
            "\\big.bin",
            ChainProblem::OutOfRange {
                cluster: total + 100,
            },
        ),
        // A link to a free cluster.
        (
            big_first,
            0,
            "\\big.bin",
            ChainProblem::Free { after: big_first },
        ),
        // The root directory's own chain loops.
        (
            fat.root,
            fat.root,
            "\\",
            ChainProblem::Loops { cluster: fat.root },
        ),
    ];
    for (cluster, value, path, expected) in cases {
        let mut bytes = pristine.clone();
        fat.set(&mut bytes, cluster, value);
        std::fs::write(&disk, &bytes).unwrap();
        let target = if path == "\\" { LOADER_PATH_A } else { path };
        let target = target.to_string();
        let problem = assert_chain_error(
            esp_op(&disk, "read_file", move |esp| esp.read_file(&target)),
            path,
            path,
        );
        assert_eq!(problem, expected, "{path}");
        let target = if path == "\\" { LOADER_PATH_A } else { path }.to_string();
        assert_chain_error(
            esp_op(&disk, "remove", move |esp| esp.remove(&target)),
            path,
            path,
        );
        assert!(
            std::fs::read(&disk).unwrap() == bytes,
            "refused remove of {path} changed the disk"
        );
    }
}
