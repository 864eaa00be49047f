//! `merge` refuses what is not the n shards of one run, naming the field or the gap:
//! another model, preprocessing or config; a duplicate or missing shard; a shard still
//! being written (its lock held, or its `.partial` left); and a merge killed midway
//! (fault injection in a child process) leaves no cache, and a re-run completes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{C, M, SETS, head, init, rows};
use posthoc_cache::{
    CacheError, CacheLocation, CacheWriter, LockOptions, ManifestInit, WriteLock, WriterOptions,
    merge,
};

/// Shard `i` of `n` of the standard synthetic cache (rows with index % n == i), with
/// `tweak` applied to what the producer states.
fn shard(dir: &Path, i: u64, n: u64, tweak: impl Fn(&mut ManifestInit)) -> PathBuf {
    let mut state = init(M, C);
    state.provenance = serde_json::json!({
        "shard": {"index": i, "count": n},
        "config": {"model": {"depth": 100}, "data": {"id_train": "train.tar"}},
        "limit": null,
        "host": format!("node-{i}"),
    });
    tweak(&mut state);
    let mut w = CacheWriter::create_with(
        dir,
        state,
        WriterOptions {
            row_group_rows: 16,
            ..Default::default()
        },
    )
    .unwrap();
    w.write_head(&head(M, C)).unwrap();
    for (set, role, seed, rows_n) in SETS {
        let mut sw = w.split_writer(set, role).unwrap();
        let mine: Vec<u64> = (0..rows_n).filter(|r| r % n == i).collect();
        for chunk in mine.chunks(37) {
            sw.append(&rows(seed, chunk, M, C, role)).unwrap();
        }
        sw.close().unwrap();
    }
    w.finish().unwrap();
    dir.to_path_buf()
}

fn shards(tmp: &Path, n: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| shard(&tmp.join(format!("s{i}")), i, n, |_| {}))
        .collect()
}

fn conflict_field(err: &CacheError) -> String {
    match err {
        CacheError::MergeConflict { field, .. } => field.clone(),
        other => panic!("expected a merge conflict, got {other}"),
    }
}

#[test]
fn different_model_preprocessing_or_config_is_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let good = shards(tmp.path(), 2);
    let bad = |name: &str, tweak: &dyn Fn(&mut ManifestInit)| {
        let dir = shard(&tmp.path().join(name), 1, 2, tweak);
        merge(
            &[good[0].clone(), dir],
            tmp.path().join(format!("out-{name}")),
        )
        .unwrap_err()
    };
    let err = bad("model", &|s| s.model.id = "resnet50".into());
    assert_eq!(conflict_field(&err), "model.id", "{err}");
    let err = bad("ckpt", &|s| {
        s.model.checkpoint_sha256 = Some("a".repeat(64))
    });
    assert_eq!(conflict_field(&err), "model.checkpoint_sha256");
    let err = bad("pre", &|s| {
        s.preprocessing = serde_json::json!({"resize": 36})
    });
    assert_eq!(conflict_field(&err), "preprocessing.resize");
    assert!(
        err.to_string().contains("preprocessing.resize differs"),
        "{err}"
    );
    let err = bad("cfg", &|s| {
        s.provenance["config"]["model"]["depth"] = 40.into()
    });
    assert_eq!(conflict_field(&err), "provenance.config.model.depth");
    let err = bad("limit", &|s| s.provenance["limit"] = 64.into());
    assert_eq!(conflict_field(&err), "provenance.limit");
    // Host (and command line, times) may differ: shards of one run ran on several nodes.
    let out = tmp.path().join("merged");
    merge(&good, &out).unwrap();
}

