//! `testos-initrd`: packs the test OS init and kernel modules into an initrd
//! (newc cpio, uncompressed) for the VM tests.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Write the test OS initrd: INIT as /init, each --module into /lib/modules,
/// loaded by init in the order given.
#[derive(Parser)]
struct Args {
    /// The init program (a static Linux binary, e.g. testos-init).
    #[arg(long, value_name = "FILE")]
    init: PathBuf,
    /// A kernel module (.ko) to ship and load; repeat, leaves first.
    #[arg(long, value_name = "FILE")]
    module: Vec<PathBuf>,
    /// Where to write the initrd.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let init = std::fs::read(&args.init)
        .with_context(|| format!("cannot read {}", args.init.display()))?;
    let mut modules = Vec::new();
    for path in &args.module {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", path.display()))?
            .to_string();
        modules.push((name, data));
    }
    let modules: Vec<testos::initrd::Module<'_>> = modules
        .iter()
        .map(|(file_name, data)| testos::initrd::Module { file_name, data })
        .collect();
    let bytes = testos::initrd::write_initrd(Vec::new(), &init, &modules)?;
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(())
}
