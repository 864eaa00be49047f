//! Reports of an evaluate run: the papers' tables on stdout, long-format JSON and CSV.
//!
//! Every row is one (method, params, OOD set) with metrics as fractions; the plain
//! mean over the OOD sets of a configuration is a row with `ood_set = "average"`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

/// Parameter keys in the order they are printed and written as CSV columns.
pub const PARAM_KEYS: [&str; 6] = ["p", "clip", "clip_percentile", "temperature", "p_a", "p_w"];

/// The zoo's parameter keys: printed after [`PARAM_KEYS`], and CSV columns only when a
/// row has them (so a run of the seed methods keeps its columns).
pub const ZOO_PARAM_KEYS: [&str; 7] = [
    "gamma",
    "top_m",
    "k",
    "dim",
    "bank_fraction",
    "score",
    "variant",
];

/// The `ood_set` name of the average row of a configuration.
pub const AVERAGE: &str = "average";

/// One long-format result row (metrics as fractions in `[0, 1]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    /// Method name (`dice`, `react`, ...).
    pub method: String,
    /// Parameters of the configuration (`p`, `clip`, `clip_percentile`, `temperature`, `p_a`, `p_w`).
    pub params: Map<String, Value>,
    /// ID test set name.
    pub id_set: String,
    /// OOD set name, or `average`.
    pub ood_set: String,
    /// ID samples scored.
    pub n_id: usize,
    /// OOD samples scored (for the average row: the sum over sets).
    pub n_ood: usize,
    /// False-positive rate at 95% true-positive rate.
    pub fpr95: f64,
    /// Area under the ROC curve.
    pub auroc: f64,
    /// Average precision with ID as the positive class.
    pub aupr_in: f64,
    /// Average precision with OOD as the positive class.
    pub aupr_out: f64,
    /// Accuracy on the ID test set of the logits this configuration uses.
    pub id_accuracy: f64,
    /// Metric convention (`sklearn`, `dice` or `openood`).
    pub convention: String,
    /// With `--select`: whether this is its method's setting selected on the validation
    /// split (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected: Option<bool>,
}

impl EvalRow {
    /// The mean of `rows` (one configuration's per-set rows) as its `average` row.
    pub fn average(rows: &[EvalRow]) -> Option<EvalRow> {
        let first = rows.first()?;
        let n = rows.len() as f64;
        let mean = |f: fn(&EvalRow) -> f64| rows.iter().map(f).sum::<f64>() / n;
        Some(EvalRow {
            ood_set: AVERAGE.to_owned(),
            n_ood: rows.iter().map(|r| r.n_ood).sum(),
            fpr95: mean(|r| r.fpr95),
            auroc: mean(|r| r.auroc),
            aupr_in: mean(|r| r.aupr_in),
            aupr_out: mean(|r| r.aupr_out),
            ..first.clone()
        })
    }

    /// The mean of the rows of `rows` whose OOD set is in `members`, as a row named
    /// `name` (an OOD set group's average; `None` when no row is in the group).
    pub fn group_average(rows: &[EvalRow], name: &str, members: &[String]) -> Option<EvalRow> {
        let picked: Vec<EvalRow> = rows
            .iter()
            .filter(|r| members.contains(&r.ood_set))
            .cloned()
            .collect();
        Self::average(&picked).map(|r| EvalRow {
            ood_set: name.to_owned(),
            ..r
        })
    }

    /// The configuration's label, e.g. `dice p=90 clip=1 (p90)`.
    pub fn config_label(&self) -> String {
        let mut label = self.method.clone();
        let params = params_label(&self.params);
        if !params.is_empty() {
            label.push(' ');
            label.push_str(&params);
        }
        label
    }
}