#[test]
fn duplicate_missing_and_foreign_shards_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let s = shards(tmp.path(), 3);
    let err = merge(&[s[0].clone(), s[2].clone()], tmp.path().join("o1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shard(s) 1/3 missing") && err.contains("2 of 3"),
        "{err}"
    );
    let copy = tmp.path().join("copy-of-s1");
    shard(&copy, 1, 3, |_| {});
    let err = merge(
        &[s[0].clone(), s[1].clone(), copy.clone(), s[2].clone()],
        tmp.path().join("o2"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("duplicate shard 1/3"), "{err}");
    assert!(err.contains(copy.to_str().unwrap()) && err.contains(s[1].to_str().unwrap()));
    let other_split = shard(&tmp.path().join("of4"), 3, 4, |_| {});
    let err = merge(&[s[0].clone(), other_split], tmp.path().join("o3"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is shard 3/4") && err.contains("one of 3 shards"),
        "{err}"
    );
    let whole = shard(&tmp.path().join("whole"), 0, 1, |st| {
        st.provenance["shard"] = serde_json::Value::Null
    });
    let err = merge(&[s[0].clone(), whole], tmp.path().join("o4"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a shard"), "{err}");
    merge(&s, tmp.path().join("all")).unwrap();
}

#[test]
fn a_shard_still_being_written_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = shards(tmp.path(), 2);
    // Its writer holds the lock (a live process: this one).
    let lock =
        WriteLock::acquire(&CacheLocation::Local(s[1].clone()), &LockOptions::default()).unwrap();
    let err = merge(&s, tmp.path().join("o1")).unwrap_err();
    assert!(
        matches!(err, CacheError::Unfinished { .. })
            && err.to_string().contains(&format!(
                "still being written by pid {}",
                std::process::id()
            )),
        "{err}"
    );
    drop(lock);
    // A write that has not finished: `.partial`, no manifest.
    let unfinished = tmp.path().join("unfinished");
    let mut w = CacheWriter::create(&unfinished, init(M, C)).unwrap();
    w.write_head(&head(M, C)).unwrap();
    drop(w);
    let err = merge(&[s[0].clone(), unfinished.clone()], tmp.path().join("o2")).unwrap_err();
    assert!(
        matches!(&err, CacheError::Unfinished { dir, .. } if *dir == unfinished),
        "{err}"
    );
}

/// Merges `inputs` into `out` in a child process (this test binary, re-run on the
/// `child_merge` test), with `POSTHOC_FAULT` set to `fault`.
fn merge_in_child(inputs: &[PathBuf], out: &Path, fault: &str) -> std::process::ExitStatus {
    let list: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_merge", "--nocapture"])
        .env(
            "POSTHOC_CHILD_MERGE",
            format!("{}|{}", out.display(), list.join("|")),
        )
        .env("POSTHOC_FAULT", fault)
        .status()
        .unwrap()
}

/// Not a test of its own: the child process of [`merge_in_child`].
#[test]
fn child_merge() {
    let Ok(spec) = std::env::var("POSTHOC_CHILD_MERGE") else {
        return;
    };
    let mut parts = spec.split('|');
    let out = PathBuf::from(parts.next().unwrap());
    let inputs: Vec<PathBuf> = parts.map(PathBuf::from).collect();
    merge(&inputs, &out).unwrap();
}

#[test]
fn a_merge_killed_midway_leaves_no_cache_and_a_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = shards(tmp.path(), 2);
    let reference = tmp.path().join("reference");
    let expected = merge(&s, &reference).unwrap();
    for fault in [
        "merge.split",
        "finish.before_manifest",
        "finish.before_rename",
    ] {
        let out = tmp.path().join(format!("out-{fault}"));
        let status = merge_in_child(&s, &out, fault);
        assert!(
            !status.success(),
            "{fault}: the child should have been aborted"
        );
        let err = posthoc_cache::FeatureCache::open(&out).unwrap_err();
        assert!(
            matches!(err, CacheError::Unfinished { .. }),
            "{fault}: {err}"
        );
        assert!(posthoc_cache::verify(&out).is_err(), "{fault}");
        // The re-run clears what the killed merge left and completes.
        let again = merge(&s, &out).unwrap();
        assert_eq!(again.files, expected.files, "{fault}");
        posthoc_cache::verify(&out).unwrap().into_result().unwrap();
    }
}
