//! The zoo through the binary on the real `posthoc-small` fixture imported as a cache:
//! a sweep over fitted methods in one process (JSON rows with the new parameter keys),
//! and the bad-input errors of issue 9, each a clear message and a non-zero exit.

mod common;

use serde_json::Value;

use common::{fails, import_small as import, ok, posthoc_small};

#[test]
fn a_zoo_sweep_runs_in_one_process_and_reports_its_parameters() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = import(&fixture, dir.path());
    let json = dir.path().join("zoo.json");
    let csv = dir.path().join("zoo.csv");
    let stdout = ok(&[
        "eval",
        "--cache",
        cache.to_str().unwrap(),
        "--method",
        "knn,nnguide,vim,gen,ash-s,react",
        "--k",
        "10,50",
        "--dim",
        "64",
        "--gamma",
        "0.1",
        "--p",
        "65",
        "--clip",
        "1.0",
        "--score",
        "energy,gen",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(stdout.contains("== knn k=50 bank_fraction=1"), "{stdout}");
    assert!(stdout.contains("== ash-s p=65 score=gen"), "{stdout}");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // knn x2, nnguide x2, vim, gen, ash-s x2, react x2 = 10 settings x (3 sets + average).
    assert_eq!(rows.len(), 10 * 4);
    let knn50 = rows
        .iter()
        .find(|r| r["method"] == "knn" && r["params"]["k"] == 50 && r["ood_set"] == "isun")
        .unwrap();
    assert_eq!(knn50["params"]["bank_fraction"], 1.0);
    assert!(knn50["auroc"].as_f64().unwrap() > 0.5);
    let header = std::fs::read_to_string(&csv).unwrap();
    let header = header.lines().next().unwrap();
    assert!(header.contains(",k,dim,bank_fraction,score,"), "{header}");
}

#[test]
fn zoo_input_errors_name_what_is_wrong_and_exit_non_zero() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = import(&fixture, dir.path());
    let c = cache.to_str().unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--cache", c];
        args.extend(extra);
        fails(&args)
    };
    // An unknown method lists the known ones.
    let err = eval(&["--method", "odin"]);
    assert!(
        err.contains("unknown method \"odin\"") && err.contains("knn") && err.contains("gradnorm"),
        "{err}"
    );
    // A flag the method does not take names both.
    let err = eval(&["--method", "knn", "--dim", "10"]);
    assert!(
        err.contains("--dim does not apply to knn") && err.contains("vim, residual"),
        "{err}"
    );
    // k larger than the bank (2,000 ID-train rows; 1 % = 20 rows).
    let err = eval(&["--method", "knn", "--k", "2001"]);
    assert!(
        err.contains("--k 2001 is larger than the nearest-neighbour bank (2000 rows)"),
        "{err}"
    );
    let err = eval(&[
        "--method",
        "nnguide",
        "--k",
        "30",
        "--bank-fraction",
        "0.01",
    ]);
    assert!(
        err.contains("--k 30 is larger than the nearest-neighbour bank (20 rows)"),
        "{err}"
    );
    // dim >= m.
    let err = eval(&["--method", "vim", "--dim", "342"]);
    assert!(
        err.contains("--dim 342: must be smaller than the feature width m = 342"),
        "{err}"
    );
    // Out-of-domain values.
    let err = eval(&["--method", "knn", "--bank-fraction", "1.5"]);
    assert!(err.contains("--bank-fraction 1.5"), "{err}");
    let err = eval(&["--method", "ash-p", "--p", "99.9"]);
    assert!(
        err.contains("--p 99.9") && err.contains("keeps none"),
        "{err}"
    );
    let err = eval(&["--method", "react", "--score", "odin"]);
    assert!(err.contains("--score odin"), "{err}");
}

