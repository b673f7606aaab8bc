//! Any bytes as a Boot#### value: never panics, and whatever decodes
//! encodes back to the same bytes.
#![no_main]

use abkit_efi::LoadOption;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(option) = LoadOption::decode(data) {
        let again = option.encode().expect("a decoded option always encodes");
        assert_eq!(again, data);
        for path in &option.file_paths {
            let _ = path.to_string();
        }
    }
});
