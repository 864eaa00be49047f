//! Reading everything a user could read of a cache, shared by the mutation property test
//! (`tests/mutations.rs`) and the `open_cache` fuzz target (`fuzz/`, a workspace of its
//! own, which includes this file by path).

use std::path::Path;

use posthoc_cache::{CacheError, FeatureCache, Role};

/// Opens the cache at `dir` (sha256 checks on or off) and reads the head, the stats, every
/// split whole, as scoring columns and streamed in batches of `rows_per_batch`, then
/// verifies it; the first error, if any.
pub fn read_all(dir: &Path, verify_hashes: bool, rows_per_batch: usize) -> Result<(), CacheError> {
    let cache = FeatureCache::open_with(dir, verify_hashes)?;
    cache.head()?;
    if cache.id_train().is_some() {
        cache.stats()?;
    }
    for role in [Role::IdTrain, Role::IdTest, Role::Ood] {
        for set in cache.sets(role) {
            cache.split(&set)?;
            cache.split_features(&set)?;
            for batch in cache.stream_split(&set, rows_per_batch)? {
                batch?;
            }
        }
    }
    posthoc_cache::verify(dir)?.into_result().map(|_| ())
}