#[test]
fn openood_convention_and_groups_add_rows_and_bad_groups_are_named() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = import(&fixture, dir.path());
    let config = dir.path().join("groups.toml");
    std::fs::write(
        &config,
        format!(
            "[eval]\ncache = {:?}\nconvention = \"openood\"\n[eval.groups]\nnear = [\"tinyimagenet\"]\nfar = [\"isun\", \"mnist\"]\n[[eval.run]]\nmethod = \"energy\"\n",
            cache.to_str().unwrap()
        ),
    )
    .unwrap();
    let json = dir.path().join("g.json");
    let stdout = ok(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("openood metrics"), "{stdout}");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let sets: Vec<&str> = rows
        .iter()
        .map(|r| r["ood_set"].as_str().unwrap())
        .collect();
    let mut per_set = sets[..3].to_vec();
    per_set.sort_unstable();
    assert_eq!(per_set, ["isun", "mnist", "tinyimagenet"]);
    assert_eq!(sets[3..], ["near", "far", "average"]);
    let metric = |set: &str, m: &str| {
        rows.iter().find(|r| r["ood_set"] == set).unwrap()[m]
            .as_f64()
            .unwrap()
    };
    let far = (metric("isun", "auroc") + metric("mnist", "auroc")) / 2.0;
    assert!((metric("far", "auroc") - far).abs() < 1e-15);
    assert_eq!(metric("near", "fpr95"), metric("tinyimagenet", "fpr95"));
    // OpenOOD's FPR@95 counts ID samples, sklearn's OOD samples: not the same number.
    let sklearn = ok(&[
        "eval",
        "--cache",
        cache.to_str().unwrap(),
        "--method",
        "energy",
        "--json",
        dir.path().join("s.json").to_str().unwrap(),
    ]);
    assert!(sklearn.contains("sklearn metrics"));
    let s_rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).unwrap()).unwrap();
    let s_isun = s_rows.iter().find(|r| r["ood_set"] == "isun").unwrap();
    assert_eq!(s_isun["auroc"].as_f64().unwrap(), metric("isun", "auroc"));
    assert_ne!(s_isun["fpr95"].as_f64().unwrap(), metric("isun", "fpr95"));

    std::fs::write(
        &config,
        format!(
            "[eval]\ncache = {:?}\n[eval.groups]\nnear = [\"svhn\"]\n[[eval.run]]\nmethod = \"energy\"\n",
            cache.to_str().unwrap()
        ),
    )
    .unwrap();
    let err = fails(&["eval", "--config", config.to_str().unwrap()]);
    assert!(
        err.contains("[eval.groups] \"near\" names \"svhn\""),
        "{err}"
    );
}

#[test]
fn select_picks_on_validation_rows_and_reports_the_whole_sweep_flagged() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = import(&fixture, dir.path());
    let c = cache.to_str().unwrap();
    let json = dir.path().join("sel.json");
    let stdout = ok(&[
        "eval",
        "--cache",
        c,
        "--method",
        "knn,react",
        "--k",
        "1,10,50",
        "--clip",
        "0.5,1.0",
        "--select",
        "auroc",
        "--val-ood",
        "mnist",
        "--val-fraction",
        "0.3",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("selected by Auroc on mnist"), "{stdout}");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // The whole sweep (3 knn + 2 react) x (isun, tinyimagenet, average); mnist is held out.
    assert_eq!(rows.len(), 5 * 3);
    assert!(rows.iter().all(|r| r["ood_set"] != "mnist"));
    // 30 % of the 1,000 ID test rows validate; the other 700 are reported.
    assert!(rows.iter().all(|r| r["n_id"] == 700));
    for method in ["knn", "react"] {
        let picked: Vec<&Value> = rows
            .iter()
            .filter(|r| r["method"] == method && r["selected"] == true && r["ood_set"] == "average")
            .collect();
        assert_eq!(picked.len(), 1, "{method}: one selected setting");
    }
    // Only the selected settings are in the tables.
    assert_eq!(stdout.matches("== knn").count(), 1, "{stdout}");

    let err = fails(&[
        "eval",
        "--cache",
        c,
        "--method",
        "knn",
        "--select",
        "auroc",
        "--val-ood",
        "svhn",
    ]);
    assert!(
        err.contains("--val-ood \"svhn\" is not an OOD set") && err.contains("isun"),
        "{err}"
    );
    let err = fails(&[
        "eval",
        "--cache",
        c,
        "--method",
        "knn",
        "--select",
        "auroc",
        "--val-ood",
        "mnist",
        "--val-fraction",
        "1.0",
    ]);
    assert!(
        err.contains("--val-fraction 1: the validation fraction must be in (0, 1)"),
        "{err}"
    );
    let err = fails(&["eval", "--cache", c, "--method", "knn", "--select", "auroc"]);
    assert!(err.contains("--select needs --val-ood"), "{err}");
}
