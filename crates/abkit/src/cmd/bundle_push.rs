//! `abkit bundle push BUNDLE oci://HOST[:PORT]/REPO:TAG`: store a signed
//! bundle in an OCI registry as an artifact (abkit-oci; media types in
//! docs/oci.md) and print the manifest digest devices can pin.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use abkit_bundle::BundleHead;
use abkit_oci::manifest::{COMPATIBLE_ANNOTATION, VERSION_ANNOTATION};
use abkit_update::{Reporter, Step};
use anyhow::Context as _;
use clap::Args;

use super::progress::Output;
use super::registry::RegistryArgs;

#[derive(Args)]
pub struct PushArgs {
    /// The bundle file (checked to be a bundle; its version and product
    /// become annotations of the manifest).
    bundle: PathBuf,

    /// Where to: oci://HOST[:PORT]/REPO:TAG (https unless
    /// --insecure-registry).
    reference: String,

    /// Upload in chunks of this many bytes (PATCH requests; a chunk that
    /// fails is resent from where the registry says the upload stands, or
    /// the upload starts over if the registry dropped it) instead of one
    /// PUT. For proxies that limit request bodies.
    #[arg(long, value_name = "BYTES")]
    chunk_size: Option<u64>,

    /// Print the result as JSON on standard output; a failure too, as
    /// `{"ok": false, "error": {"code": ..., "message": ...}}` (exit status 1).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn push(a: PushArgs) -> anyhow::Result<()> {
    let reference = abkit_oci::Reference::parse(&a.reference)?;
    let file = File::open(&a.bundle)
        .with_context(|| format!("cannot open bundle {}", a.bundle.display()))?;
    let head = BundleHead::read(&mut BufReader::new(file))
        .map_err(super::bundle::coded)
        .with_context(|| format!("{} is not a bundle", a.bundle.display()))?;
    let annotations = BTreeMap::from([
        (
            VERSION_ANNOTATION.to_owned(),
            head.manifest.version.to_string(),
        ),
        (
            COMPATIBLE_ANNOTATION.to_owned(),
            head.manifest.compatible.clone(),
        ),
    ]);
    let options = a.registry.options(&abkit_fetch::RetryPolicy::default())?;
    let title = a
        .bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let mut out = Output::on_stderr();
    let mut progress = |done, total| {
        out.event(abkit_update::Event::Progress {
            step: Step::PushBundle,
            done,
            total,
        })
    };
    let report = abkit_oci::push_bundle(
        &reference,
        &options,
        &a.bundle,
        &abkit_oci::PushOptions {
            chunk_size: a.chunk_size,
            annotations,
            title,
        },
        &mut progress,
    );
    out.finish();
    let report = report.with_context(|| format!("push of {} failed", a.bundle.display()))?;
    if a.json {
        let mut doc = serde_json::to_value(&report)?;
        doc["ok"] = serde_json::Value::Bool(true);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        eprintln!(
            "abkit: pushed {} {} to {} ({} bytes{}); pinned: {}",
            head.manifest.compatible,
            head.manifest.version,
            report.reference,
            report.size,
            if report.uploaded {
                ""
            } else {
                ", already in the registry"
            },
            report.pinned
        );
        println!("{}", report.manifest_digest);
    }
    Ok(())
}
