use super::*;
use crate::fixture::{OPTIONAL_HEADER_SIZE, PE_OFFSET, minimal_stub, stub_with};

const OPT: usize = PE_OFFSET + 24;

fn parts<'a>(linux: &'a [u8], initrd: &'a [u8], cmdline: &'a [u8]) -> UkiParts<'a> {
    UkiParts {
        linux,
        initrd: Some(initrd),
        cmdline: Some(cmdline),
        osrel: Some(b"ID=test\nPRETTY_NAME=\"Test OS 1\"\n"),
    }
}

#[test]
fn build_appends_sections_like_ukify() {
    let stub = minimal_stub();
    let kernel = vec![0x4b; 5000];
    let initrd = vec![0x49; 70_000];
    let uki = build(
        &stub,
        &parts(
            &kernel,
            &initrd,
            b"console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X",
        ),
    )
    .unwrap();
    let pe = PeImage::parse(&uki).unwrap();

    let names: Vec<String> = pe.sections().map(|s| s.name.to_string()).collect();
    assert_eq!(
        names,
        [".text", ".abkit", ".osrel", ".cmdline", ".initrd", ".linux"]
    );
    assert_eq!(pe.number_of_sections, 6);

    // The stub's bytes are kept, apart from the patched header fields.
    assert_eq!(&uki[0x400..stub.len()], &stub[0x400..]);

    let mut previous_end = 0x3000u32; // .text and .abkit take a page each from 0x1000
    for s in pe.sections().skip(2) {
        assert_eq!(s.virtual_address % 0x1000, 0, "{}", s.name);
        assert_eq!(s.pointer_to_raw_data % 0x200, 0, "{}", s.name);
        assert_eq!(s.size_of_raw_data % 0x200, 0, "{}", s.name);
        assert_eq!(
            s.virtual_address,
            previous_end.next_multiple_of(0x1000),
            "{}",
            s.name
        );
        assert!(s.size_of_raw_data >= s.virtual_size);
        previous_end = s.virtual_address + s.virtual_size;
        let expected = if s.name.as_bytes() == b".linux" {
            0x4000_0020
        } else {
            0x4000_0040
        };
        assert_eq!(s.characteristics, expected, "{}", s.name);
    }
    assert_eq!(
        pe.optional.size_of_image,
        previous_end.next_multiple_of(0x1000)
    );
    assert_eq!(uki.len() as u32, {
        let last = pe.section(".linux").unwrap();
        last.pointer_to_raw_data + last.size_of_raw_data
    });

    assert_eq!(
        pe.find_section_data(".linux", Layout::File).unwrap(),
        Some(&kernel[..])
    );
    assert_eq!(
        pe.find_section_data(".initrd", Layout::File).unwrap(),
        Some(&initrd[..])
    );
    assert_eq!(
        pe.find_section_data(".cmdline", Layout::File).unwrap(),
        Some(&b"console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X"[..])
    );
    assert_eq!(pe.optional.checksum, pe_checksum(&uki, OPT + 64));
    assert_ne!(pe.optional.checksum, 0);

    // Code and initialized-data sizes grew by the raw sizes appended.
    let read = |at: usize| u32::from_le_bytes(uki[OPT + at..OPT + at + 4].try_into().unwrap());
    assert_eq!(read(4), 5120); // .linux: 5000 rounded to 0x200
    assert_eq!(read(8), 0x200 + 0x200 + 70_144);
}

#[test]
fn build_maps_sections_where_the_loader_reads_them() {
    let uki = build(
        &minimal_stub(),
        &parts(b"KERNEL", b"INITRD", b"a SYSTEM-X b"),
    )
    .unwrap();
    let pe = PeImage::parse(&uki).unwrap();
    // Lay the image out as the firmware does.
    let mut mapped = vec![0u8; pe.optional.size_of_image as usize];
    mapped[..0x400].copy_from_slice(&uki[..0x400]);
    for s in pe.sections() {
        let data = pe.section_data(&s, Layout::File).unwrap();
        mapped[s.virtual_address as usize..][..data.len()].copy_from_slice(data);
    }
    let image = PeImage::parse(&mapped).unwrap();
    assert_eq!(
        image.find_section_data(".linux", Layout::Mapped).unwrap(),
        Some(&b"KERNEL"[..])
    );
    assert_eq!(
        image.find_section_data(".initrd", Layout::Mapped).unwrap(),
        Some(&b"INITRD"[..])
    );
    assert_eq!(
        image.find_section_data(".cmdline", Layout::Mapped).unwrap(),
        Some(&b"a SYSTEM-X b"[..])
    );
}

