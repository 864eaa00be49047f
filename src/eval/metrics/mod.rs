//! OOD detection metrics of one ID score set (positive class) against one OOD set, in
//! two conventions (`docs/methods.md`, "Exact metric conventions"), and ID accuracy.

mod dice;
mod openood;
mod sklearn;

use serde::Serialize;

use super::EvalError;

/// FPR95, AUROC, AUPR-In and AUPR-Out as fractions (not percent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// False positive rate (share of OOD accepted) where 95% of ID samples are accepted.
    pub fpr95: f64,
    /// Area under the ROC curve.
    pub auroc: f64,
    /// Area under the precision-recall curve, ID positive.
    pub aupr_in: f64,
    /// Area under the precision-recall curve, OOD positive (scores negated).
    pub aupr_out: f64,
}

impl Metrics {
    /// The plain mean of each metric over several OOD sets (`None` when empty).
    pub fn mean(all: &[Metrics]) -> Option<Metrics> {
        if all.is_empty() {
            return None;
        }
        let n = all.len() as f64;
        let sum = |f: fn(&Metrics) -> f64| all.iter().map(f).sum::<f64>() / n;
        Some(Metrics {
            fpr95: sum(|m| m.fpr95),
            auroc: sum(|m| m.auroc),
            aupr_in: sum(|m| m.aupr_in),
            aupr_out: sum(|m| m.aupr_out),
        })
    }
}

/// How the metrics are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum Convention {
    /// sklearn's `roc_auc_score` / `average_precision_score` and the `get_measures`
    /// FPR95 (HIMPLoS, Hendrycks et al.): the default.
    #[default]
    Sklearn,
    /// DICE's `cal_metric`: FPR at the ID 5% quantile, trapezoid AUROC / AUIN / AUOUT.
    Dice,
    /// OpenOOD v1.5 (`openood/evaluators/metrics.py`, `auc_and_fpr_recall`): OOD is the
    /// positive class, so FPR@95 is the share of *ID* samples flagged as OOD at the first
    /// threshold catching 95% of the OOD samples (the other conventions: the share of OOD
    /// accepted at 95% of ID accepted); AUROC as sklearn; AUPR-In / AUPR-Out are trapezoid
    /// areas under `precision_recall_curve` (`metrics.auc`), not average precision.
    Openood,
}

impl Convention {
    /// Every convention, in the order they are listed.
    pub const ALL: [Convention; 3] = [Convention::Sklearn, Convention::Dice, Convention::Openood];

    /// The command-line / JSON name (`sklearn`, `dice`, `openood`).
    pub fn as_str(self) -> &'static str {
        match self {
            Convention::Sklearn => "sklearn",
            Convention::Dice => "dice",
            Convention::Openood => "openood",
        }
    }
}

impl std::str::FromStr for Convention {
    type Err = EvalError;

    fn from_str(name: &str) -> Result<Self, EvalError> {
        Convention::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| EvalError::UnknownConvention {
                name: name.to_owned(),
                known: Convention::ALL.map(Convention::as_str).join(", "),
            })
    }
}

fn check_scores(what: &'static str, scores: &[f64]) -> Result<(), EvalError> {
    if scores.is_empty() {
        return Err(EvalError::Empty { what });
    }
    match scores.iter().position(|s| !s.is_finite()) {
        Some(index) => Err(EvalError::NonFinite {
            what,
            index,
            value: scores[index],
        }),
        None => Ok(()),
    }
}

/// Finite scores of one set in ascending order (`f64::total_cmp`), sorted once and
/// shared by every metric computed from them (an ID set's scores against each OOD set).
#[derive(Debug, Clone)]
pub struct SortedScores(Vec<f64>);

impl SortedScores {
    /// Sorts `scores`; an error names the first non-finite value, or an empty set.
    pub fn new(what: &'static str, scores: &[f64]) -> Result<Self, EvalError> {
        check_scores(what, scores)?;
        let mut v = scores.to_vec();
        v.sort_unstable_by(f64::total_cmp);
        Ok(SortedScores(v))
    }

    /// The scores, ascending.
    pub fn ascending(&self) -> &[f64] {
        &self.0
    }
}

/// The metrics of ID scores `id` against OOD scores `ood` (higher = more ID) in the
/// given convention. Both sets must be non-empty and finite.
pub fn metrics(id: &[f64], ood: &[f64], convention: Convention) -> Result<Metrics, EvalError> {
    let id = SortedScores::new("ID scores", id)?;
    let ood = SortedScores::new("OOD scores", ood)?;
    Ok(metrics_sorted(&id, &ood, convention))
}

