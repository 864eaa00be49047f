//! `posthoc eval --plots DIR`: per configuration and OOD set the score histogram and the
//! ROC curve; per sweep (a parameter that varies while the others stay fixed) the
//! average metrics against that parameter.

use std::path::Path;

use anyhow::Context;
use posthoc::eval::engine::Evaluation;
use posthoc::eval::roc_curve;
use posthoc::plots;
use posthoc::report::{AVERAGE, EvalRow, PARAM_KEYS};
use serde_json::{Map, Value};
use tracing::info;

/// A file-name-safe label: `dice p=90 clip=1` -> `dice_p90_clip1`.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        match ch {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => out.push(ch),
            ' ' => out.push('_'),
            _ => {}
        }
    }
    out
}

/// Writes every picture of an evaluate run under `dir`.
pub fn write_all(
    dir: &Path,
    results: &[Evaluation],
    rows: &[EvalRow],
    ood_names: &[String],
) -> anyhow::Result<()> {
    let mut written = 0usize;
    let averages: Vec<&EvalRow> = rows.iter().filter(|r| r.ood_set == AVERAGE).collect();
    for (r, avg) in results.iter().zip(&averages) {
        let label = avg.config_label();
        let sub = dir.join(slug(&label));
        for ((name, ood), m) in ood_names.iter().zip(&r.ood).zip(&r.metrics) {
            let title = format!("{label}: ID vs {name}");
            plots::score_histogram(
                &sub.join(format!("{name}-hist")),
                &title,
                name,
                &r.id.scores,
                &ood.scores,
            )?;
            let roc = roc_curve(&r.id.scores, &ood.scores)?;
            plots::roc_curve(&sub.join(format!("{name}-roc")), &title, &roc, m.auroc)?;
            written += 4;
        }
    }
    for (method, key, fixed, points) in sweeps(&averages) {
        let xs: Vec<f64> = points.iter().map(|(x, _)| *x).collect();
        let metric = |f: fn(&EvalRow) -> f64| points.iter().map(|(_, r)| 100.0 * f(r)).collect();
        let series = vec![
            ("FPR95".to_owned(), metric(|r| r.fpr95)),
            ("AUROC".to_owned(), metric(|r| r.auroc)),
            ("AUPR-In".to_owned(), metric(|r| r.aupr_in)),
            ("AUPR-Out".to_owned(), metric(|r| r.aupr_out)),
        ];
        let fixed_label = posthoc::report::params_label(&fixed);
        let title = format!("{method}: metrics vs {key} {fixed_label}");
        let name = slug(&format!("{method} {key} {fixed_label}"));
        let stem = dir.join(format!("sweep-{}", name.trim_end_matches('_')));
        plots::sweep_curve(&stem, title.trim(), key, &xs, &series)
            .with_context(|| format!("sweep plot {}", stem.display()))?;
        written += 2;
    }
    info!(files = written, dir = %dir.display(), "plots written");
    Ok(())
}

/// One sweep curve: method, the varying key, the fixed parameters, and (x, row) points.
type SweepCurve<'a> = (
    String,
    &'static str,
    Map<String, Value>,
    Vec<(f64, &'a EvalRow)>,
);

/// Finds every sweep in the average rows: for each method and parameter key, groups of
/// two or more configurations that differ only in that key.
fn sweeps<'a>(averages: &[&'a EvalRow]) -> Vec<SweepCurve<'a>> {
    let mut out: Vec<SweepCurve<'a>> = Vec::new();
    for key in PARAM_KEYS {
        if key == "clip_percentile" {
            continue;
        }
        for row in averages {
            let Some(x) = row.params.get(key).and_then(Value::as_f64) else {
                continue;
            };
            let mut fixed = row.params.clone();
            fixed.remove(key);
            if key == "clip" {
                fixed.remove("clip_percentile");
            }
            match out
                .iter_mut()
                .find(|(m, k, f, _)| *m == row.method && *k == key && *f == fixed)
            {
                Some((_, _, _, points)) => points.push((x, row)),
                None => out.push((row.method.clone(), key, fixed, vec![(x, row)])),
            }
        }
    }
    out.retain(|(_, _, _, points)| points.len() >= 2);
    for (_, _, _, points) in &mut out {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}
