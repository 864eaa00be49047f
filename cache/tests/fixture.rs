//! Import of the real `posthoc-small` fixture and its ID-train statistics.

mod common;

use std::path::Path;

use ndarray::{Array1, Array2};
use ndarray_npy::read_npy;
use posthoc_cache::percentile::percentile;
use posthoc_cache::{CacheError, FeatureCache, ImportOptions, Role, import_npy, verify};

fn options() -> ImportOptions {
    ImportOptions {
        model_id: "densenet100-cifar10".into(),
        class_names: Some(
            [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ]
            .map(String::from)
            .to_vec(),
        ),
        preprocessing: serde_json::json!({"resize": 32, "center_crop": 32}),
        ..Default::default()
    }
}

fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300)
}

#[test]
fn import_of_posthoc_small_reproduces_the_reference_statistics() {
    let Some(src) = common::fixture("posthoc-small") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cache");
    let manifest = import_npy(&src, &out, &options()).unwrap();
    assert_eq!(manifest.model.feature_dim, 342);
    assert_eq!(manifest.model.num_classes, 10);
    assert_eq!(manifest.provenance["logits"]["isun"], "file");
    let report = verify(&out).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("expected_stats.json")).unwrap())
            .unwrap();
    let cache = FeatureCache::open(&out).unwrap();
    for (set, key) in [
        ("id_train", "id_train"),
        ("id_test", "id_test"),
        ("isun", "ood_isun"),
        ("tinyimagenet", "ood_tinyimagenet"),
        ("mnist", "ood_mnist"),
    ] {
        let entry = cache.manifest().split_entry(set).unwrap();
        assert_eq!(
            entry.rows,
            expected["n_rows"][key].as_u64().unwrap(),
            "{set}"
        );
        // The cached rows are the npy rows, bit for bit.
        let data = cache.split(set).unwrap();
        let feat: Array2<f32> = read_npy(src.join(format!("{key}_feat.npy"))).unwrap();
        let logits: Array2<f32> = read_npy(src.join(format!("{key}_logits.npy"))).unwrap();
        assert_eq!(data.features, feat, "{set}");
        assert_eq!(data.logits, logits, "{set}");
        let files = std::fs::read_to_string(src.join(format!("{key}_files.txt"))).unwrap();
        assert_eq!(data.paths, files.lines().collect::<Vec<_>>(), "{set}");
        if entry.role.is_id() {
            let labels: Array1<i64> = read_npy(src.join(format!("{key}_labels.npy"))).unwrap();
            assert_eq!(
                data.labels
                    .iter()
                    .map(|&l| i64::from(l))
                    .collect::<Vec<_>>(),
                labels.to_vec()
            );
        } else {
            assert_eq!(entry.role, Role::Ood);
            assert!(data.labels.iter().all(|&l| l == -1));
        }
    }

    let stats = cache.stats().unwrap();
    let mean: Array1<f64> = read_npy(src.join("train_mean.npy")).unwrap();
    let class_mean: Array2<f64> = read_npy(src.join("train_class_mean.npy")).unwrap();
    for (a, b) in stats.mean.iter().zip(&mean) {
        assert!(rel_close(*a, *b, 1e-12), "{a} vs {b}");
    }
    for (a, b) in stats.class_means.iter().zip(&class_mean) {
        assert!(rel_close(*a, *b, 1e-12), "{a} vs {b}");
    }
    let counts: Vec<u64> = serde_json::from_value(expected["train_class_counts"].clone()).unwrap();
    assert_eq!(stats.class_counts, counts);
    assert_eq!(stats.n_train, 2000);
    // ReAct threshold: numpy's float32 percentile, bit for bit; and the f64 variant.
    let (p90_f32, p90_f64) = stats.activation_percentiles.at(90.0).unwrap();
    assert_eq!(
        f64::from(p90_f32),
        expected["react_threshold_p90"].as_f64().unwrap()
    );
    assert_eq!(
        p90_f64,
        expected["react_threshold_p90_float64_input"]
            .as_f64()
            .unwrap()
    );
    assert_eq!(stats.accuracy, expected["id_train_acc"].as_f64().unwrap());
    assert!(stats.mean_ce > 0.0 && stats.mean_ce.is_finite());
    // The stored contributions give the reference DICE and LINe thresholds.
    let v: Vec<f64> = stats.dice_contribution.iter().copied().collect();
    for p in ["50", "70", "90"] {
        let t = percentile(&mut v.clone(), p.parse().unwrap()).unwrap();
        let want = expected["dice_thresholds"][p].as_f64().unwrap();
        assert!(rel_close(t, want, 1e-12), "DICE p{p}: {t} vs {want}");
    }
    for c in 0..10 {
        let s: Vec<f64> = stats.line_contribution.row(c).to_vec();
        let t = percentile(&mut s.clone(), 90.0).unwrap();
        let want = expected["line"]["a_thresholds"][c].as_f64().unwrap();
        assert!(rel_close(t, want, 1e-12), "LINe A class {c}: {t} vs {want}");
    }
}

fn link_fixture_without(src: &Path, dst: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name.ends_with("_feat.npy")
            || name.ends_with("_files.txt")
            || name.ends_with("_labels.npy")
            || name.ends_with("_logits.npy")
            || name.starts_with("fc_");
        if wanted && !name.starts_with("scores_") && !skip.contains(&name.as_str()) {
            std::os::unix::fs::symlink(entry.path(), dst.join(&name)).unwrap();
        }
    }
}

#[test]
fn import_names_a_missing_required_file() {
    let Some(src) = common::fixture("posthoc-small") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for missing in ["id_test_files.txt", "id_train_labels.npy", "fc_bias.npy"] {
        let from = tmp.path().join(format!("src-{missing}"));
        link_fixture_without(&src, &from, &[missing]);
        let out = tmp.path().join(format!("out-{missing}"));
        let err = import_npy(&from, &out, &options()).unwrap_err();
        assert!(
            matches!(err, CacheError::MissingFile { ref file, .. } if *file == from.join(missing)),
            "{missing}: {err}"
        );
        assert!(
            !out.exists(),
            "nothing is created before the inputs are checked"
        );
    }
}

#[test]
fn import_without_logits_computes_them_from_the_head() {
    let Some(src) = common::fixture("posthoc-small") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let from = tmp.path().join("src");
    link_fixture_without(&src, &from, &["ood_mnist_logits.npy"]);
    let out = tmp.path().join("out");
    let manifest = import_npy(&from, &out, &options()).unwrap();
    assert!(
        manifest.provenance["logits"]["mnist"]
            .as_str()
            .unwrap()
            .starts_with("computed")
    );
    let cache = FeatureCache::open(&out).unwrap();
    let computed = cache.split("mnist").unwrap().logits;
    let torch: Array2<f32> = read_npy(src.join("ood_mnist_logits.npy")).unwrap();
    let max = computed
        .iter()
        .zip(&torch)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // The fixture README measures PyTorch's float32 logits within 4.8e-6 of the f64 head.
    assert!(max < 1e-5, "max abs difference {max}");
}
