//! Subcommands of the `posthoc` binary.

pub mod cache;
pub mod eval;
pub mod plots;
#[cfg(feature = "pipeline")]
pub mod precompute;
#[cfg(feature = "pipeline")]
pub mod um;
