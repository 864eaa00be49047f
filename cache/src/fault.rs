//! Fault injection for crash tests: named points where a process can be made to die as
//! if killed by `kill -9` (no destructors, no flushing), chosen by the environment
//! variable `POSTHOC_FAULT=<point>`. Unset (always, outside tests), a point costs one
//! environment lookup.

/// Aborts the process at once when `POSTHOC_FAULT` names `name`.
pub fn point(name: &str) {
    if std::env::var_os("POSTHOC_FAULT").is_some_and(|v| v == name) {
        eprintln!("posthoc: fault injected at `{name}`: aborting");
        std::process::abort();
    }
}
