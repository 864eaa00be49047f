//! OpenOOD v1.5's convention (`Jingkang50/OpenOOD`, `openood/evaluators/metrics.py`,
//! `auc_and_fpr_recall`): OOD is the positive class, scored by `-conf`.
//!
//! - FPR@95: `fpr[argmax(tpr >= 0.95)]` of `roc_curve(ood, -conf)`: at the first
//!   threshold (walking from the lowest ID-ness) that catches 95% of the OOD samples, the
//!   share of ID samples caught with them.
//! - AUROC: `auc(fpr, tpr)`, the same area as sklearn's.
//! - AUPR-In / AUPR-Out: `auc(recall, precision)` of `precision_recall_curve` (every
//!   distinct threshold, then the point `(recall 0, precision 1)`), ID positive with
//!   `conf` / OOD positive with `-conf`: trapezoids, not average precision.

use super::Metrics;
use super::sklearn::{auroc, curve, curve_negated};

/// Trapezoid area under the precision-recall points of a curve `(tp, fp)` (highest
/// score first), starting from `(recall 0, precision 1)`.
fn pr_trapezoid(points: &[(u64, u64)], n_pos: u64) -> f64 {
    let (mut r0, mut p0) = (0.0, 1.0);
    let mut area = 0.0;
    for &(tp, fp) in points {
        let r = tp as f64 / n_pos as f64;
        let p = if tp + fp == 0 {
            0.0
        } else {
            tp as f64 / (tp + fp) as f64
        };
        area += (r - r0) * (p + p0) / 2.0;
        (r0, p0) = (r, p);
    }
    area
}

/// All four metrics (both sets non-empty, ascending).
pub(super) fn metrics(id: &[f64], ood: &[f64]) -> Metrics {
    let (n_in, n_out) = (id.len() as u64, ood.len() as u64);
    let points = curve(id, ood);
    // OOD positive: (OOD caught, ID caught), lowest original score first.
    let out_points = curve_negated(ood, id);
    let fpr95 = out_points
        .iter()
        .find(|&&(tp, _)| tp as f64 / n_out as f64 >= 0.95)
        .map_or(1.0, |&(_, fp)| fp as f64 / n_in as f64);
    Metrics {
        fpr95,
        auroc: auroc(&points, n_in, n_out),
        aupr_in: pr_trapezoid(&points, n_in),
        aupr_out: pr_trapezoid(&out_points, n_out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_computed_case() {
        // ID 0.9, 0.8, 0.3; OOD 0.7, 0.2 (higher = more ID).
        let id = [0.3, 0.8, 0.9];
        let ood = [0.2, 0.7];
        let m = metrics(&id, &ood);
        // OOD-positive walk from the lowest: 0.2 (OOD), 0.3 (ID), 0.7 (OOD): 100% of OOD
        // caught after 1 of 3 ID.
        assert!((m.fpr95 - 1.0 / 3.0).abs() < 1e-15);
        // ID-positive points: (1,0) (2,0) (2,1) (3,1) (3,2): AUROC 5/6.
        assert!((m.auroc - 5.0 / 6.0).abs() < 1e-15);
        // PR-In: (0,1) -> (1/3,1) -> (2/3,1) -> (2/3,2/3) -> (1,3/4) -> (1,3/5).
        let want_in = 1.0 / 3.0 + 1.0 / 3.0 + (1.0 / 3.0) * (2.0 / 3.0 + 0.75) / 2.0;
        assert!((m.aupr_in - want_in).abs() < 1e-15, "{}", m.aupr_in);
        // PR-Out: (0,1) -> (1/2,1) -> (1/2,1/2) -> (1,2/3) -> ... recall stays 1.
        let want_out = 0.5 + 0.5 * (0.5 + 2.0 / 3.0) / 2.0;
        assert!((m.aupr_out - want_out).abs() < 1e-15, "{}", m.aupr_out);
    }
}
