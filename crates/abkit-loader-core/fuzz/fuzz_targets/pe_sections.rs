//! Fuzzes the PE section reader the loader runs on its own image: any bytes
//! must give an error or sections whose data lies inside the input, never a
//! panic or an out-of-bounds read.
#![no_main]

use abkit_loader_core::pe::{Layout, PeImage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pe) = PeImage::parse(data) else {
        return;
    };
    for section in pe.sections() {
        for layout in [Layout::File, Layout::Mapped] {
            if let Ok(bytes) = pe.section_data(&section, layout) {
                assert_eq!(bytes.len(), section.data_len(layout) as usize);
                let start = bytes.as_ptr() as usize - data.as_ptr() as usize;
                assert!(start + bytes.len() <= data.len());
            }
        }
    }
    for name in [".linux", ".initrd", ".cmdline", ".osrel", ".abkit"] {
        let _ = pe.find_section_data(name, Layout::Mapped);
        let _ = pe.find_section_data(name, Layout::File);
    }
});
