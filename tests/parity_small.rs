//! Parity of the evaluate stage with the PyTorch/numpy/sklearn reference on the real
//! `posthoc-small` fixture (`../shared/fixtures/posthoc-small`, README sections 2 and 4):
//! ID-train statistics, the ReAct threshold, every mask, all 13 score columns of every
//! set and every expected metric in both conventions, plus the ID accuracies.

mod common;

use std::collections::HashMap;

use ndarray::{Array1, Array2, Array3, ArrayView2, Axis};
use posthoc::eval::scores::{self, Scored};
use posthoc::eval::{
    Clip, ClipValue, Convention, DiceMask, Head64, HimplosMask, LineMasks, LinePercentile, Metrics,
    Sparsity, Temperature, dice_sweep, id_accuracy, metrics, percentile,
};
use serde_json::Value;

use common::{Npy as Fixture, posthoc_small};

const OOD_SETS: [&str; 3] = ["isun", "tinyimagenet", "mnist"];

fn assert_rel(what: &str, got: f64, want: f64, tol: f64) {
    let rel = (got - want).abs() / want.abs().max(f64::MIN_POSITIVE);
    assert!(
        rel <= tol,
        "{what}: {got} vs {want} (rel {rel:e} > {tol:e})"
    );
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// `mu` and `mu_c` of `f32` features, accumulated in `f64`.
fn train_means(
    features: ArrayView2<f32>,
    labels: &[i64],
    classes: usize,
) -> (Array1<f64>, Array2<f64>) {
    let m = features.ncols();
    let mut sum = Array1::<f64>::zeros(m);
    let mut class_sum = Array2::<f64>::zeros((classes, m));
    let mut counts = vec![0usize; classes];
    for (h, &y) in features.outer_iter().zip(labels) {
        let h = h.mapv(f64::from);
        sum += &h;
        let y = usize::try_from(y).expect("ID label");
        let mut row = class_sum.row_mut(y);
        row += &h;
        counts[y] += 1;
    }
    for (mut row, &n) in class_sum.outer_iter_mut().zip(&counts) {
        row /= n as f64;
    }
    (sum / features.nrows() as f64, class_sum)
}

#[test]
fn posthoc_small_parity() {
    let Some(dir) = posthoc_small() else { return };
    let fx = Fixture { dir };
    let stats = &fx.json("expected_stats.json");

    // Head and ID-train statistics.
    let head = Head64::from_f32(
        fx.npy::<f32, _>("fc_weight.npy").view(),
        fx.npy::<f32, _>("fc_bias.npy").view(),
    )
    .unwrap();
    let classes = head.classes();
    let train: Array2<f32> = fx.npy("id_train_feat.npy");
    let train_labels: Array1<i64> = fx.npy("id_train_labels.npy");
    let (mu, mu_c) = train_means(train.view(), train_labels.as_slice().unwrap(), classes);
    let want_mu: Array1<f64> = fx.npy("train_mean.npy");
    let want_mu_c: Array2<f64> = fx.npy("train_class_mean.npy");
    for (g, w) in mu.iter().zip(&want_mu) {
        assert_rel("train_mean", *g, *w, 1e-12);
    }
    for (g, w) in mu_c.iter().zip(&want_mu_c) {
        assert_rel("train_class_mean", *g, *w, 1e-12);
    }

    // ReAct threshold: numpy on the float32 values (float32 interpolation), bit for bit,
    // and on float64 values.
    let mut acts: Vec<f32> = train.iter().copied().collect();
    let p90_f32 = percentile(&mut acts, 90.0).unwrap();
    assert_eq!(
        f64::from(p90_f32),
        stats["react_threshold_p90"].as_f64().unwrap()
    );
    let mut acts64: Vec<f64> = train.iter().map(|&v| f64::from(v)).collect();
    assert_eq!(
        percentile(&mut acts64, 90.0).unwrap(),
        stats["react_threshold_p90_float64_input"].as_f64().unwrap()
    );
    let react_p90 = Clip::Percentile(90.0)
        .resolve(|q| {
            Ok(f64::from(
                percentile(&mut train.iter().copied().collect::<Vec<f32>>(), q).unwrap(),
            ))
        })
        .unwrap();
    assert_eq!(react_p90.get(), f64::from(p90_f32));

    // DICE masks.
    let sparsity = |p: f64| Sparsity::new(p).unwrap();
    let dice_ps: Vec<Sparsity> = [0.0, 50.0, 70.0, 90.0].map(sparsity).to_vec();
    let dice_masks = DiceMask::sweep(mu.view(), &head, &dice_ps).unwrap();
    assert_eq!(dice_masks[0].kept(), classes * head.width());
    for mask in &dice_masks[1..] {
        let p = mask.sparsity().to_string();
        assert_eq!(
            mask.mask(),
            fx.mask2(&format!("dice_mask_p{p}.npy")),
            "DICE mask p{p}"
        );
        assert_rel(
            "DICE threshold",
            mask.threshold().unwrap(),
            stats["dice_thresholds"][&p].as_f64().unwrap(),
            1e-12,
        );
        assert_eq!(mask.kept() as u64, stats["dice_kept"][&p].as_u64().unwrap());
    }

    // LINe masks from S = mu_c * W.
    let line_stats = &stats["line"];
    let s = &mu_c * &head.weights();
    let line_masks = LineMasks::new(
        s.view(),
        &head,
        LinePercentile::activation(line_stats["p_a"].as_f64().unwrap()).unwrap(),
        LinePercentile::weight(line_stats["p_w"].as_f64().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(line_masks.activation_mask(), fx.mask2("line_mask_a.npy"));
    let want_b: Array3<bool> = fx.npy::<u8, _>("line_mask_b.npy").mapv(|v| v != 0);
    for (c, want) in want_b.axis_iter(Axis(0)).enumerate() {
        assert_eq!(line_masks.weight_mask(c), want, "LINe B[{c}]");
    }
    for (g, w) in line_masks
        .activation_thresholds()
        .iter()
        .zip(f64s(&line_stats["a_thresholds"]))
    {
        assert_rel("LINe A threshold", *g, w, 1e-12);
    }
    for (g, w) in line_masks
        .weight_thresholds()
        .iter()
        .zip(f64s(&line_stats["b_thresholds"]))
    {
        assert_rel("LINe B threshold", *g, w, 1e-12);
    }
    let a_kept: Vec<usize> = line_masks
        .activation_mask()
        .outer_iter()
        .map(|r| r.iter().filter(|&&k| k).count())
        .collect();
    assert_eq!(a_kept, usizes(&line_stats["a_kept_per_class"]));
    let b_kept: Vec<usize> = (0..classes)
        .map(|c| line_masks.weight_mask(c).iter().filter(|&&k| k).count())
        .collect();
    assert_eq!(b_kept, usizes(&line_stats["b_kept_per_class"]));

    // HIMPLoS head mask.
    let him = &stats["himplos"];
    let him_mask = HimplosMask::new(&head, sparsity(him["p"].as_f64().unwrap())).unwrap();
    assert_eq!(him_mask.mask(), fx.mask2("himplos_mask.npy"));
    for (g, w) in him_mask
        .thresholds()
        .iter()
        .zip(f64s(&him["row_thresholds"]))
    {
        assert_rel("HIMPLoS row threshold", *g, w, 1e-12);
    }
    let him_kept: Vec<usize> = him_mask
        .mask()
        .outer_iter()
        .map(|r| r.iter().filter(|&&k| k).count())
        .collect();
    assert_eq!(him_kept, usizes(&him["kept_per_class"]));

    // All 13 score columns for every set.
    let clip = |c: f64| ClipValue::new(c).unwrap();
    let t = |v: f64| Temperature::new(v).unwrap();
    let line_clip = clip(line_stats["clip"].as_f64().unwrap());
    let him_clip = clip(him["clip"].as_f64().unwrap());
    let him_t = t(him["T"].as_f64().unwrap());
    type ScoreFn<'a> = Box<dyn Fn(ArrayView2<f32>) -> Scored + 'a>;
    let columns: Vec<(&str, ScoreFn)> = vec![
        ("msp", Box::new(|f| scores::msp(f, &head).unwrap())),
        (
            "maxlogit",
            Box::new(|f| scores::maxlogit(f, &head).unwrap()),
        ),
        (
            "energy_T1",
            Box::new(|f| scores::energy(f, &head, t(1.0)).unwrap()),
        ),
        (
            "energy_T10",
            Box::new(|f| scores::energy(f, &head, t(10.0)).unwrap()),
        ),
        (
            "react_p90",
            Box::new(|f| scores::react(f, &head, react_p90).unwrap()),
        ),
        (
            "react_c1",
            Box::new(|f| scores::react(f, &head, clip(1.0)).unwrap()),
        ),
        (
            "dice_p0",
            Box::new(|f| scores::dice(f, &head, &dice_masks[0]).unwrap()),
        ),
        (
            "dice_p50",
            Box::new(|f| scores::dice(f, &head, &dice_masks[1]).unwrap()),
        ),
        (
            "dice_p70",
            Box::new(|f| scores::dice(f, &head, &dice_masks[2]).unwrap()),
        ),
        (
            "dice_p90",
            Box::new(|f| scores::dice(f, &head, &dice_masks[3]).unwrap()),
        ),
        (
            "dice_react_p90_c1",
            Box::new(|f| scores::dice_react(f, &head, &dice_masks[3], clip(1.0)).unwrap()),
        ),
        (
            "line",
            Box::new(|f| scores::line(f, &head, line_clip, &line_masks).unwrap()),
        ),
        (
            "himplos",
            Box::new(|f| {
                scores::himplos(f, &head, &him_mask, him_clip, him_t, mu_c.view()).unwrap()
            }),
        ),
    ];
    let names = std::fs::read_to_string(fx.dir.join("score_columns.txt")).unwrap();
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        columns.iter().map(|c| c.0).collect::<Vec<_>>()
    );

    let sets: Vec<String> = std::iter::once("id_test".to_owned())
        .chain(OOD_SETS.iter().map(|s| format!("ood_{s}")))
        .collect();
    let mut computed: HashMap<(String, String), Scored> = HashMap::new();
    for set in &sets {
        let feats: Array2<f32> = fx.npy(&format!("{set}_feat.npy"));
        let want: Array2<f64> = fx.npy(&format!("scores_{set}.npy"));
        assert_eq!(
            want.dim(),
            (feats.nrows(), columns.len()),
            "scores_{set}.npy"
        );
        for (j, (name, score)) in columns.iter().enumerate() {
            let got = score(feats.view());
            let max_abs = got
                .scores
                .iter()
                .zip(want.column(j))
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f64::max);
            println!("{set:>18} {name:>18}: max abs diff {max_abs:.2e}");
            assert!(max_abs <= 1e-9, "{set} {name}: max abs diff {max_abs:e}");
            computed.insert((set.clone(), name.to_string()), got);
        }
    }

    // The one-pass DICE sweep gives the DICE columns too (plain and clipped at 1.0).
    for set in &sets {
        let feats: Array2<f32> = fx.npy(&format!("{set}_feat.npy"));
        let want: Array2<f64> = fx.npy(&format!("scores_{set}.npy"));
        let swept = dice_sweep(feats.view(), &head, &dice_masks, None).unwrap();
        let clipped = dice_sweep(feats.view(), &head, &dice_masks[3..], Some(clip(1.0))).unwrap();
        let pairs = [
            ("dice_p0", &swept[0]),
            ("dice_p50", &swept[1]),
            ("dice_p70", &swept[2]),
        ]
        .into_iter()
        .chain([("dice_p90", &swept[3]), ("dice_react_p90_c1", &clipped[0])]);
        for (name, got) in pairs {
            let j = columns.iter().position(|c| c.0 == name).unwrap();
            for (g, w) in got.scores.iter().zip(want.column(j)) {
                assert!((g - w).abs() <= 1e-9, "{set} {name} (sweep): {g} vs {w}");
            }
            assert_eq!(
                got.predicted,
                computed[&(set.clone(), name.to_owned())].predicted
            );
        }
    }

    // Metrics in both conventions, ID accuracy, and the averages over the OOD sets.
    let id_labels: Array1<i64> = fx.npy("id_test_labels.npy");
    let rows = fx.json("expected_metrics.json");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), columns.len() * (OOD_SETS.len() + 1));
    let mut per_set: HashMap<(String, Convention), Vec<Metrics>> = HashMap::new();
    let worst = std::cell::Cell::new(0.0f64);
    let check = |what: String, got: &Metrics, want: &Value| {
        for (key, g) in [
            ("fpr95", got.fpr95),
            ("auroc", got.auroc),
            ("aupr_in", got.aupr_in),
            ("aupr_out", got.aupr_out),
        ] {
            let w = want[key].as_f64().unwrap();
            worst.set(worst.get().max((g - w).abs()));
            assert!((g - w).abs() <= 1e-9, "{what} {key}: {g} vs {w}");
        }
    };
    for ood in OOD_SETS {
        for row in rows.iter().filter(|r| r["ood_set"] == ood) {
            let name = row["column"].as_str().unwrap();
            let id = &computed[&("id_test".to_owned(), name.to_owned())];
            let out = &computed[&(format!("ood_{ood}"), name.to_owned())];
            assert_eq!(row["n_id"].as_u64().unwrap() as usize, id.scores.len());
            assert_eq!(row["n_ood"].as_u64().unwrap() as usize, out.scores.len());
            for (conv, want) in [
                (Convention::Sklearn, row),
                (Convention::Dice, &row["calmetric"]),
            ] {
                let m = metrics(&id.scores, &out.scores, conv).unwrap();
                check(format!("{name} vs {ood} ({conv:?})"), &m, want);
                per_set.entry((name.to_owned(), conv)).or_default().push(m);
            }
            let acc = id_accuracy(&id.predicted, id_labels.as_slice().unwrap()).unwrap();
            assert_eq!(acc, row["id_acc"].as_f64().unwrap(), "{name} id_acc");
        }
    }
    for row in rows.iter().filter(|r| r["ood_set"] == "average") {
        let name = row["column"].as_str().unwrap();
        for (conv, want) in [
            (Convention::Sklearn, row),
            (Convention::Dice, &row["calmetric"]),
        ] {
            let all = &per_set[&(name.to_owned(), conv)];
            assert_eq!(all.len(), OOD_SETS.len());
            check(
                format!("{name} average ({conv:?})"),
                &Metrics::mean(all).unwrap(),
                want,
            );
        }
    }
    println!(
        "metrics: max abs diff {:.2e} over {} rows x 2 conventions",
        worst.get(),
        rows.len()
    );
    let plain = &computed[&("id_test".to_owned(), "energy_T1".to_owned())];
    assert_eq!(
        id_accuracy(&plain.predicted, id_labels.as_slice().unwrap()).unwrap(),
        stats["id_test_acc"].as_f64().unwrap()
    );
}
