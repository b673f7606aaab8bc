//! One module per `abkit` subcommand, plus the options they share.

pub mod agent;
pub mod bundle;
pub mod bundle_push;
pub mod efi;
pub mod errors;
pub mod etcd;
pub mod fleetlock;
pub mod image;
pub mod install;
pub mod keygen;
pub mod machine;
pub mod mark_good;
pub mod progress;
pub mod registry;
pub mod rollback;
pub mod rollout;
pub mod secure_boot;
pub mod status;
pub mod uki;
pub mod vars;
