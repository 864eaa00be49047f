//! The sklearn / `get_measures` convention. All samples sorted by decreasing score; at
//! each distinct score `v` (taking every sample with score `>= v`, so tied samples form
//! one step) the cumulative ID count `tp` and OOD count `fp`:
//!
//! - FPR95: over the thresholds from the first one reaching full recall back to the
//!   highest score, the first with the smallest `|tp / n_in - 0.95|`; `fp / n_out` there.
//! - AUROC: trapezoid area under `(fp / n_out, tp / n_in)` from `(0, 0)`
//!   (`roc_auc_score`; computed exactly in integers, then divided once).
//! - AUPR: `sum_k (recall_k - recall_{k-1}) * precision_k` (`average_precision_score`),
//!   ID positive for AUPR-In; OOD positive with negated scores for AUPR-Out.

use super::Metrics;

/// Cumulative `(tp, fp)` at each distinct score, walking both sets (sorted in walking
/// order) together: `first(a, b)` says whether score `a` comes before `b`. All samples
/// equal to the next score are taken in one step.
fn steps(
    pos: impl Iterator<Item = f64>,
    neg: impl Iterator<Item = f64>,
    first: impl Fn(f64, f64) -> bool,
) -> Vec<(u64, u64)> {
    let (mut pos, mut neg) = (pos.peekable(), neg.peekable());
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    loop {
        let v = match (pos.peek(), neg.peek()) {
            (Some(&p), Some(&n)) => {
                if first(n, p) {
                    n
                } else {
                    p
                }
            }
            (Some(&p), None) => p,
            (None, Some(&n)) => n,
            (None, None) => break,
        };
        while pos.next_if(|&p| p == v).is_some() {
            tp += 1;
        }
        while neg.next_if(|&n| n == v).is_some() {
            fp += 1;
        }
        points.push((tp, fp));
    }
    points
}

/// Cumulative `(tp, fp)` at each distinct score, highest score first (`pos`, `neg`
/// ascending).
pub(super) fn curve(pos: &[f64], neg: &[f64]) -> Vec<(u64, u64)> {
    steps(
        pos.iter().rev().copied(),
        neg.iter().rev().copied(),
        |a, b| a > b,
    )
}

/// [`curve`] of the negated scores with `pos` and `neg` swapped (OOD positive), lowest
/// original score first.
pub(super) fn curve_negated(pos: &[f64], neg: &[f64]) -> Vec<(u64, u64)> {
    steps(pos.iter().copied(), neg.iter().copied(), |a, b| a < b)
}

/// ROC points `(fpr, tpr)` from `(0, 0)` to `(1, 1)`, one per distinct score (`id`,
/// `ood` ascending).
pub(super) fn roc(id: &[f64], ood: &[f64]) -> Vec<(f64, f64)> {
    let (n_pos, n_neg) = (id.len() as f64, ood.len() as f64);
    std::iter::once((0.0, 0.0))
        .chain(
            curve(id, ood)
                .into_iter()
                .map(|(tp, fp)| (fp as f64 / n_neg, tp as f64 / n_pos)),
        )
        .collect()
}

/// FPR at the recall closest to 95%.
fn fpr95(points: &[(u64, u64)], n_pos: u64, n_neg: u64) -> f64 {
    let full = points
        .iter()
        .position(|&(tp, _)| tp == n_pos)
        .expect("the last point has every positive");
    let distance = |tp: u64| (tp as f64 / n_pos as f64 - 0.95).abs();
    let mut best = full;
    for k in (0..full).rev() {
        if distance(points[k].0) < distance(points[best].0) {
            best = k;
        }
    }
    points[best].1 as f64 / n_neg as f64
}

/// Trapezoid area under the ROC curve.
pub(super) fn auroc(points: &[(u64, u64)], n_pos: u64, n_neg: u64) -> f64 {
    let mut twice_area: u128 = 0;
    let (mut tp0, mut fp0) = (0u64, 0u64);
    for &(tp, fp) in points {
        twice_area += u128::from(fp - fp0) * u128::from(tp + tp0);
        (tp0, fp0) = (tp, fp);
    }
    twice_area as f64 / (2.0 * n_pos as f64 * n_neg as f64)
}

/// Average precision.
fn average_precision(points: &[(u64, u64)], n_pos: u64) -> f64 {
    let mut ap = 0.0;
    let mut tp0 = 0u64;
    for &(tp, fp) in points {
        if tp > tp0 {
            let recall_step = (tp - tp0) as f64 / n_pos as f64;
            ap += recall_step * (tp as f64 / (tp + fp) as f64);
        }
        tp0 = tp;
    }
    ap
}

