//! Root filesystem images with the real mkfs.erofs and veritysetup: the same
//! folder gives the same bytes whatever order it was filled in, a different
//! folder different bytes, and a bundle made with the derived salt carries
//! exactly the tree computed beforehand (the root hash the UKI is given).

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use abkit_bundle::rootfs::{
    ErofsOptions, fs_uuid_for, mkfs_erofs, verity_salt_for, verity_tree, verity_uuid_for,
};
use abkit_bundle::{CreateOptions, PayloadSpec, create_bundle};

fn fill(dir: &Path, reversed: bool) {
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("etc/os-release", b"ID=demo\n".to_vec()),
        ("bin/tool", common::noise(70_000, 3)),
        ("usr/share/a", b"a".to_vec()),
        ("usr/share/b", vec![0u8; 9000]),
        ("usr/share/zz/deep", b"deep".to_vec()),
    ];
    if reversed {
        files.reverse();
    }
    for (path, data) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
    }
    std::fs::set_permissions(dir.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = dir.join("bin/link");
    std::os::unix::fs::symlink("tool", link).unwrap();
}

fn opts() -> ErofsOptions {
    ErofsOptions {
        timestamp: 0,
        uuid: fs_uuid_for("demo", "1.0.0"),
        compressor: None,
    }
}

#[test]
fn same_folder_same_image_whatever_the_order_and_time() {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    fill(&a, false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fill(&b, true);
    mkfs_erofs(&a, &work.path().join("a.img"), &opts()).unwrap();
    mkfs_erofs(&b, &work.path().join("b.img"), &opts()).unwrap();
    let ia = std::fs::read(work.path().join("a.img")).unwrap();
    let ib = std::fs::read(work.path().join("b.img")).unwrap();
    assert!(ia.len() >= 4096);
    // erofs superblock magic at 1024.
    assert_eq!(&ia[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
    assert!(ia == ib, "same tree built twice gives different images");

    // One byte of one file changed: a different image and a different salt.
    std::fs::write(b.join("usr/share/a"), b"b").unwrap();
    mkfs_erofs(&b, &work.path().join("c.img"), &opts()).unwrap();
    assert_ne!(ia, std::fs::read(work.path().join("c.img")).unwrap());
    assert_ne!(
        verity_salt_for(&work.path().join("a.img")).unwrap(),
        verity_salt_for(&work.path().join("c.img")).unwrap()
    );

    // The UUID option lands in the image.
    let mut other = opts();
    other.uuid = fs_uuid_for("demo", "2.0.0");
    mkfs_erofs(&a, &work.path().join("d.img"), &other).unwrap();
    assert_ne!(ia, std::fs::read(work.path().join("d.img")).unwrap());
}

#[test]
fn missing_folder_and_bad_compressor_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let err = mkfs_erofs(
        &work.path().join("nope"),
        &work.path().join("x.img"),
        &opts(),
    )
    .unwrap_err();
    assert_eq!(err.code(), "invalid-input");
    let mut o = opts();
    o.compressor = Some("gzip".into());
    std::fs::create_dir(work.path().join("root")).unwrap();
    let err = mkfs_erofs(&work.path().join("root"), &work.path().join("x.img"), &o).unwrap_err();
    assert!(err.to_string().contains("lz4"), "{err}");
}

#[test]
fn bundle_with_derived_salt_carries_the_precomputed_tree_and_veritysetup_agrees() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    fill(&root, false);
    let image = work.path().join("root.img");
    mkfs_erofs(&root, &image, &opts()).unwrap();
    let salt = verity_salt_for(&image).unwrap();
    let uuid = verity_uuid_for(&salt);
    let tree = verity_tree(&image, &salt, uuid).unwrap();
    std::fs::write(work.path().join("boot.efi"), b"efi").unwrap();
    let mut o = CreateOptions::new("demo", "1.0.0".parse().unwrap());
    o.created = 1;
    o.verity_salt = Some(salt.clone());
    o.verity_uuid = Some(uuid);
    let specs = [
        PayloadSpec {
            name: "efi".into(),
            path: work.path().join("boot.efi"),
            verity: false,
        },
        PayloadSpec {
            name: "system".into(),
            path: image.clone(),
            verity: true,
        },
    ];
    let key = common::key(1);
    let out = work.path().join("a.abb");
    let manifest =
        create_bundle(&out, &specs, &o, std::slice::from_ref(&key), &mut |_| {}).unwrap();
    let v = manifest.payloads[1].verity.as_ref().unwrap();
    assert_eq!(v.root_hash.0, tree.root_hash);
    assert_eq!(v.hash_offset, tree.data_size());
    // Reproducible: the same inputs give the same bundle bytes.
    let out2 = work.path().join("b.abb");
    create_bundle(&out2, &specs, &o, &[key], &mut |_| {}).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&out2).unwrap());

    // veritysetup accepts image + tree with the precomputed root hash.
    let slot = work.path().join("slot.img");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes.resize(bytes.len() + tree.padding, 0);
    bytes.extend_from_slice(&tree.hash_area);
    std::fs::write(&slot, &bytes).unwrap();
    let verify = |root: &str| {
        Command::new("veritysetup")
            .arg("verify")
            .arg(&slot)
            .arg(&slot)
            .arg(root)
            .arg(format!("--hash-offset={}", tree.data_size()))
            .status()
            .unwrap()
            .success()
    };
    assert!(verify(&hex::encode(tree.root_hash)));
    let mut wrong = tree.root_hash;
    wrong[0] ^= 1;
    assert!(!verify(&hex::encode(wrong)));
}
