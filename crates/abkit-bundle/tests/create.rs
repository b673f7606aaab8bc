//! `create_bundle` never overwrites one of its inputs and publishes the
//! bundle world-readable, in one rename, only when it is complete.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use abkit_bundle::writer::BUNDLE_MODE;
use abkit_bundle::{CreateOptions, Error, PayloadSpec, create_bundle};
use common::*;

#[test]
fn create_bundle_refuses_an_output_that_is_a_payload_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = noise(50_000, 3);
    std::fs::write(d.join("system.img"), &image).unwrap();
    std::os::unix::fs::symlink(d.join("system.img"), d.join("via-link.abb")).unwrap();
    std::fs::hard_link(d.join("system.img"), d.join("via-hardlink.abb")).unwrap();
    let specs = [PayloadSpec {
        name: "system".into(),
        path: d.join("system.img"),
        verity: true,
    }];
    let opts = CreateOptions::new("demo-os", "1.0.0".parse().unwrap());
    for out in ["system.img", "via-link.abb", "via-hardlink.abb"] {
        let err = create_bundle(&d.join(out), &specs, &opts, &[key(1)], &mut |_| {}).unwrap_err();
        assert!(
            matches!(&err, Error::OutputIsInput { output, input }
                if *output == d.join(out) && *input == d.join("system.img")),
            "{out}: {err:?}"
        );
        assert_eq!(err.code(), "output-is-input");
        assert_eq!(std::fs::read(d.join("system.img")).unwrap(), image);
    }
    let out = d.join("fresh.abb");
    create_bundle(&out, &specs, &opts, &[key(1)], &mut |_| {}).unwrap();
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, BUNDLE_MODE);
    assert_eq!(BUNDLE_MODE, 0o644);
}