/// All four metrics, ID positive (both sets non-empty, ascending).
pub(super) fn metrics(id: &[f64], ood: &[f64]) -> Metrics {
    let (n_in, n_out) = (id.len() as u64, ood.len() as u64);
    let points = curve(id, ood);
    let out_points = curve_negated(ood, id);
    Metrics {
        fpr95: fpr95(&points, n_in, n_out),
        auroc: auroc(&points, n_in, n_out),
        aupr_in: average_precision(&points, n_in),
        aupr_out: average_precision(&out_points, n_out),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{asc, assert_matches_reference};
    use super::*;

    #[test]
    fn hand_computed_case_without_ties() {
        let id = [0.9, 0.8, 0.6, 0.4];
        let ood = [0.7, 0.5, 0.3];
        // Descending: i i o i o i o -> points (1,0) (2,0) (2,1) (3,1) (3,2) (4,2) (4,3).
        assert_eq!(
            curve(&asc(&id), &asc(&ood)),
            vec![(1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (4, 2), (4, 3)]
        );
        let m = metrics(&asc(&id), &asc(&ood));
        // Full recall is first reached at (4, 2); recall 3/4 is farther from 0.95.
        assert_eq!(m.fpr95, 2.0 / 3.0);
        // Pairs with id > ood: 3 + 3 + 2 + 1 = 9 of 12.
        assert_eq!(m.auroc, 0.75);
        // Recall steps of 1/4 at precisions 1, 1, 3/4, 4/6.
        assert!((m.aupr_in - (1.0 + 1.0 + 0.75 + 4.0 / 6.0) / 4.0).abs() < 1e-15);
        // OOD positive on negated scores: o i o i o i i -> precisions 1, 2/3, 3/5.
        assert!((m.aupr_out - (1.0 + 2.0 / 3.0 + 0.6) / 3.0).abs() < 1e-15);
    }

    #[test]
    fn ties_form_one_step() {
        let id = [1.0, 0.5];
        let ood = [0.5, 0.0];
        assert_eq!(curve(&asc(&id), &asc(&ood)), vec![(1, 0), (2, 1), (2, 2)]);
        let m = metrics(&asc(&id), &asc(&ood));
        // The tied pair counts one half.
        assert_eq!(m.auroc, 0.875);
        assert!((m.aupr_in - (0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-15);
        assert_eq!(m.fpr95, 0.5);
    }

    /// `(id, ood, [fpr95, auroc, aupr_in, aupr_out])` from scikit-learn 1.9.1
    /// (`roc_auc_score`, `average_precision_score`) and `get_measures`' FPR.
    fn sklearn_cases() -> Vec<(Vec<f64>, Vec<f64>, [f64; 4])> {
        vec![
            (
                (1..=20).map(f64::from).collect(),
                vec![1.5, 2.5, 10.5, 30.0],
                [1.0, 0.5875, 0.8344017197113172, 0.34935897435897434],
            ),
            (
                (1..=10).map(f64::from).collect(),
                vec![0.5, 1.5, 5.5],
                [
                    0.6666666666666666,
                    0.8,
                    0.9354365079365078,
                    0.6805555555555556,
                ],
            ),
            (
                vec![1.0, 2.0, 2.0, 3.0, 5.0],
                vec![2.0, 2.0, 4.0, 0.5],
                [0.75, 0.6, 0.6869047619047619, 0.625],
            ),
            (
                vec![0.1, 0.1, 0.7, 0.3, 0.3, 0.9],
                vec![0.1, 0.3, 0.35, 0.05],
                [
                    0.75,
                    0.6666666666666666,
                    0.7777777777777777,
                    0.6071428571428572,
                ],
            ),
        ]
    }

    #[test]
    fn matches_sklearn_including_ties() {
        assert_matches_reference(sklearn_cases(), metrics);
    }

    #[test]
    fn negated_walk_equals_the_curve_of_negated_scores() {
        // Many ties, signed zeros included.
        let id: Vec<f64> = (0..200)
            .map(|i| f64::from((i * 7) % 13) - 6.0)
            .chain([0.0, -0.0])
            .collect();
        let ood: Vec<f64> = (0..150)
            .map(|i| f64::from((i * 5) % 11) - 4.0)
            .chain([-0.0])
            .collect();
        let neg = |v: &[f64]| asc(&v.iter().map(|s| -s).collect::<Vec<_>>());
        assert_eq!(
            curve_negated(&asc(&ood), &asc(&id)),
            curve(&neg(&ood), &neg(&id))
        );
    }
}
