//! One module per `abkit` subcommand, plus the options they share.

pub mod agent;
pub mod bundle;
pub mod efi;
pub mod errors;
pub mod image;
pub mod install;
pub mod keygen;
pub mod machine;
pub mod mark_good;
pub mod progress;
pub mod rollback;
pub mod secure_boot;
pub mod status;
pub mod uki;
pub mod vars;
