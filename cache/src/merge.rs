//! Joining caches written as disjoint shards of the same run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{CacheError, Result};
use crate::manifest::{ManifestInit, Role, split_file_name};
use crate::reader::FeatureCache;
use crate::store::CacheLocation;
use crate::writer::{CacheWriter, SortedSource, StatsSource, WriterOptions, finalize, join_sorted};

/// Joins caches `inputs` (shards of one run: same model, head, preprocessing) into a new
/// cache at `out`. Rows of a set present in several inputs are merged by `index`; an
/// index present twice is an error. Statistics are recomputed from the merged `id_train`
/// split. Every input file's sha256 is checked while it is read. Not resumable: on
/// failure `out` is left unfinished (rejected by `open`); remove it and run again.
pub fn merge(inputs: &[impl AsRef<Path>], out: impl AsRef<Path>) -> Result<crate::Manifest> {
    let labelled: Vec<(String, PathBuf)> = inputs
        .iter()
        .map(|d| (d.as_ref().display().to_string(), d.as_ref().to_path_buf()))
        .collect();
    merge_dirs(&labelled, out.as_ref())
}

/// [`merge`] between any locations: remote inputs are fetched through the download
/// cache; a remote output is merged into a local staging directory
/// ([`crate::store::staging_dir`]), uploaded (manifest last) and the staging removed.
pub fn merge_locations(inputs: &[CacheLocation], out: &CacheLocation) -> Result<crate::Manifest> {
    let mut labelled = Vec::new();
    for input in inputs {
        let dir = match input {
            CacheLocation::Local(d) => d.clone(),
            CacheLocation::Remote(u) => crate::store::fetch_remote(u)?,
        };
        labelled.push((input.to_string(), dir));
    }
    match out {
        CacheLocation::Local(dir) => merge_dirs(&labelled, dir),
        CacheLocation::Remote(url) => {
            let staging = crate::store::staging_dir(url);
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(crate::error::io_err(&staging))?;
            }
            let manifest = merge_dirs(&labelled, &staging)?;
            crate::store::copy(&CacheLocation::Local(staging.clone()), out, |_, _| {})?;
            std::fs::remove_dir_all(&staging).map_err(crate::error::io_err(&staging))?;
            Ok(manifest)
        }
    }
}

fn open_input(label: &str, dir: &Path) -> Result<FeatureCache> {
    if let Some(holder) = crate::lock::holder(dir)? {
        return Err(CacheError::Unfinished {
            dir: PathBuf::from(label),
            reason: format!("still being written by {holder}"),
        });
    }
    FeatureCache::open(dir).map_err(|e| match e {
        CacheError::Unfinished { reason, .. } => CacheError::Unfinished {
            dir: PathBuf::from(label),
            reason,
        },
        other => other,
    })
}

fn merge_dirs(inputs: &[(String, PathBuf)], out: &Path) -> Result<crate::Manifest> {
    let Some((first_label, first_dir)) = inputs.first() else {
        return Err(CacheError::InvalidInput {
            context: "merge".into(),
            reason: "no input caches".into(),
        });
    };
    let first = open_input(first_label, first_dir)?;
    let head = first.head()?;
    let mut caches = vec![first];
    for (label, dir) in &inputs[1..] {
        let cache = open_input(label, dir)?;
        let reference = &caches[0];
        let conflict = |field: &str| CacheError::MergeConflict {
            dir: cache.dir().to_path_buf(),
            first: reference.dir().to_path_buf(),
            field: field.to_string(),
        };
        let (a, b) = (reference.manifest(), cache.manifest());
        let json = |v: &crate::ModelInfo| serde_json::to_value(v).expect("serialisable");
        if let Some(field) = first_difference(&json(&a.model), &json(&b.model), "model") {
            return Err(conflict(&field));
        }
        if let Some(field) = first_difference(&a.preprocessing, &b.preprocessing, "preprocessing") {
            return Err(conflict(&field));
        }
        for key in RUN_KEYS {
            let (x, y) = (&a.provenance[key], &b.provenance[key]);
            if let Some(field) = first_difference(x, y, &format!("provenance.{key}")) {
                return Err(conflict(&field));
            }
        }
        if cache.head()? != head {
            return Err(conflict("head"));
        }
        caches.push(cache);
    }
    check_shards(&caches)?;
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
            "merged_from": caches.iter().zip(inputs).map(|(cache, (label, _))| serde_json::json!({
                "dir": label,
                "created": cache.manifest().created,
                "provenance": cache.manifest().provenance,
            })).collect::<Vec<_>>(),
        }),
    };
    remove_interrupted_merge(out)?;
    // Create the directory through the writer so that a failed merge leaves `.partial`.
    let writer = CacheWriter::create(out, init.clone())?;
    let row_group_rows = WriterOptions::default().row_group_rows;
    let mut splits = Vec::new();
    for (set, (role, sources)) in sets {
        let name = split_file_name(&set, role);
        let summary = join_sorted(sources, &out.join(&name), &set, role, m, c, row_group_rows)?;
        tracing::info!(set, rows = summary.rows, "merged set");
        splits.push(summary.entry(&name, role, Some(&set)));
        crate::fault::point("merge.split");
    }
    drop(writer);
    finalize(out, &init, &head, splits, skipped, StatsSource::Compute)
}

