//! Subcommands of the `posthoc` binary.

pub mod cache;
pub mod eval;
pub mod plots;
pub mod precompute;
pub mod um;
