//! `abkit keygen`: make an Ed25519 key pair for signing bundles.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

#[derive(Args)]
pub struct KeygenArgs {
    /// Base path of the key pair: writes BASE.key (secret, mode 0600) and
    /// BASE.pub (public; copy it into the devices' keyring folder).
    #[arg(long, value_name = "BASE")]
    out: PathBuf,
    /// One line of text stored as a `#` comment in both files (e.g. who owns the key).
    #[arg(long)]
    comment: Option<String>,
    /// Replace existing files instead of refusing (a symbolic link at either
    /// name is replaced by the new file, never written through).
    #[arg(long)]
    force: bool,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let key = abkit_bundle::SecretKey::generate()?;
    let (secret, public) = key
        .write_pair(&args.out, args.comment.as_deref(), args.force)
        .with_context(|| format!("cannot write key pair {}", args.out.display()))?;
    println!("secret key: {} (keep it private)", secret.display());
    println!(
        "public key: {} (key id {})",
        public.display(),
        key.public_key().key_id()
    );
    Ok(())
}