/// Clears `out` when it holds what an interrupted merge left (a `.partial` whose
/// provenance says `merged_from`, no manifest), so that a re-run completes. Anything else
/// in `out` is left to [`CacheWriter::create`], which refuses a non-empty directory.
fn remove_interrupted_merge(out: &Path) -> Result<()> {
    let read = |p: PathBuf| -> serde_json::Value {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    // Before the finish: `.partial/init.json`; during it: the staged manifest.
    let init = read(out.join(crate::manifest::PARTIAL_DIR).join("init.json"));
    let staged = read(crate::io::tmp_path(
        &out.join(crate::manifest::MANIFEST_FILE),
    ));
    let merged = !init["init"]["provenance"]["merged_from"].is_null()
        || !staged["provenance"]["merged_from"].is_null();
    if out.join(crate::manifest::MANIFEST_FILE).exists() || !merged {
        return Ok(());
    }
    tracing::warn!(out = %out.display(), "removing the output of an interrupted merge");
    for entry in std::fs::read_dir(out).map_err(crate::error::io_err(out))? {
        let entry = entry.map_err(crate::error::io_err(out))?;
        if entry.file_name() == crate::lock::LOCK_FILE {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(crate::error::io_err(&path))?;
    }
    Ok(())
}

/// Provenance keys that must agree between shards of one run (what was computed; the
/// command line, host and times may differ).
const RUN_KEYS: [&str; 3] = ["config", "checkpoint", "limit"];

/// The dotted path of the first place where `a` and `b` differ, or `None` when equal.
pub(crate) fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = Value::Null;
                first_difference(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(path.to_string()),
    }
}

/// The `(index, count)` a shard's provenance records (`shard`: `{"index", "count"}` or
/// `"i/n"`), `None` for an unsharded cache.
pub(crate) fn shard_of(provenance: &serde_json::Value) -> Option<(u64, u64)> {
    let s = &provenance["shard"];
    if let (Some(i), Some(n)) = (s["index"].as_u64(), s["count"].as_u64()) {
        return Some((i, n));
    }
    let (i, n) = s.as_str()?.split_once('/')?;
    Some((i.trim().parse().ok()?, n.trim().parse().ok()?))
}

/// When the inputs are shards (their provenance says `shard`), they must be all `n`
/// shards of one split, each once.
fn check_shards(caches: &[FeatureCache]) -> Result<()> {
    let shards: Vec<Option<(u64, u64)>> = caches
        .iter()
        .map(|c| shard_of(&c.manifest().provenance))
        .collect();
    if shards.iter().all(Option::is_none) {
        return Ok(());
    }
    let bad = |dir: &Path, reason: String| CacheError::InvalidInput {
        context: format!("merge: {}", dir.display()),
        reason,
    };
    let Some((_, n)) = shards.iter().flatten().next().copied() else {
        return Ok(());
    };
    let mut seen: BTreeMap<u64, &Path> = BTreeMap::new();
    for (cache, shard) in caches.iter().zip(&shards) {
        let Some((i, count)) = *shard else {
            return Err(bad(
                cache.dir(),
                "is not a shard (its provenance has no `shard`) but the other inputs are".into(),
            ));
        };
        if count != n {
            return Err(bad(
                cache.dir(),
                format!("is shard {i}/{count}, the first input is one of {n} shards"),
            ));
        }
        if let Some(other) = seen.insert(i, cache.dir()) {
            return Err(bad(
                cache.dir(),
                format!("duplicate shard {i}/{n} (also {})", other.display()),
            ));
        }
    }
    let missing: Vec<String> = (0..n)
        .filter(|i| !seen.contains_key(i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(CacheError::InvalidInput {
            context: "merge".into(),
            reason: format!(
                "shard(s) {} missing: {} of {n} shards given",
                missing.join(", "),
                seen.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_named_by_path() {
        let a = json!({"resize": 32, "mean": [0.1, 0.2], "x": {"y": 1}});
        assert_eq!(first_difference(&a, &a, "p"), None);
        let b = json!({"resize": 32, "mean": [0.1, 0.3], "x": {"y": 1}});
        assert_eq!(first_difference(&a, &b, "p").as_deref(), Some("p.mean[1]"));
        let c = json!({"resize": 32, "mean": [0.1, 0.2], "x": {"y": 2}});
        assert_eq!(first_difference(&a, &c, "p").as_deref(), Some("p.x.y"));
        let d = json!({"resize": 32, "mean": [0.1, 0.2]});
        assert_eq!(first_difference(&a, &d, "p").as_deref(), Some("p.x"));
    }

    #[test]
    fn shards_are_read_in_both_spellings() {
        assert_eq!(
            shard_of(&json!({"shard": {"index": 1, "count": 3}})),
            Some((1, 3))
        );
        assert_eq!(shard_of(&json!({"shard": "2/4"})), Some((2, 4)));
        assert_eq!(shard_of(&json!({"shard": null})), None);
        assert_eq!(shard_of(&json!({})), None);
    }
}
