//! One module per `abkit` subcommand.

pub mod efi;
