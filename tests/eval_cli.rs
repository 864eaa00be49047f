//! The whole evaluate path through the binary: `posthoc cache import-npy` of the real
//! `posthoc-small` fixture -> a Parquet cache on disk -> `posthoc eval --config ...
//! --json` -> every expected metric of `expected_metrics.json` (both conventions) and
//! ID accuracy within 1e-9; plus the errors a user meets at the command line.

mod common;

use std::path::Path;

use serde_json::Value;

use common::{fails, import_small as import, ok, posthoc_small};

const TOL: f64 = 1e-9;

fn config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs/cifar10-densenet100.toml")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Whether our row is the configuration the expected row describes.
fn same_config(ours: &Value, expected: &Value) -> bool {
    let method = expected["method"].as_str().unwrap().replace('_', "-");
    if ours["method"] != method.as_str() || ours["ood_set"] != expected["ood_set"] {
        return false;
    }
    let (p, e) = (&ours["params"], &expected["params"]);
    let same = |ours_key: &str, exp_key: &str| match (p.get(ours_key), e.get(exp_key)) {
        (None, None) => true,
        (Some(a), Some(b)) => a.as_f64() == b.as_f64(),
        _ => false,
    };
    same("p", "p")
        && same("clip", "clip")
        && same("temperature", "T")
        && same("p_a", "p_a")
        && same("p_w", "p_w")
}

fn check_convention(cache: &Path, dir: &Path, convention: &str) {
    let fixture = posthoc_small().unwrap();
    let json = dir.join(format!("{convention}.json"));
    let stdout = ok(&[
        "eval",
        "--cache",
        cache.to_str().unwrap(),
        "--config",
        &config(),
        "--convention",
        convention,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("== dice p=90"), "{stdout}");
    let ours: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let expected: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("expected_metrics.json")).unwrap(),
    )
    .unwrap();
    // 13 configurations x (3 OOD sets + average).
    assert_eq!(ours.len(), 52);
    assert_eq!(expected.len(), 52);
    for e in &expected {
        let matches: Vec<&Value> = ours.iter().filter(|o| same_config(o, e)).collect();
        assert_eq!(matches.len(), 1, "expected row {e} matched {matches:?}");
        let o = matches[0];
        let want = if convention == "dice" {
            &e["calmetric"]
        } else {
            e
        };
        for key in ["fpr95", "auroc", "aupr_in", "aupr_out"] {
            let (got, exp) = (o[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!(
                (got - exp).abs() <= TOL,
                "{} {} {} {key}: {got} vs {exp}",
                e["column"],
                e["ood_set"],
                convention
            );
        }
        let acc = o["id_accuracy"].as_f64().unwrap();
        assert!(
            (acc - e["id_acc"].as_f64().unwrap()).abs() <= TOL,
            "{e}: id_acc {acc}"
        );
        assert_eq!(o["n_id"], e["n_id"]);
        if e["ood_set"] != "average" {
            assert_eq!(o["n_ood"], e["n_ood"]);
        }
        assert_eq!(o["convention"], convention);
    }
}

#[test]
fn import_then_eval_matches_every_expected_metric_in_both_conventions() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = import(&fixture, dir.path());
    let verify = ok(&["cache", "verify", cache.to_str().unwrap()]);
    assert!(verify.contains("verified 8 files"), "{verify}");
    check_convention(&cache, dir.path(), "sklearn");
    check_convention(&cache, dir.path(), "dice");
}

#[test]
fn flags_sweep_and_csv_has_one_row_per_config_and_set() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = import(&fixture, dir.path());
    let csv = dir.path().join("r.csv");
    let json = dir.path().join("r.json");
    let stdout = ok(&[
        "eval",
        "--cache",
        cache.to_str().unwrap(),
        "--method",
        "dice,react",
        "--p",
        "0,50,90",
        "--clip",
        "1.0,p90",
        "--ood",
        "isun,mnist",
        "--csv",
        csv.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("== react clip=0.401469 (p90)"), "{stdout}");
    let text = std::fs::read_to_string(&csv).unwrap();
    // (3 dice + 2 react) x (2 sets + average) + header.
    assert_eq!(text.lines().count(), 1 + 5 * 3, "{text}");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let p90 = rows
        .iter()
        .find(|r| r["method"] == "react" && r["params"]["clip_percentile"] == 90.0)
        .unwrap();
    assert_eq!(
        p90["params"]["clip"].as_f64().unwrap() as f32,
        0.40146863f32
    );
    assert!(rows.iter().all(|r| r["ood_set"] != "tinyimagenet"));
}

#[test]
fn user_errors_name_what_is_wrong_and_exit_non_zero() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = import(&fixture, dir.path());
    let c = cache.to_str().unwrap();
    let err = fails(&["eval", "--cache", c, "--method", "odin"]);
    assert!(err.contains("unknown method \"odin\""), "{err}");
    let err = fails(&["eval", "--cache", c, "--method", "dice", "--p", "100"]);
    assert!(
        err.contains("--p 100: sparsity must be in [0, 100)"),
        "{err}"
    );
    let err = fails(&["eval", "--cache", c, "--method", "react", "--clip", "-0.5"]);
    assert!(err.contains("--clip -0.5"), "{err}");
    let err = fails(&[
        "eval",
        "--cache",
        c,
        "--method",
        "energy",
        "--temperature",
        "0",
    ]);
    assert!(err.contains("--temperature 0"), "{err}");
    let err = fails(&["eval", "--cache", c, "--method", "msp", "--p", "90"]);
    assert!(err.contains("--p does not apply to msp"), "{err}");
    let err = fails(&["eval", "--cache", c, "--method", "msp", "--ood", "svhn"]);
    assert!(err.contains("\"svhn\"") && err.contains("isun"), "{err}");
    let err = fails(&["eval", "--cache", c, "--method", "msp", "--convention", "x"]);
    assert!(err.contains("--convention x"), "{err}");
    let missing = dir.path().join("nope");
    let err = fails(&[
        "eval",
        "--cache",
        missing.to_str().unwrap(),
        "--method",
        "msp",
    ]);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn damaged_caches_are_refused_by_eval_and_verify_naming_the_file() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = import(&fixture, dir.path());
    let c = cache.to_str().unwrap();
    let target = cache.join("ood-isun.parquet");
    let pristine = std::fs::read(&target).unwrap();

    // One flipped byte in the middle: the hash no longer matches.
    let mut flipped = pristine.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    std::fs::write(&target, &flipped).unwrap();
    let err = fails(&["eval", "--cache", c, "--method", "energy"]);
    assert!(err.contains("ood-isun.parquet"), "{err}");
    let err = fails(&["cache", "verify", c]);
    assert!(err.contains("ood-isun.parquet"), "{err}");

    // Truncated file.
    std::fs::write(&target, &pristine[..pristine.len() - 100]).unwrap();
    let err = fails(&["eval", "--cache", c, "--method", "energy"]);
    assert!(err.contains("ood-isun.parquet"), "{err}");

    // Missing split file.
    std::fs::remove_file(&target).unwrap();
    let err = fails(&["eval", "--cache", c, "--method", "energy", "--ood", "mnist"]);
    assert!(err.contains("ood-isun.parquet"), "{err}");
    std::fs::write(&target, &pristine).unwrap();
    ok(&["eval", "--cache", c, "--method", "energy"]);
}
