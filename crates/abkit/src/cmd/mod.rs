//! One module per `abkit` subcommand, plus the options they share.

pub mod efi;
pub mod image;
pub mod vars;
