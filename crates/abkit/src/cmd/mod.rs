//! One module per `abkit` subcommand.

pub mod bundle;
pub mod efi;
pub mod keygen;
