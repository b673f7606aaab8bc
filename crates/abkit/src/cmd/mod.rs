//! One module per `abkit` subcommand, plus the options they share.

pub mod bundle;
pub mod efi;
pub mod image;
pub mod keygen;
pub mod uki;
pub mod vars;
