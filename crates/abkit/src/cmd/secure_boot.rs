//! `abkit image build --secure-boot DIR`: reads a Secure Boot PKI folder (as
//! `scripts/test-pki.sh` writes it) and enrols it into the OVMF VARS file;
//! the variable layout is `abkit_efi::secure_boot`'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use abkit_efi::OvmfVarsFile;
use abkit_efi::secure_boot::{self, Certificate, EfiTime, Keys};

/// The certificates of `dir`: `PK.crt`, `KEK.crt`, `db.crt` (PEM or DER)
/// and the owner GUID from `owner.guid` (default: abkit's vendor GUID).
/// Read and checked before anything is built.
pub fn load_keys(dir: &Path) -> anyhow::Result<Keys> {
    if !dir.is_dir() {
        bail!(
            "--secure-boot {}: not a folder (expected PK.crt, KEK.crt, db.crt; scripts/test-pki.sh DIR makes one)",
            dir.display()
        );
    }
    let owner_file = dir.join("owner.guid");
    let owner_text = match std::fs::read_to_string(&owner_file) {
        Ok(text) => text,
        // No owner.guid: abkit's vendor GUID owns the entries.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            abkit_update::live::ABKIT_VENDOR.to_string()
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", owner_file.display())),
    };
    let owner = uuid::Uuid::parse_str(owner_text.trim()).with_context(|| {
        format!(
            "{} does not hold a GUID: {:?}",
            owner_file.display(),
            owner_text.trim()
        )
    })?;
    let cert = |role: &str| -> anyhow::Result<Certificate> {
        let path: PathBuf = dir.join(format!("{role}.crt"));
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read the {role} certificate {}", path.display()))?;
        let parsed = abkit_uki::parse_certificate(&bytes)
            .and_then(|c| abkit_uki::certificate_for_firmware(&c))
            .with_context(|| format!("{} is not an X.509 certificate", path.display()))?;
        let (der, [year, month, day, hour, minute, second]) = parsed;
        Ok(Certificate {
            owner,
            der,
            not_before: EfiTime {
                year,
                month: month as u8,
                day: day as u8,
                hour: hour as u8,
                minute: minute as u8,
                second: second as u8,
            },
        })
    };
    Ok(Keys {
        pk: cert("PK")?,
        kek: vec![cert("KEK")?],
        db: vec![cert("db")?],
    })
}

/// Fails unless `vars` is an OVMF VARS file that can hold Secure Boot keys
/// (an authenticated store): checked before the disk is built.
pub fn check_vars(vars: &Path) -> anyhow::Result<()> {
    let file = OvmfVarsFile::open(vars)?;
    if !file.is_authenticated() {
        return Err(abkit_efi::StoreError::NotAuthenticated {
            path: vars.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// Enrols `keys` into the VARS file at `vars` and turns Secure Boot on.
pub fn enroll(vars: &Path, keys: &Keys) -> anyhow::Result<()> {
    let mut file = OvmfVarsFile::open(vars)?;
    secure_boot::enroll(&mut file, keys)
        .with_context(|| format!("cannot enrol Secure Boot keys into {}", vars.display()))?;
    eprintln!(
        "abkit: Secure Boot keys enrolled into {} (PK, KEK, db); Secure Boot on: boot it with OVMF_CODE_4M.secboot.fd",
        vars.display()
    );
    Ok(())
}
