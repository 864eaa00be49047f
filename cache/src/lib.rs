//! The posthoc feature cache.
