//! Failures as scripts read them: every error has a stable code, and a
//! command run with `--json` prints `{"ok": false, "error": {"code": ...,
//! "message": ...}}` on stdout (the message also goes to stderr).

use std::io;

use super::bundle::Coded;

/// The stable code of a failure: the library's own code (docs/update.md,
/// docs/bundle-format.md), `io` for a file that cannot be read, `error` for
/// anything else (a wrong flag, say).
pub fn error_code(err: &anyhow::Error) -> String {
    code_of(err).into()
}

fn code_of(err: &anyhow::Error) -> &str {
    // A registry's blob that fails its digest check does so inside a read
    // of the bundle stream: its code is the one to report, not `io`.
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<io::Error>()
            && let Some(oci) = abkit_oci::OciError::from_io(e)
        {
            return oci.code();
        }
    }
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<super::agent::AgentReported>() {
            return &e.code;
        }
        if let Some(e) = cause.downcast_ref::<abkit_oci::OciError>() {
            return e.code();
        }
        if let Some(Coded(e)) = cause.downcast_ref::<Coded>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<abkit_update::UpdateError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<abkit_bundle::Error>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<abkit_agent::AgentError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<abkit_fleet::FleetError>() {
            return e.code();
        }
        // A lower layer's error the CLI met itself (opening a VARS file or
        // a disk image): the code it has inside an engine error.
        if cause.is::<abkit_efi::StoreError>() {
            return "variable-store";
        }
        if cause.is::<abkit_efi::BootError>() {
            return "boot-variables";
        }
        if cause.is::<abkit_disk::DiskError>() {
            return "disk";
        }
    }
    if err.chain().any(|c| c.is::<io::Error>()) {
        return "io";
    }
    "error"
}

/// The error and its causes on one line, each cause once: library errors
/// often already carry their source's text in their own message.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `{"ok": false, "error": {"code": ..., "message": ...}}`.
pub fn json_error(err: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({
        "ok": false,
        "error": {"code": error_code(err), "message": error_chain(err)},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use abkit_update::UpdateError;

    #[test]
    fn a_lower_layers_error_has_the_code_it_has_inside_an_engine_error() {
        let store = || abkit_efi::StoreError::InvalidName("x".into());
        let boot = || abkit_efi::BootError::from(store());
        let disk = || abkit_disk::DiskError::BadEspPath("x".into());
        let bare = |e: anyhow::Error| error_code(&e.context("cannot open it"));
        assert_eq!(bare(store().into()), UpdateError::Store(store()).code());
        assert_eq!(bare(boot().into()), UpdateError::Boot(boot()).code());
        assert_eq!(bare(disk().into()), UpdateError::Disk(disk()).code());
        assert_eq!(error_code(&anyhow::anyhow!("a wrong flag")), "error");
    }
}
