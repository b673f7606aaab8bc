//! `abkit uki sign` and `abkit uki verify`: Authenticode signatures for
//! Secure Boot (docs/secure-boot.md). The signing and checking live in
//! `abkit_uki::sign`; this file reads the files and prints the outcome.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{read, write_new_file};

/// The Secure Boot signing key from a key file and its certificate file
/// (`uki sign`, `uki build --key`, `bundle create --uki-key`).
pub fn load_signing_key(key: &Path, cert: &Path) -> anyhow::Result<abkit_uki::SigningKey> {
    abkit_uki::SigningKey::new(&read(key, "key")?, &read(cert, "certificate")?).with_context(|| {
        format!(
            "cannot sign with the key {} and certificate {}",
            key.display(),
            cert.display()
        )
    })
}

/// `abkit uki sign`: sign `input` with `key`/`cert` into `output`.
pub fn sign(key: &Path, cert: &Path, input: &Path, output: &Path) -> anyhow::Result<()> {
    let signing_key = load_signing_key(key, cert)?;
    let bytes = read(input, "loader")?;
    let signed = abkit_uki::sign(&bytes, &signing_key)
        .with_context(|| format!("cannot sign {}", input.display()))?;
    write_new_file(output, &signed)?;
    eprintln!(
        "abkit: signed {} as {}",
        output.display(),
        signing_key.subject()
    );
    Ok(())
}

/// `abkit uki verify`: succeed when a signature of `file` is valid and
/// chains to one of `certs`; print every signature entry's verdict.
pub fn verify(certs: &[PathBuf], file: &Path) -> anyhow::Result<()> {
    let trusted = certs
        .iter()
        .map(|path| {
            abkit_uki::parse_certificate(&read(path, "certificate")?)
                .with_context(|| format!("cannot use the certificate {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bytes = read(file, "loader")?;
    let result = abkit_uki::verify(&bytes, &trusted)
        .with_context(|| format!("cannot read the signatures of {}", file.display()))?;
    println!("authenticode sha256: {}", result.authenticode_sha256);
    for (i, check) in result.signatures.iter().enumerate() {
        let signer = check.signer.as_deref().unwrap_or("unknown signer");
        let verdict = match &check.problem {
            None => "valid, trusted".to_string(),
            Some(problem) => problem.to_string(),
        };
        println!("signature {}: {signer}: {verdict}", i + 1);
    }
    if result.signatures.is_empty() {
        bail!("{} is not signed", file.display());
    }
    if !result.trusted() {
        bail!(
            "no signature of {} is valid and trusted by the given certificates",
            file.display()
        );
    }
    Ok(())
}
