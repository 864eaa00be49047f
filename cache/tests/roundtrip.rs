//! Write -> read round trips, streaming, statistics, merge, and the plain-type schema.

mod common;

use common::*;
use ndarray::{Array2, Axis};
use posthoc_cache::percentile::percentile;
use posthoc_cache::{CacheError, FeatureCache, Role, SplitData, merge, verify};

fn concat(batches: Vec<SplitData>) -> SplitData {
    let mut out = SplitData::empty(M, C);
    for b in batches {
        out.index.extend(b.index);
        out.paths.extend(b.paths);
        out.labels.extend(b.labels);
        out.features.append(Axis(0), b.features.view()).unwrap();
        out.logits.append(Axis(0), b.logits.view()).unwrap();
    }
    out
}

#[test]
fn write_then_read_gives_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let manifest = write_cache(&dir, 64, |_| true);
    assert_eq!(manifest.files.len(), 6, "head, 3 splits, 2 stats files");
    let names: Vec<_> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "head.parquet",
            "id_train.parquet",
            "id_test.parquet",
            "ood-noise.parquet",
            "activation_percentiles.parquet",
            "stats.parquet"
        ]
    );
    assert!(!dir.join(".partial").exists());

    let cache = FeatureCache::open(&dir).unwrap();
    assert_eq!(cache.head().unwrap(), head(M, C));
    assert_eq!(cache.sets(Role::Ood), ["noise"]);
    assert_eq!(cache.id_train().as_deref(), Some("id_train"));
    for (set, ..) in SETS {
        let got = cache.split(set).unwrap();
        assert_eq!(got, expected_split(set), "set {set}");
        let scoring = cache.split_features(set).unwrap();
        assert_eq!(
            (&scoring.index, &scoring.labels, &scoring.features),
            (&got.index, &got.labels, &got.features),
            "set {set}: split_features"
        );
        for batch_rows in [1, 50, 1000] {
            let streamed: Vec<_> = cache
                .stream_split(set, batch_rows)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(streamed.iter().all(|b| b.rows() <= batch_rows));
            assert_eq!(concat(streamed), got);
        }
    }
    let report = verify(&dir).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.passed.len(), 6);
}

#[test]
fn statistics_match_a_direct_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    write_cache(&dir, 64, |_| true);
    let cache = FeatureCache::open(&dir).unwrap();
    let stats = cache.stats().unwrap();
    let train = expected_split("id_train");
    let h = train.features.mapv(f64::from);
    let n = train.rows();
    assert_eq!(stats.n_train, n as u64);
    // Sequential f64 sums, as numpy's mean over axis 0 of the float64 copy.
    let mut sum = [0f64; M];
    let mut class_sum = Array2::<f64>::zeros((C, M));
    let mut counts = [0u64; C];
    for r in 0..n {
        let y = train.labels[r] as usize;
        counts[y] += 1;
        for i in 0..M {
            sum[i] += h[[r, i]];
            class_sum[[y, i]] += h[[r, i]];
        }
    }
    for i in 0..M {
        assert_eq!(stats.mean[i], sum[i] / n as f64);
        for k in 0..C {
            let mu_c = class_sum[[k, i]] / counts[k] as f64;
            assert_eq!(stats.class_means[[k, i]], mu_c);
            let w = f64::from(head(M, C).weight[[k, i]]);
            assert_eq!(stats.dice_contribution[[k, i]], stats.mean[i] * w);
            assert_eq!(stats.line_contribution[[k, i]], mu_c * w);
        }
    }
    assert_eq!(stats.class_counts, counts.to_vec());
    let flat: Vec<f32> = train.features.iter().copied().collect();
    let flat64: Vec<f64> = flat.iter().map(|&v| f64::from(v)).collect();
    let p = &stats.activation_percentiles;
    assert_eq!(p.num_values, (n * M) as u64);
    assert_eq!(
        p.num_zeros,
        flat.iter().filter(|v| **v == 0.0).count() as u64
    );
    assert!(p.num_zeros > 0);
    for (k, &q) in p.q.iter().enumerate() {
        assert_eq!(
            p.numpy_f32[k],
            percentile(&mut flat.clone(), q).unwrap(),
            "q = {q}"
        );
        assert_eq!(
            p.numpy_f64[k],
            percentile(&mut flat64.clone(), q).unwrap(),
            "q = {q}"
        );
    }
    // Cross-entropy and accuracy of the cached logits.
    let mut ce = 0.0;
    let mut correct = 0;
    for r in 0..n {
        let z: Vec<f64> = train.logits.row(r).iter().map(|&v| f64::from(v)).collect();
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let y = train.labels[r] as usize;
        ce += lse - z[y];
        let arg = (0..C).fold(0, |b, k| if z[k] > z[b] { k } else { b });
        correct += usize::from(arg == y);
    }
    assert!((stats.mean_ce - ce / n as f64).abs() <= 1e-12 * stats.mean_ce.abs());
    assert_eq!(stats.accuracy, correct as f64 / n as f64);
}

