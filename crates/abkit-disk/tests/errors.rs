//! Every refusal of `build`, each before the output is touched.

mod common;

use std::process::Command;

use abkit_disk::{DiskError, build, fixtures};
use abkit_loader_core::PeError;
use common::*;

#[test]
fn a_loader_that_is_not_an_efi_application_is_refused() {
    let fx = Fixture::new();
    let out = fx.path("disk.img");
    std::fs::write(&fx.loader, b"#!/bin/sh\necho not a loader\n").unwrap();
    let err = build(&fx.options(&out)).unwrap_err();
    assert!(
        matches!(err, DiskError::NotEfiApplication(PeError::NoDosMagic)),
        "{err}"
    );
    assert!(!out.exists());

    // A valid PE, but a Windows console program (subsystem 3).
    let mut console = fixtures::tiny_efi_application(b"");
    console[0x58 + 68] = 3;
    std::fs::write(&fx.loader, console).unwrap();
    let err = build(&fx.options(&out)).unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::NotEfiApplication(PeError::NotEfiApplication { subsystem: 3 })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("subsystem is 3"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_system_image_larger_than_its_slot_is_refused() {
    let fx = Fixture::new();
    let out = fx.path("disk.img");
    std::fs::write(&out, b"keep me").unwrap();
    let mut options = fx.options(&out);
    options.layout.system_size = 2 * MIB;
    let err = build(&options).unwrap_err();
    assert!(
        matches!(err, DiskError::SystemImageTooLarge { image, slot } if image == 3 * MIB && slot == 2 * MIB),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me", "output untouched");
}

#[test]
fn sizes_that_do_not_fit_are_refused() {
    let fx = Fixture::new();
    let out = fx.path("disk.img");
    let mut options = fx.options(&out);
    options.layout.disk_size = Some(90 * MIB);
    let err = build(&options).unwrap_err();
    assert!(matches!(err, DiskError::DiskTooSmall { .. }), "{err}");

    let mut options = fx.options(&out);
    options.layout.esp_size = 16 * MIB;
    let err = build(&options).unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::SizeTooSmall {
                what: "the ESP size",
                ..
            }
        ),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn an_existing_block_device_needs_force() {
    let fx = Fixture::new();
    // A block device node (loop major 7, a minor nobody uses): the check
    // looks at the file type only, so nothing is ever opened.
    let node = fx.path("blockdev");
    let made = Command::new("mknod")
        .arg(&node)
        .args(["b", "7", "250"])
        .status();
    if !made.map(|s| s.success()).unwrap_or(false) {
        eprintln!("SKIPPED: cannot create a block device node (needs root)");
        return;
    }
    let err = build(&fx.options(&node)).unwrap_err();
    assert!(
        matches!(err, DiskError::BlockDeviceWithoutForce(ref p) if *p == node),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
}

#[test]
fn the_output_may_not_be_an_input() {
    let fx = Fixture::new();
    let err = build(&fx.options(&fx.system)).unwrap_err();
    assert!(matches!(err, DiskError::OutputIsInput(_)), "{err}");
    assert_eq!(std::fs::read(&fx.system).unwrap(), fx.system_bytes);
}

#[test]
fn missing_inputs_are_named() {
    let fx = Fixture::new();
    let mut options = fx.options(&fx.path("disk.img"));
    options.system = fx.path("nope.img");
    let err = build(&options).unwrap_err();
    assert!(err.to_string().contains("nope.img"), "{err}");
}

/// Runs `build` in a thread and fails the test if it does not return within
/// a few seconds (opening a FIFO for reading blocks until a writer comes).
fn build_within_seconds(options: abkit_disk::BuildOptions) -> abkit_disk::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(build(&options).map(|_| ()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("build did not return within 10 s (hangs)")
}

#[test]
fn an_empty_system_image_is_refused() {
    let fx = Fixture::new();
    let out = fx.path("disk.img");
    let empty = fx.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let mut options = fx.options(&out);
    options.system = empty.clone();
    let err = build_within_seconds(options).unwrap_err();
    assert!(
        matches!(err, DiskError::EmptySystemImage(ref p) if *p == empty),
        "{err}"
    );
    assert!(err.to_string().contains("is empty"), "{err}");
    assert!(!out.exists(), "output written");
}

#[test]
fn a_system_image_that_is_not_a_file_or_block_device_is_refused() {
    let fx = Fixture::new();
    let out = fx.path("disk.img");
    // /dev/null: a character device that reads as 0 bytes.
    let mut options = fx.options(&out);
    options.system = "/dev/null".into();
    let err = build_within_seconds(options).unwrap_err();
    assert!(
        matches!(err, DiskError::InputNotFileOrBlockDevice { what: "system image", ref path } if path.as_os_str() == "/dev/null"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the system image /dev/null is neither a regular file nor a block device"),
        "{err}"
    );
    // A FIFO with no writer: opening it for reading would block forever.
    let fifo = fx.path("system.fifo");
    run(Command::new("mkfifo").arg(&fifo));
    for field in ["system", "loader"] {
        let mut options = fx.options(&out);
        match field {
            "system" => options.system = fifo.clone(),
            _ => options.loader = fifo.clone(),
        }
        let err = build_within_seconds(options).unwrap_err();
        assert!(
            matches!(err, DiskError::InputNotFileOrBlockDevice { ref path, .. } if *path == fifo),
            "{field}: {err}"
        );
    }
    assert!(!out.exists(), "output written");
}
