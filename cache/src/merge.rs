//! Joining caches written as disjoint shards of the same run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{CacheError, Result};
use crate::manifest::{ManifestInit, Role, split_file_name};
use crate::reader::FeatureCache;
use crate::writer::{CacheWriter, SortedSource, StatsSource, WriterOptions, finalize, join_sorted};

/// Joins caches `inputs` (shards of one run: same model, head, preprocessing) into a new
/// cache at `out`. Rows of a set present in several inputs are merged by `index`; an
/// index present twice is an error. Statistics are recomputed from the merged `id_train`
/// split. Every input file's sha256 is checked while it is read. Not resumable: on
/// failure `out` is left unfinished (rejected by `open`); remove it and run again.
pub fn merge(inputs: &[impl AsRef<Path>], out: impl AsRef<Path>) -> Result<crate::Manifest> {
    let out = out.as_ref();
    let Some(first_dir) = inputs.first() else {
        return Err(CacheError::InvalidInput {
            context: "merge".into(),
            reason: "no input caches".into(),
        });
    };
    let first = FeatureCache::open(first_dir)?;
    let head = first.head()?;
    let mut caches = vec![first];
    for dir in &inputs[1..] {
        let cache = FeatureCache::open(dir)?;
        let reference = &caches[0];
        let conflict = |field: &str| CacheError::MergeConflict {
            dir: cache.dir().to_path_buf(),
            first: reference.dir().to_path_buf(),
            field: field.to_string(),
        };
        let (a, b) = (reference.manifest(), cache.manifest());
        if a.model != b.model {
            return Err(conflict("model"));
        }
        if a.preprocessing != b.preprocessing {
            return Err(conflict("preprocessing"));
        }
        if cache.head()? != head {
            return Err(conflict("head"));
        }
        caches.push(cache);
    }
    let reference = caches[0].manifest().clone();
    let (m, c) = (reference.model.feature_dim, reference.model.num_classes);

    let mut sets: BTreeMap<String, (Role, Vec<SortedSource>)> = BTreeMap::new();
    let mut skipped = Vec::new();
    for cache in &caches {
        for entry in cache.manifest().files.iter().filter(|f| f.role.is_split()) {
            let set = entry.set.clone().expect("split entry");
            let (role, sources) = sets.entry(set.clone()).or_insert((entry.role, Vec::new()));
            if *role != entry.role {
                return Err(CacheError::MergeConflict {
                    dir: cache.dir().to_path_buf(),
                    first: caches[0].dir().to_path_buf(),
                    field: format!("role of set `{set}`"),
                });
            }
            sources.push(SortedSource {
                path: cache.dir().join(&entry.name),
                min_index: 0,
                sha256: Some(entry.sha256.clone()),
                rows: Some(entry.rows),
            });
        }
        for s in &cache.manifest().skipped {
            if !skipped.contains(s) {
                skipped.push(s.clone());
            }
        }
    }

    let init = ManifestInit {
        model: reference.model.clone(),
        preprocessing: reference.preprocessing.clone(),
        tool: reference.tool.clone(),
        created: None,
        provenance: serde_json::json!({
            "merged_from": caches.iter().map(|cache| serde_json::json!({
                "dir": cache.dir().display().to_string(),
                "created": cache.manifest().created,
                "provenance": cache.manifest().provenance,
            })).collect::<Vec<_>>(),
        }),
    };
    // Create the directory through the writer so that a failed merge leaves `.partial`.
    let writer = CacheWriter::create(out, init.clone())?;
    let row_group_rows = WriterOptions::default().row_group_rows;
    let mut splits = Vec::new();
    for (set, (role, sources)) in sets {
        let name = split_file_name(&set, role);
        let summary = join_sorted(sources, &out.join(&name), &set, role, m, c, row_group_rows)?;
        tracing::info!(set, rows = summary.rows, "merged set");
        splits.push(summary.entry(&name, role, Some(&set)));
    }
    drop(writer);
    finalize(out, &init, &head, splits, skipped, StatsSource::Compute)
}