#[test]
fn optional_parts_may_be_left_out() {
    let uki = build(
        &minimal_stub(),
        &UkiParts {
            linux: b"K",
            ..Default::default()
        },
    )
    .unwrap();
    let names: Vec<String> = PeImage::parse(&uki)
        .unwrap()
        .sections()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, [".text", ".abkit", ".linux"]);
    let empty_cmdline = UkiParts {
        linux: b"K",
        cmdline: Some(b""),
        ..Default::default()
    };
    assert_eq!(build(&minimal_stub(), &empty_cmdline).unwrap(), uki);
}

#[test]
fn inspect_shows_what_build_wrote() {
    let uki = build(
        &minimal_stub(),
        &parts(&[1; 3000], &[2; 100], b"quiet SYSTEM-X\n"),
    )
    .unwrap();
    let info = inspect(&uki).unwrap();
    assert!(info.is_uki());
    assert_eq!(info.stub.as_deref(), Some("abkit-stub 0.0.0-test"));
    assert_eq!(info.cmdline.as_deref(), Some("quiet SYSTEM-X"));
    assert_eq!(info.os_pretty_name.as_deref(), Some("Test OS 1"));
    assert_eq!(info.linux_size, Some(3000));
    assert_eq!(info.initrd_size, Some(100));
    assert_eq!(info.checksum_stored, info.checksum_computed);
    let linux = info.sections.iter().find(|s| s.name == ".linux").unwrap();
    assert_eq!((linux.virtual_size, linux.raw_size), (3000, 3072));

    let stub_info = inspect(&minimal_stub()).unwrap();
    assert!(!stub_info.is_uki());
    assert_eq!(stub_info.sections.len(), 2);
}

#[test]
fn checksum_known_values() {
    // Words 0x0201 + 0x0003 = 0x0204, plus the length 3.
    assert_eq!(pe_checksum(&[1, 2, 3], 100), 0x0207);
    // The checksum field itself counts as zero.
    assert_eq!(
        pe_checksum(&[1, 2, 0xff, 0xff, 0xff, 0xff, 3, 0], 2),
        0x0201 + 3 + 8
    );
    // Carries fold back into 16 bits.
    assert_eq!(pe_checksum(&[0xff, 0xff, 0x02, 0x00], 100), 0x0002 + 4);
}

