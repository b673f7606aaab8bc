//! Damaged OVMF VARS images: parsing, reading and writing never panic.
//! Input bytes overwrite the start of a real 2 MiB VARS file.
#![no_main]

use abkit_efi::store::{OvmfVarsFile, VarName, VarStore, Variable};
use libfuzzer_sys::fuzz_target;

static BASE: &[u8] = include_bytes!("../../tests/fixtures/ovmf-vars-2m-after-boot.fd");

fuzz_target!(|data: &[u8]| {
    let mut bytes = BASE.to_vec();
    let n = data.len().min(0x4000);
    bytes[..n].copy_from_slice(&data[..n]);
    if let Ok(mut store) = OvmfVarsFile::from_bytes(bytes) {
        for name in store.list().unwrap() {
            let _ = store.get(&name);
        }
        let _ = store.set(
            &VarName::global("BootNext"),
            &Variable {
                attributes: 7,
                data: vec![1, 0],
            },
        );
        let _ = store.delete(&VarName::global("BootOrder"));
    }
});
