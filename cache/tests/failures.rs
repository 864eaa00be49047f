//! Bad input gets an error naming the file, column and row.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::types::Float32Type;
use arrow_array::{
    ArrayRef, FixedSizeListArray, Int32Array, RecordBatch, StringArray, UInt64Array,
};
use common::*;
use posthoc_cache::{CacheError, CacheWriter, FeatureCache, Head, Role, verify};

fn cache(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("cache");
    write_cache(&dir, 32, |_| true);
    dir
}

#[test]
fn truncated_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache(tmp.path());
    let file = dir.join("id_test.parquet");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = FeatureCache::open(&dir).unwrap_err();
    assert!(
        matches!(err, CacheError::SizeMismatch { file: ref f, expected, found } if *f == file && expected == len && found == len / 2),
        "{err}"
    );
    assert!(err.to_string().contains("id_test.parquet"));
    let report = verify(&dir).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert!(matches!(&report.problems[0], CacheError::SizeMismatch { file: f, .. } if *f == file));
    // Even with the manifest resealed to the truncated size, the reader names the file.
    reseal(&dir, "id_test.parquet");
    let cache = FeatureCache::open(&dir).unwrap();
    let err = cache.split("id_test").unwrap_err();
    assert!(
        matches!(err, CacheError::Corrupt { file: ref f, .. } if *f == file),
        "{err}"
    );
    assert!(cache.split("id_train").is_ok());
}

#[test]
fn flipped_byte_is_a_hash_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache(tmp.path());
    let file = dir.join("id_train.parquet");
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    for at in [len / 3, 4, len - 20] {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        std::fs::write(&file, &b).unwrap();
        let cache = FeatureCache::open(&dir).unwrap(); // same size: open's cheap checks pass
        let err = cache.split("id_train").unwrap_err();
        assert!(
            matches!(err, CacheError::HashMismatch { file: ref f, .. } if *f == file),
            "byte {at}: {err}"
        );
        // The scoring load skips columns but not the hash of the whole file.
        let err = cache.split_features("id_train").unwrap_err();
        assert!(
            matches!(err, CacheError::HashMismatch { file: ref f, .. } if *f == file),
            "byte {at}: {err}"
        );
        let err = cache
            .stream_split("id_train", 50)
            .and_then(|s| s.collect::<Result<Vec<_>, _>>())
            .unwrap_err();
        assert!(
            matches!(err, CacheError::HashMismatch { file: ref f, .. } if *f == file),
            "byte {at}: {err}"
        );
        let report = verify(&dir).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| matches!(p, CacheError::HashMismatch { file: f, .. } if *f == file)),
            "{:?}",
            report.problems
        );
    }
    bytes[len / 3] ^= 0x10;
    bytes[len / 3] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let report = verify(&dir).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn head_dims_must_match_features() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let mut w = CacheWriter::create(&dir, init(M, C)).unwrap();
    let err = w.write_head(&head(M + 1, C)).unwrap_err();
    assert!(
        matches!(err, CacheError::DimMismatch { ref column, expected, found, .. } if column == "weight" && expected == M && found == M + 1),
        "{err}"
    );
    let err = w.write_head(&head(M, C + 1)).unwrap_err();
    assert!(
        matches!(err, CacheError::DimMismatch { expected, found, .. } if expected == C && found == C + 1),
        "{err}"
    );

    // A cache whose head file was replaced by one of another width.
    let dir = cache(tmp.path());
    let other = tmp.path().join("other");
    let mut w = CacheWriter::create(&other, init(M + 1, C)).unwrap();
    w.write_head(&head(M + 1, C)).unwrap();
    w.finish().unwrap();
    std::fs::copy(other.join("head.parquet"), dir.join("head.parquet")).unwrap();
    reseal(&dir, "head.parquet");
    let err = FeatureCache::open(&dir).unwrap().head().unwrap_err();
    // The footer already says m = 13; the manifest says 12.
    assert!(
        matches!(err, CacheError::FooterMetadata { ref file, ref key, .. } if file.ends_with("head.parquet") && key == "posthoc.feature_dim"),
        "{err}"
    );
    let report = verify(&dir).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains("head.parquet"))
    );

    // Schema check on its own: a split file with wider features and a consistent footer
    // claim (hand-made) is a DimMismatch naming file and column.
    let dir2 = tmp.path().join("c2");
    write_cache(&dir2, 32, |_| true);
    let file = dir2.join("ood-noise.parquet");
    write_split_file(&file, M + 2, C, &[0, 1], |_, _| 0.5, Some(M));
    reseal(&dir2, "ood-noise.parquet");
    let err = FeatureCache::open(&dir2)
        .unwrap()
        .split("noise")
        .unwrap_err();
    assert!(
        matches!(err, CacheError::DimMismatch { file: ref f, ref column, expected, found } if *f == file && column == "feature" && expected == M && found == M + 2),
        "{err}"
    );
}

