//! What the integration tests of the `posthoc` package share.

use std::path::{Path, PathBuf};

/// `../shared/fixtures/posthoc-small`, or `None` (with a message saying the test skips)
/// when it is absent.
pub fn posthoc_small() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/posthoc-small");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipping: ../shared/fixtures/posthoc-small not found");
        None
    }
}
