//! Damaged disks: opening, listing the ESP, reading its files and hashing
//! the slots never panic. The input overwrites the start of a real abkit
//! disk: its first 34 sectors (protective MBR, GPT header and entries),
//! then the first sectors of the ESP (FAT32 boot sector, FSInfo, FAT).
#![no_main]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use abkit_disk::{BuildOptions, DiskImage, LayoutOptions, Slot};
use libfuzzer_sys::fuzz_target;

const GPT_BYTES: usize = 34 * 512;
const ESP_START: u64 = 1 << 20;
const ESP_BYTES: usize = 64 * 1024;

struct Base {
    path: PathBuf,
    gpt: Vec<u8>,
    esp: Vec<u8>,
    _dir: std::path::PathBuf,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("abkit-disk-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let loader = dir.join("boot.efi");
        let system = dir.join("system.img");
        std::fs::write(&loader, abkit_disk::fixtures::tiny_efi_application(b"fuzz")).unwrap();
        std::fs::write(&system, vec![0x5a; 64 * 1024]).unwrap();
        let path = dir.join("disk.img");
        abkit_disk::build(&BuildOptions {
            loader,
            system,
            output: path.clone(),
            layout: LayoutOptions {
                esp_size: 33 << 20,
                system_size: 1 << 20,
                data_size: 1 << 20,
                disk_size: None,
                label_prefix: "FUZZ".into(),
            },
            seed: Some(1),
            force: false,
            ovmf_vars: None,
        })
        .unwrap();
        let file = File::open(&path).unwrap();
        let mut gpt = vec![0u8; GPT_BYTES];
        file.read_exact_at(&mut gpt, 0).unwrap();
        let mut esp = vec![0u8; ESP_BYTES];
        file.read_exact_at(&mut esp, ESP_START).unwrap();
        Base { path, gpt, esp, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let file = std::fs::OpenOptions::new().write(true).open(&base.path).unwrap();
    let mut gpt = base.gpt.clone();
    let mut esp = base.esp.clone();
    let (for_gpt, for_esp) = data.split_at(data.len().min(GPT_BYTES));
    gpt[..for_gpt.len()].copy_from_slice(for_gpt);
    let n = for_esp.len().min(ESP_BYTES);
    esp[..n].copy_from_slice(&for_esp[..n]);
    file.write_all_at(&gpt, 0).unwrap();
    file.write_all_at(&esp, ESP_START).unwrap();

    let Ok(disk) = DiskImage::open_read_only(&base.path) else {
        return;
    };
    let _ = abkit_disk::slot_content(&disk, Slot::A);
    if let Ok(esp) = disk.esp() {
        if let Ok(entries) = esp.list() {
            for entry in entries.iter().filter(|e| !e.is_dir).take(8) {
                let _ = esp.read_file(&entry.path);
            }
        }
        let _ = esp.read_file(abkit_disk::LOADER_PATH_A);
    }
});