/// Writes a split file by hand (not through the crate's writer), with `feature(row, i)`
/// values and footer dims `footer_m` (default: the real width).
fn write_split_file(
    path: &Path,
    m: usize,
    c: usize,
    index: &[u64],
    feature: impl Fn(usize, usize) -> f32,
    footer_m: Option<usize>,
) {
    let n = index.len();
    let fsl = |values: Vec<f32>, w: usize| -> ArrayRef {
        Arc::new(FixedSizeListArray::new(
            Arc::new(arrow_schema::Field::new(
                "item",
                arrow_schema::DataType::Float32,
                false,
            )),
            w as i32,
            Arc::new(arrow_array::PrimitiveArray::<Float32Type>::from(values)),
            None,
        ))
    };
    let features: Vec<f32> = (0..n * m).map(|p| feature(p / m, p % m)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(index.to_vec())),
        Arc::new(StringArray::from_iter_values(
            index.iter().map(|i| format!("x/{i}")),
        )),
        Arc::new(Int32Array::from(vec![-1; n])),
        fsl(features, m),
        fsl(vec![0.25; n * c], c),
    ];
    let schema = posthoc_cache::schema::split_schema(m, c);
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let kv = [
        ("posthoc.format_version", "1".to_string()),
        ("posthoc.role", "ood".to_string()),
        ("posthoc.set", "noise".to_string()),
        ("posthoc.feature_dim", footer_m.unwrap_or(m).to_string()),
        ("posthoc.num_classes", c.to_string()),
    ];
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(
            kv.into_iter()
                .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.to_string(), v))
                .collect(),
        ))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        schema,
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn missing_split_file_and_unknown_set_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache(tmp.path());
    let cache_ok = FeatureCache::open(&dir).unwrap();
    let err = cache_ok.split("svhn").unwrap_err();
    assert!(
        matches!(err, CacheError::MissingSplit { ref set, ref available } if set == "svhn" && available == &["id_train", "id_test", "noise"]),
        "{err}"
    );
    let file = dir.join("ood-noise.parquet");
    std::fs::remove_file(&file).unwrap();
    let err = FeatureCache::open(&dir).unwrap_err();
    assert!(
        matches!(err, CacheError::MissingFile { file: ref f, .. } if *f == file),
        "{err}"
    );
    let report = verify(&dir).unwrap();
    assert!(
        matches!(&report.problems[..], [CacheError::MissingFile { file: f, .. }] if *f == file),
        "{:?}",
        report.problems
    );
    // Opened before the removal: reading names the file too.
    let err = cache_ok.split("noise").unwrap_err();
    assert!(
        matches!(err, CacheError::MissingFile { file: ref f, .. } if *f == file),
        "{err}"
    );
}

