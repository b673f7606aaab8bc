//! One module per `abkit` subcommand.

pub mod efi;
pub mod image;