#[test]
fn rows_appended_out_of_order_are_sorted_and_duplicates_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let mut w = posthoc_cache::CacheWriter::create_with(
        &dir,
        init(M, C),
        posthoc_cache::WriterOptions {
            row_group_rows: 10,
            ..Default::default()
        },
    )
    .unwrap();
    w.write_head(&head(M, C)).unwrap();
    let mut sw = w.split_writer("noise", Role::Ood).unwrap();
    let order: Vec<u64> = (0..45).map(|i| (i * 17) % 45).collect();
    for chunk in order.chunks(7) {
        sw.append(&rows(33, chunk, M, C, Role::Ood)).unwrap();
    }
    let err = sw.append(&rows(33, &[3], M, C, Role::Ood)).unwrap_err();
    assert!(
        matches!(err, CacheError::DuplicateIndex { ref set, index: 3, .. } if set == "noise"),
        "{err}"
    );
    sw.skip(45, "dir/broken.png", "cannot decode").unwrap();
    sw.close().unwrap();
    let manifest = w.finish().unwrap();
    assert_eq!(manifest.skipped.len(), 1);
    assert_eq!(manifest.skipped[0].index, 45);
    assert!(
        manifest.file("stats.parquet").is_none(),
        "no id_train, no stats"
    );
    let cache = FeatureCache::open(&dir).unwrap();
    let got = cache.split("noise").unwrap();
    assert_eq!(got, rows(33, &(0..45).collect::<Vec<_>>(), M, C, Role::Ood));
    assert!(matches!(
        cache.stats(),
        Err(CacheError::MissingStats { .. })
    ));
}

#[test]
fn how_often_a_writer_commits_does_not_change_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let once = write_cache(&tmp.path().join("once"), 64, |_| true);
    let often = write_cache_with(
        &tmp.path().join("often"),
        posthoc_cache::WriterOptions {
            row_group_rows: 64,
            commit_rows: Some(5),
        },
        |_| true,
    );
    assert_eq!(once.files, often.files);
}

#[test]
fn merged_shards_equal_one_cache_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let m1 = write_cache(
        &whole,
        posthoc_cache::schema::DEFAULT_ROW_GROUP_ROWS,
        |_| true,
    );
    let shards: Vec<_> = (0..3)
        .map(|s| {
            let d = tmp.path().join(format!("shard{s}"));
            write_cache(&d, 16, |i| i % 3 == s);
            d
        })
        .collect();
    let out = tmp.path().join("merged");
    let m2 = merge(&shards, &out).unwrap();
    // Same data and the same row groups: identical files, identical hashes.
    let strip = |m: &posthoc_cache::Manifest| m.files.clone();
    assert_eq!(strip(&m1), strip(&m2));
    assert!(verify(&out).unwrap().is_ok());

    // Overlapping shards.
    let overlap = tmp.path().join("overlap");
    write_cache(&overlap, 16, |i| i == 5);
    let err = merge(&[shards[2].clone(), overlap], tmp.path().join("bad")).unwrap_err();
    assert!(
        matches!(err, CacheError::DuplicateIndex { index: 5, .. }),
        "{err}"
    );

    // A shard with another head.
    let other = tmp.path().join("other");
    let mut w = posthoc_cache::CacheWriter::create(&other, init(M, C)).unwrap();
    let mut h = head(M, C);
    h.bias[0] += 1.0;
    w.write_head(&h).unwrap();
    w.finish().unwrap();
    let err = merge(&[shards[0].clone(), other.clone()], tmp.path().join("bad2")).unwrap_err();
    assert!(
        matches!(err, CacheError::MergeConflict { ref field, ref dir, .. } if field == "head" && *dir == other),
        "{err}"
    );
}