/// `p=90 clip=0.4015 (p90) T=1` from a params object.
pub fn params_label(params: &Map<String, Value>) -> String {
    let mut parts = Vec::new();
    for key in PARAM_KEYS.into_iter().chain(ZOO_PARAM_KEYS) {
        let Some(v) = params.get(key) else { continue };
        match key {
            "clip_percentile" => continue,
            "clip" => {
                let mut s = format!("clip={}", value_text(v));
                if let Some(q) = params.get("clip_percentile") {
                    s.push_str(&format!(" (p{})", value_text(q)));
                }
                parts.push(s);
            }
            "temperature" => parts.push(format!("T={}", value_text(v))),
            _ => parts.push(format!("{key}={}", value_text(v))),
        }
    }
    parts.join(" ")
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            Some(f) => format!("{}", round_sig(f, 6)),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn round_sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Writes the papers' table, one block per configuration: rows = OOD sets + average,
/// columns FPR95 / AUROC / AUPR-In / AUPR-Out in percent with 2 decimals. Rows of one
/// configuration must be contiguous, average last (as [`crate`]'s engine emits them).
pub fn write_tables(out: &mut impl Write, rows: &[EvalRow]) -> std::io::Result<()> {
    let set_width = rows
        .iter()
        .map(|r| r.ood_set.len())
        .max()
        .unwrap_or(0)
        .max(8);
    for block in rows.chunk_by(|a, b| a.method == b.method && a.params == b.params) {
        let head = &block[0];
        writeln!(
            out,
            "== {}  [ID {}: n={}, accuracy {:.2}%; {} metrics]",
            head.config_label(),
            head.id_set,
            head.n_id,
            100.0 * head.id_accuracy,
            head.convention
        )?;
        writeln!(
            out,
            "{:<set_width$}  {:>7}  {:>7}  {:>8}  {:>8}",
            "OOD set", "FPR95", "AUROC", "AUPR-In", "AUPR-Out"
        )?;
        for r in block {
            let name = if r.ood_set == AVERAGE {
                "Average"
            } else {
                &r.ood_set
            };
            writeln!(
                out,
                "{:<set_width$}  {:>7.2}  {:>7.2}  {:>8.2}  {:>8.2}",
                name,
                100.0 * r.fpr95,
                100.0 * r.auroc,
                100.0 * r.aupr_in,
                100.0 * r.aupr_out
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Writes a one-line-per-configuration summary of the average rows (useful for sweeps).
pub fn write_summary(out: &mut impl Write, rows: &[EvalRow]) -> std::io::Result<()> {
    let averages: Vec<&EvalRow> = rows.iter().filter(|r| r.ood_set == AVERAGE).collect();
    if averages.len() < 2 {
        return Ok(());
    }
    let width = averages
        .iter()
        .map(|r| r.config_label().len())
        .max()
        .unwrap_or(0)
        .max(13);
    writeln!(out, "== summary: average over OOD sets")?;
    writeln!(
        out,
        "{:<width$}  {:>7}  {:>7}  {:>8}  {:>8}  {:>7}",
        "configuration", "FPR95", "AUROC", "AUPR-In", "AUPR-Out", "ID acc"
    )?;
    for r in averages {
        writeln!(
            out,
            "{:<width$}  {:>7.2}  {:>7.2}  {:>8.2}  {:>8.2}  {:>7.2}",
            r.config_label(),
            100.0 * r.fpr95,
            100.0 * r.auroc,
            100.0 * r.aupr_in,
            100.0 * r.aupr_out,
            100.0 * r.id_accuracy
        )?;
    }
    writeln!(out)
}

/// Writes `rows` as a JSON array of row objects (atomically: temp file + rename).
pub fn write_json(path: &Path, rows: &[EvalRow]) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(rows).map_err(std::io::Error::other)?;
    write_atomic(path, text.as_bytes())
}

/// Writes `rows` as CSV with one column per parameter key (empty where a method has no
/// such parameter), atomically.
pub fn write_csv(path: &Path, rows: &[EvalRow]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut keys: Vec<&str> = PARAM_KEYS.to_vec();
    keys.extend(
        ZOO_PARAM_KEYS
            .into_iter()
            .filter(|k| rows.iter().any(|r| r.params.contains_key(*k))),
    );
    let mut header = vec!["method"];
    header.extend(&keys);
    header.extend([
        "id_set",
        "ood_set",
        "n_id",
        "n_ood",
        "fpr95",
        "auroc",
        "aupr_in",
        "aupr_out",
        "id_accuracy",
        "convention",
    ]);
    let with_selected = rows.iter().any(|r| r.selected.is_some());
    if with_selected {
        header.push("selected");
    }
    w.write_record(&header).map_err(std::io::Error::other)?;
    for r in rows {
        let mut rec = vec![r.method.clone()];
        rec.extend(keys.iter().map(|k| match r.params.get(*k) {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }));
        rec.extend([
            r.id_set.clone(),
            r.ood_set.clone(),
            r.n_id.to_string(),
            r.n_ood.to_string(),
            format!("{:?}", r.fpr95),
            format!("{:?}", r.auroc),
            format!("{:?}", r.aupr_in),
            format!("{:?}", r.aupr_out),
            format!("{:?}", r.id_accuracy),
            r.convention.clone(),
        ]);
        if with_selected {
            rec.push(r.selected.map_or(String::new(), |s| s.to_string()));
        }
        w.write_record(&rec).map_err(std::io::Error::other)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename,
/// so a reader never sees a half-written report.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(set: &str, fpr: f64) -> EvalRow {
        EvalRow {
            method: "dice".into(),
            params: json!({"p": 90}).as_object().unwrap().clone(),
            id_set: "id_test".into(),
            ood_set: set.into(),
            n_id: 100,
            n_ood: 50,
            fpr95: fpr,
            auroc: 0.9,
            aupr_in: 0.8,
            aupr_out: 0.7,
            id_accuracy: 0.94,
            convention: "sklearn".into(),
            selected: None,
        }
    }

    #[test]
    fn average_is_the_plain_mean_and_sums_counts() {
        let avg = EvalRow::average(&[row("a", 0.2), row("b", 0.4)]).unwrap();
        assert_eq!(avg.ood_set, AVERAGE);
        assert!((avg.fpr95 - 0.3).abs() < 1e-15);
        assert_eq!(avg.n_ood, 100);
    }

    #[test]
    fn table_prints_percent_with_two_decimals() {
        let rows = vec![
            row("isun", 0.2175),
            EvalRow::average(&[row("isun", 0.2175)]).unwrap(),
        ];
        let mut out = Vec::new();
        write_tables(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("== dice p=90"), "{text}");
        assert!(
            text.contains("isun        21.75    90.00     80.00     70.00"),
            "{text}"
        );
        assert!(text.contains("Average"), "{text}");
    }

    #[test]
    fn csv_has_one_column_per_param_and_json_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![row("isun", 0.25)];
        write_csv(&dir.path().join("r.csv"), &rows).unwrap();
        let text = std::fs::read_to_string(dir.path().join("r.csv")).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "method,p,clip,clip_percentile,temperature,p_a,p_w,id_set,ood_set,n_id,n_ood,fpr95,auroc,aupr_in,aupr_out,id_accuracy,convention"
        );
        assert_eq!(
            lines.next().unwrap(),
            "dice,90,,,,,,id_test,isun,100,50,0.25,0.9,0.8,0.7,0.94,sklearn"
        );
        write_json(&dir.path().join("r.json"), &rows).unwrap();
        let back: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap())
                .unwrap();
        assert_eq!(back[0]["params"]["p"], 90);
        assert_eq!(back[0]["fpr95"], 0.25);
    }

    #[test]
    fn params_label_names_percentile_clips() {
        let p = json!({"clip": 0.4014686346054077, "clip_percentile": 90})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(params_label(&p), "clip=0.401469 (p90)");
    }
}
