//! The etcd cluster arguments shared by the fleet commands (`fleetlock`,
//! `rollout`): where the cluster is, and the read-only
//! query shape "cluster + --json".

use abkit_fleet::{Store, parse_endpoints};
use clap::Args;

#[derive(Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (http://HOST:2379[,...]); every
    /// server and agent of a fleet names the same cluster.
    #[arg(long, value_name = "URL[,URL...]")]
    pub etcd: String,
}

impl EtcdArgs {
    pub fn connect(&self) -> anyhow::Result<Store> {
        Ok(Store::connect(&parse_endpoints(&self.etcd)?)?)
    }
}

/// A command that needs only the cluster: text, or JSON with `--json`
/// (the command's help says what the JSON holds).
#[derive(Args)]
pub struct EtcdQueryArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