#[test]
fn nan_is_refused_by_the_writer_and_the_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let mut w = CacheWriter::create_with(
        &dir,
        init(M, C),
        posthoc_cache::WriterOptions {
            row_group_rows: 8,
            ..Default::default()
        },
    )
    .unwrap();
    w.write_head(&head(M, C)).unwrap();
    let mut sw = w.split_writer("noise", Role::Ood).unwrap();
    sw.append(&rows(33, &[0, 1, 2], M, C, Role::Ood)).unwrap();
    let mut bad = rows(33, &[10, 11, 12], M, C, Role::Ood);
    bad.features[[1, 4]] = f32::NAN;
    let err = sw.append(&bad).unwrap_err();
    assert!(
        matches!(err, CacheError::NonFinite { ref file, ref column, row: 11 } if file.ends_with("ood-noise.parquet") && column == "feature"),
        "{err}"
    );
    let mut bad = rows(33, &[10, 11, 12], M, C, Role::Ood);
    bad.logits[[2, 0]] = f32::INFINITY;
    let err = sw.append(&bad).unwrap_err();
    assert!(
        matches!(err, CacheError::NonFinite { ref column, row: 12, .. } if column == "logits"),
        "{err}"
    );
    // The rejected batches left nothing behind: their indices are still free.
    sw.append(&rows(33, &[10, 11, 12], M, C, Role::Ood))
        .unwrap();
    assert_eq!(sw.close().unwrap(), 6);

    // A hand-made Parquet file with a NaN: the reader names file, column and row.
    let dir = cache(tmp.path());
    let file = dir.join("ood-noise.parquet");
    write_split_file(
        &file,
        M,
        C,
        &(0..90).collect::<Vec<_>>(),
        |r, i| if r == 57 && i == 3 { f32::NAN } else { 0.5 },
        None,
    );
    reseal(&dir, "ood-noise.parquet");
    let manifest_path = dir.join("manifest.json");
    let mut manifest: posthoc_cache::Manifest =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest
        .files
        .iter_mut()
        .find(|f| f.name == "ood-noise.parquet")
        .unwrap()
        .rows = 90;
    std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let err = FeatureCache::open(&dir)
        .unwrap()
        .split("noise")
        .unwrap_err();
    assert!(
        matches!(err, CacheError::NonFinite { file: ref f, ref column, row: 57 } if *f == file && column == "feature"),
        "{err}"
    );
    let report = verify(&dir).unwrap();
    assert!(
        matches!(&report.problems[..], [CacheError::NonFinite { file: f, row: 57, .. }] if *f == file),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_directory_without_manifest_or_with_partial_is_not_a_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache(tmp.path());
    // Interrupted finish: manifest staged but not renamed.
    std::fs::rename(dir.join("manifest.json"), dir.join("manifest.json.tmp")).unwrap();
    assert!(matches!(
        FeatureCache::open(&dir),
        Err(CacheError::Unfinished { .. })
    ));
    assert!(matches!(verify(&dir), Err(CacheError::Unfinished { .. })));
    let w = CacheWriter::open_resume(&dir).unwrap();
    assert!(w.is_finished());
    w.finish().unwrap();
    assert!(verify(&dir).unwrap().is_ok());
    // A leftover `.partial` next to a manifest.
    std::fs::create_dir(dir.join(".partial")).unwrap();
    let err = FeatureCache::open(&dir).unwrap_err();
    assert!(
        matches!(err, CacheError::Unfinished { ref dir, .. } if dir.ends_with("cache")),
        "{err}"
    );
    // Unsupported version.
    std::fs::remove_dir(dir.join(".partial")).unwrap();
    let text = std::fs::read_to_string(dir.join("manifest.json"))
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 2");
    std::fs::write(dir.join("manifest.json"), text).unwrap();
    assert!(matches!(
        FeatureCache::open(&dir),
        Err(CacheError::UnsupportedVersion { found: 2, .. })
    ));
    // Not a cache at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(verify(&empty), Err(CacheError::Unfinished { .. })));
    // Writer misuse: finishing without a head, unclosed sets.
    let w = CacheWriter::create(tmp.path().join("nohead"), init(M, C)).unwrap();
    assert!(matches!(w.finish(), Err(CacheError::Unfinished { .. })));
    let mut w = CacheWriter::create(tmp.path().join("unclosed"), init(M, C)).unwrap();
    w.write_head(&Head {
        weight: head(M, C).weight,
        bias: head(M, C).bias,
    })
    .unwrap();
    let mut sw = w.split_writer("id_test", Role::IdTest).unwrap();
    sw.append(&rows(1, &[0], M, C, Role::IdTest)).unwrap();
    drop(sw);
    let err = w.finish().unwrap_err();
    assert!(err.to_string().contains("id_test"), "{err}");
}