#[test]
fn files_use_plain_arrow_types_and_describe_themselves() {
    use arrow_schema::DataType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    write_cache(&dir, 64, |_| true);
    let fsl = |t: DataType, n: i32| {
        DataType::FixedSizeList(
            std::sync::Arc::new(arrow_schema::Field::new("item", t, false)),
            n,
        )
    };
    let expected: [(&str, Vec<(&str, DataType)>); 4] = [
        (
            "ood-noise.parquet",
            vec![
                ("index", DataType::UInt64),
                ("path", DataType::Utf8),
                ("label", DataType::Int32),
                ("feature", fsl(DataType::Float32, M as i32)),
                ("logits", fsl(DataType::Float32, C as i32)),
            ],
        ),
        (
            "head.parquet",
            vec![
                ("class", DataType::UInt32),
                ("name", DataType::Utf8),
                ("weight", fsl(DataType::Float32, M as i32)),
                ("bias", DataType::Float32),
            ],
        ),
        (
            "stats.parquet",
            vec![
                ("class", DataType::Int32),
                ("count", DataType::UInt64),
                ("mean", fsl(DataType::Float64, M as i32)),
                ("dice_contribution", fsl(DataType::Float64, M as i32)),
                ("line_contribution", fsl(DataType::Float64, M as i32)),
                ("mean_ce", DataType::Float64),
                ("accuracy", DataType::Float64),
            ],
        ),
        (
            "activation_percentiles.parquet",
            vec![
                ("q", DataType::Float64),
                ("value_f32", DataType::Float32),
                ("value_f64", DataType::Float64),
            ],
        ),
    ];
    for (name, columns) in expected {
        let file = std::fs::File::open(dir.join(name)).unwrap();
        let b = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let schema = b.schema();
        let got: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone()))
            .collect();
        assert_eq!(got, columns, "{name}");
        // No extension types, no dictionaries, no large/view types.
        for f in schema.fields() {
            assert!(
                f.metadata().is_empty(),
                "{name}: field metadata on {}",
                f.name()
            );
        }
        let meta = b.metadata();
        let kv: std::collections::BTreeMap<_, _> = meta
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(kv["posthoc.format_version"], "1");
        assert_eq!(kv["posthoc.feature_dim"], M.to_string());
        assert_eq!(kv["posthoc.num_classes"], C.to_string());
        if name.starts_with("ood-") {
            assert_eq!(kv["posthoc.set"], "noise");
            assert_eq!(kv["posthoc.role"], "ood");
        }
        for rg in meta.row_groups() {
            for col in rg.columns() {
                // (The level is not recorded in the file.)
                assert!(
                    matches!(col.compression(), parquet::basic::Compression::ZSTD(_)),
                    "{name}"
                );
                assert!(
                    col.dictionary_page_offset().is_none(),
                    "{name}: dictionary page"
                );
            }
        }
    }
}

#[test]
fn producer_given_statistics_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    write_cache(&full, 64, |_| true);
    let stats = FeatureCache::open(&full).unwrap().stats().unwrap();
    // A cache of the test split only, with the statistics of the full run.
    let dir = tmp.path().join("given");
    let mut w = posthoc_cache::CacheWriter::create(&dir, init(M, C)).unwrap();
    w.write_head(&head(M, C)).unwrap();
    let mut wrong = stats.clone();
    wrong.class_counts.pop();
    let err = w.write_stats(&wrong).unwrap_err();
    assert!(
        matches!(err, CacheError::DimMismatch { ref column, .. } if column == "count"),
        "{err}"
    );
    w.write_stats(&stats).unwrap();
    let mut sw = w.split_writer("id_test", Role::IdTest).unwrap();
    sw.append(&expected_split("id_test")).unwrap();
    sw.close().unwrap();
    w.finish().unwrap();
    let cache = FeatureCache::open(&dir).unwrap();
    assert_eq!(cache.stats().unwrap(), stats);
    assert!(verify(&dir).unwrap().is_ok());
}
