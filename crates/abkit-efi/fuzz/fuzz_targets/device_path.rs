//! Any bytes as a device path list: never panics, decoded lists re-encode
//! to the same bytes and have a text form.
#![no_main]

use abkit_efi::DevicePath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(paths) = DevicePath::decode_list(data) {
        let mut again = Vec::new();
        for p in &paths {
            again.extend(p.encode().expect("a decoded path always encodes"));
            let _ = p.to_string();
            let _ = p.file_path();
        }
        assert_eq!(again, data);
    }
    let _ = DevicePath::decode_prefix(data);
});