/// [`metrics`] of scores sorted beforehand.
pub fn metrics_sorted(id: &SortedScores, ood: &SortedScores, convention: Convention) -> Metrics {
    match convention {
        Convention::Sklearn => sklearn::metrics(id.ascending(), ood.ascending()),
        Convention::Dice => dice::metrics(id.ascending(), ood.ascending()),
        Convention::Openood => openood::metrics(id.ascending(), ood.ascending()),
    }
}

/// The ROC curve of ID (positive) against OOD scores as `(fpr, tpr)` points from
/// `(0, 0)` to `(1, 1)`, one per distinct score (ties form one step, as sklearn's
/// `roc_curve` without dropping collinear points).
pub fn roc_curve(id: &[f64], ood: &[f64]) -> Result<Vec<(f64, f64)>, EvalError> {
    let id = SortedScores::new("ID scores", id)?;
    let ood = SortedScores::new("OOD scores", ood)?;
    Ok(sklearn::roc(id.ascending(), ood.ascending()))
}

/// Share of rows whose predicted class equals the label.
pub fn id_accuracy(predicted: &[usize], labels: &[i64]) -> Result<f64, EvalError> {
    if predicted.len() != labels.len() {
        return Err(EvalError::Shape {
            what: "predictions vs labels",
            expected: labels.len(),
            found: predicted.len(),
        });
    }
    if labels.is_empty() {
        return Err(EvalError::Empty { what: "ID labels" });
    }
    let correct = predicted
        .iter()
        .zip(labels)
        .filter(|&(&p, &l)| i64::try_from(p).is_ok_and(|p| p == l))
        .count();
    Ok(correct as f64 / labels.len() as f64)
}

/// Helpers of the convention modules' tests.
#[cfg(test)]
mod testing {
    use super::Metrics;

    /// `v` ascending, as the convention modules take their inputs.
    pub(super) fn asc(v: &[f64]) -> Vec<f64> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Asserts that `metrics` of every `(id, ood)` case equals the reference
    /// `[fpr95, auroc, aupr_in, aupr_out]` within 1e-15.
    pub(super) fn assert_matches_reference(
        cases: Vec<(Vec<f64>, Vec<f64>, [f64; 4])>,
        metrics: fn(&[f64], &[f64]) -> Metrics,
    ) {
        for (id, ood, want) in cases {
            let m = metrics(&asc(&id), &asc(&ood));
            let got = [m.fpr95, m.auroc, m.aupr_in, m.aupr_out];
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() < 1e-15,
                    "{id:?} vs {ood:?}: {got:?} != {want:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_input_checks() {
        assert_eq!(id_accuracy(&[0, 1, 2, 2], &[0, 1, 1, 2]).unwrap(), 0.75);
        assert!(id_accuracy(&[0], &[0, 1]).is_err());
        assert!(id_accuracy(&[], &[]).is_err());
        let e = metrics(&[1.0, f64::NAN], &[0.0], Convention::Sklearn).unwrap_err();
        assert_eq!(e.to_string(), "ID scores: non-finite value NaN at index 1");
        assert!(metrics(&[1.0], &[], Convention::Dice).is_err());
    }

    #[test]
    fn mean_over_sets() {
        let a = Metrics {
            fpr95: 0.1,
            auroc: 0.9,
            aupr_in: 0.8,
            aupr_out: 0.7,
        };
        let b = Metrics {
            fpr95: 0.3,
            auroc: 0.7,
            aupr_in: 0.6,
            aupr_out: 0.5,
        };
        let m = Metrics::mean(&[a, b]).unwrap();
        assert!((m.fpr95 - 0.2).abs() < 1e-15 && (m.aupr_out - 0.6).abs() < 1e-15);
        assert_eq!(Metrics::mean(&[]), None);
    }

    #[test]
    fn perfect_separation() {
        let id = [3.0, 4.0, 5.0];
        let ood = [0.0, 1.0];
        let m = metrics(&id, &ood, Convention::Sklearn).unwrap();
        assert_eq!(
            (m.fpr95, m.auroc, m.aupr_in, m.aupr_out),
            (0.0, 1.0, 1.0, 1.0)
        );
        // cal_metric's AUIN / AUOUT do not reach 1 on few samples (their end points).
        let m = metrics(&id, &ood, Convention::Dice).unwrap();
        assert_eq!((m.fpr95, m.auroc), (0.0, 1.0));
        assert!(m.aupr_in < 1.0 && m.aupr_out < 1.0);
    }
}
