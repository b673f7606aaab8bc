//! Arbitrary loader files: the PE/COFF check answers without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = abkit_loader_core::check_efi_application(data);
});