fn build_err(stub: &[u8]) -> String {
    match build(
        stub,
        &UkiParts {
            linux: b"kernel",
            ..Default::default()
        },
    ) {
        Ok(_) => "built".to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_stubs_are_refused_with_the_reason() {
    assert_eq!(
        build_err(b"not a pe"),
        "the stub is not an EFI application: not a PE image: no MZ signature at offset 0"
    );

    let no_marker = stub_with(&[(".text", &[0xc3])]);
    assert_eq!(
        build_err(&no_marker),
        "the stub has no .abkit section: it is not an abkit loader stub (build one with `make stub`)"
    );

    let bad_marker = stub_with(&[(".text", &[0xc3]), (".abkit", b"something else")]);
    assert_eq!(
        build_err(&bad_marker),
        "the stub's .abkit section does not start with `abkit-stub `: the stub is corrupt"
    );

    let already = build(
        &minimal_stub(),
        &UkiParts {
            linux: b"k",
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        build_err(&already),
        "the stub already has a .linux section: give the bare stub, not a built UKI"
    );

    // A section whose data lies past the end of the file.
    let mut truncated = minimal_stub();
    truncated.truncate(0x500);
    assert_eq!(
        build_err(&truncated),
        "the stub is corrupt: section .abkit: its data at 0x600+0x15 extends past the 1280 bytes of the image"
    );

    let mut signed = minimal_stub();
    let security = OPT + 112 + 4 * 8;
    signed[security..security + 4].copy_from_slice(&0x800u32.to_le_bytes());
    signed[security + 4..security + 8].copy_from_slice(&0x100u32.to_le_bytes());
    assert_eq!(
        build_err(&signed),
        "the stub is signed (it has a certificate table): sign the built UKI instead"
    );

    let mut arm = minimal_stub();
    arm[PE_OFFSET + 4..PE_OFFSET + 6].copy_from_slice(&0xaa64u16.to_le_bytes());
    assert_eq!(
        build_err(&arm),
        "the stub is for machine 0xaa64, not x86-64 (0x8664)"
    );

    let mut console_app = minimal_stub();
    console_app[OPT + 68..OPT + 70].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(
        build_err(&console_app),
        "the stub is not an EFI application: its subsystem is 3, not 10 (EFI application)"
    );

    let mut odd_alignment = minimal_stub();
    odd_alignment[OPT + 36..OPT + 40].copy_from_slice(&0x300u32.to_le_bytes());
    assert_eq!(
        build_err(&odd_alignment),
        "the stub's alignments are unusable (sections 0x1000, file 0x300)"
    );

    assert_eq!(
        build(&minimal_stub(), &UkiParts::default())
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("the kernel (.linux) is empty")
    );
}

#[test]
fn a_stub_without_header_room_is_refused() {
    // Headers end at 0x400; the table starts at 0x80 + 24 + 240 = 0x188, so
    // 15 headers fit; 12 sections leave room for 3, not 4.
    let names = [
        ".a", ".b", ".c", ".d", ".e", ".f", ".g", ".h", ".i", ".j", ".text", ".abkit",
    ];
    let sections: Vec<(&str, &[u8])> = names
        .iter()
        .map(|&n| {
            (
                n,
                if n == ".abkit" {
                    &b"abkit-stub 1"[..]
                } else {
                    &b"x"[..]
                },
            )
        })
        .collect();
    let stub = stub_with(&sections);
    assert_eq!(PE_OFFSET + 24 + OPTIONAL_HEADER_SIZE, 0x188);
    let four = UkiParts {
        linux: b"k",
        initrd: Some(b"i"),
        cmdline: Some(b"c"),
        osrel: Some(b"o"),
    };
    assert_eq!(
        build(&stub, &four).err().map(|e| e.to_string()).as_deref(),
        Some("the stub's headers have no room for 4 more section headers")
    );
    let three = UkiParts {
        osrel: None,
        ..four
    };
    assert!(build(&stub, &three).is_ok());
}

#[test]
fn inspect_refuses_corrupt_images() {
    let uki = build(&minimal_stub(), &parts(&[1; 3000], &[2; 100], b"x")).unwrap();
    let cut = &uki[..uki.len() - 1000];
    let err = inspect(cut).unwrap_err().to_string();
    assert!(
        err.starts_with("corrupt image: section .linux: its data at"),
        "{err}"
    );
    assert_eq!(
        inspect(b"MZ").unwrap_err().to_string(),
        "not a PE image: not a PE image: 2 bytes are too short for a DOS header"
    );
}

proptest::proptest! {
    #[test]
    fn any_parts_round_trip(
        linux in proptest::collection::vec(proptest::num::u8::ANY, 1..3000),
        initrd in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
        cmdline in "[ -~]{0,200}",
    ) {
        let uki = build(&minimal_stub(), &UkiParts { linux: &linux, initrd: Some(&initrd), cmdline: Some(cmdline.as_bytes()), osrel: None }).unwrap();
        let pe = PeImage::parse(&uki).unwrap();
        proptest::prop_assert_eq!(pe.find_section_data(".linux", Layout::File).unwrap(), Some(&linux[..]));
        let expect_initrd = if initrd.is_empty() { None } else { Some(&initrd[..]) };
        proptest::prop_assert_eq!(pe.find_section_data(".initrd", Layout::File).unwrap(), expect_initrd);
        let info = inspect(&uki).unwrap();
        proptest::prop_assert_eq!(info.checksum_stored, info.checksum_computed);
    }
}

#[test]
fn pcr11_is_systemd_stubs_chain_over_the_sections_and_ignores_the_stamp() {
    use sha2::{Digest, Sha256};
    let (linux, initrd, cmdline) = (
        vec![0x4b; 5000],
        vec![0x49; 300],
        b"quiet SYSTEM-X".to_vec(),
    );
    let uki = build(&minimal_stub(), &parts(&linux, &initrd, &cmdline)).unwrap();
    // By hand: name with NUL, then content, in systemd-stub's order.
    let osrel = parts(&linux, &initrd, &cmdline).osrel.unwrap();
    let mut pcr = [0u8; 32];
    for data in [
        &b".linux\0"[..],
        &linux,
        b".osrel\0",
        osrel,
        b".cmdline\0",
        &cmdline,
        b".initrd\0",
        &initrd,
    ] {
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(Sha256::digest(data));
        pcr = h.finalize().into();
    }
    assert_eq!(expected_pcr11(&uki).unwrap(), pcr);
    let hex: String = pcr.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(inspect(&uki).unwrap().pcr11_sha256.as_deref(), Some(&*hex));
    // The stamp is outside every section: A and B measure the same.
    let a = stamp(&uki, Slot::A).unwrap();
    let b = stamp(&uki, Slot::B).unwrap();
    assert_eq!(expected_pcr11(&a).unwrap(), pcr);
    assert_eq!(expected_pcr11(&b).unwrap(), pcr);
    // A bare stub predicts nothing.
    assert_eq!(inspect(&minimal_stub()).unwrap().pcr11_sha256, None);
}

#[test]
fn boot_parts_are_what_the_stub_would_boot_on_the_slot() {
    let uki = build(
        &minimal_stub(),
        &UkiParts {
            linux: b"KERNEL",
            initrd: Some(b"INITRD"),
            cmdline: Some(b"root=PARTLABEL=ABKIT-SYSTEM-X ro\n\0"),
            osrel: None,
        },
    )
    .unwrap();
    let p = boot_parts(&uki, Slot::B).unwrap();
    assert_eq!(p.kernel, b"KERNEL");
    assert_eq!(p.initrd, Some(&b"INITRD"[..]));
    assert_eq!(p.cmdline, b"root=PARTLABEL=ABKIT-SYSTEM-B ro");
    assert_eq!(
        boot_parts(&uki, Slot::A).unwrap().cmdline,
        b"root=PARTLABEL=ABKIT-SYSTEM-A ro"
    );
    assert!(matches!(
        boot_parts(&minimal_stub(), Slot::A),
        Err(UkiError::NoKernel)
    ));
    assert!(matches!(
        boot_parts(b"MZ garbage", Slot::A),
        Err(UkiError::NotPe(_))
    ));
}

#[test]
fn a_command_line_the_loader_or_the_kernel_would_refuse_is_refused_at_build() {
    let stub = minimal_stub();
    let kernel = crate::boot_protocol::fake_bzimage(0x020f, 2047);
    let with = |cmdline: &[u8]| build(&stub, &parts(&kernel, b"initrd", cmdline));
    // Outside UCS-2: the loader would fail every boot of it.
    let err = with("console=ttyS0 x=\u{1F600}".as_bytes()).unwrap_err();
    assert!(matches!(err, UkiError::Cmdline(_)), "{err}");
    assert!(err.to_string().contains("UCS-2"), "{err}");
    let err = with(b"console=ttyS0 \xff").unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    // Longer than the kernel's cmdline_size: cut at boot, roothash= lost.
    let long = format!("root=PARTLABEL=ABKIT-SYSTEM-X {}", "q".repeat(2048 - 30));
    assert_eq!(long.len(), 2048);
    let err = with(long.as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            UkiError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ),
        "{err}"
    );
    // At the limit, and with the padding tools leave (trimmed first), fine.
    with(&long.as_bytes()[..2047]).unwrap();
    with(format!("{}\n\0\0", &long[..2047]).as_bytes()).unwrap();
    // A kernel that is no bzImage has no limit to check against.
    build(&stub, &parts(&[0x4b; 5000], b"i", long.as_bytes())).unwrap();
}
