//! DICE's `cal_metric` convention (`deeplearning-wisc/dice`, `util/metrics.py`):
//!
//! - FPR: share of OOD scores strictly above `sort(id)[round(0.05 * n_in)]` (round half
//!   to even).
//! - Curve: ID and OOD scores merged ascending; each step removes one sample from the
//!   accepted set (the OOD one when `s_out < s_in` strictly, else the ID one), from
//!   `(tp, fp) = (n_in, n_out)` down to `(0, 0)`; within a run of equal scores every
//!   point takes the value at the end of the run. `tpr = [1, tp / n_in, 0]`,
//!   `fpr = [1, fp / n_out, 0]`.
//! - AUROC: trapezoid area of `1 - fpr` over `tpr`. AUIN: trapezoid of the precision
//!   `tp / (tp + fp)` over `tpr` (`0.5` prepended, `0` appended, points with `tp + fp = 0`
//!   dropped). AUOUT: trapezoid of `(n_out - fp) / (n_in - tp + n_out - fp)` over
//!   `1 - fpr` (`0` prepended, `0.5` appended, zero denominators dropped).

use super::Metrics;

/// numpy's `trapezoid(y, x)`: `sum_i (x[i+1] - x[i]) * (y[i+1] + y[i]) / 2`.
fn trapezoid(y: &[f64], x: &[f64]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0)
        .sum()
}

/// `(tp, fp)` after removing `0..=n_in + n_out` samples in ascending order, with runs of
/// equal scores collapsed to their end.
fn curve(known: &[f64], novel: &[f64]) -> Vec<(u64, u64)> {
    let total = known.len() + novel.len();
    let mut points = Vec::with_capacity(total + 1);
    let mut removed = Vec::with_capacity(total);
    let (mut tp, mut fp) = (known.len() as u64, novel.len() as u64);
    let (mut k, mut n) = (0, 0);
    points.push((tp, fp));
    while k + n < total {
        let take_novel = k == known.len() || (n < novel.len() && novel[n] < known[k]);
        if take_novel {
            removed.push(novel[n]);
            n += 1;
            fp -= 1;
        } else {
            removed.push(known[k]);
            k += 1;
            tp -= 1;
        }
        points.push((tp, fp));
    }
    for j in (1..total).rev() {
        if removed[j] == removed[j - 1] {
            points[j] = points[j + 1];
        }
    }
    points
}

/// All four metrics the `cal_metric` way (both sets non-empty, ascending).
pub(super) fn metrics(known: &[f64], novel: &[f64]) -> Metrics {
    let (n_in, n_out) = (known.len() as f64, novel.len() as f64);
    let threshold = known[(0.05 * n_in).round_ties_even() as usize];
    let fpr95 = novel.iter().filter(|&&s| s > threshold).count() as f64 / n_out;

    let points = curve(known, novel);
    let tpr: Vec<f64> = with_ends(1.0, points.iter().map(|&(tp, _)| tp as f64 / n_in), 0.0);
    let fpr: Vec<f64> = with_ends(1.0, points.iter().map(|&(_, fp)| fp as f64 / n_out), 0.0);
    let one_minus_fpr: Vec<f64> = fpr.iter().map(|f| 1.0 - f).collect();
    let auroc = -trapezoid(&one_minus_fpr, &tpr);

    // `keep[i]` marks the points (of the arrays with both ends) whose denominator is > 0.
    let precision_in = |&(tp, fp): &(u64, u64)| (tp + fp > 0).then(|| tp as f64 / (tp + fp) as f64);
    let (n_tp, n_fp) = points[0];
    let precision_out = |&(tp, fp): &(u64, u64)| {
        let denom = (n_tp - tp) + (n_fp - fp);
        (denom > 0).then(|| (n_fp - fp) as f64 / denom as f64)
    };
    let (p_in, x_in) = kept_points(0.5, points.iter().map(precision_in), 0.0, &tpr);
    let aupr_in = -trapezoid(&p_in, &x_in);
    let (p_out, x_out) = kept_points(0.0, points.iter().map(precision_out), 0.5, &one_minus_fpr);
    let aupr_out = trapezoid(&p_out, &x_out);
    Metrics {
        fpr95,
        auroc,
        aupr_in,
        aupr_out,
    }
}

fn with_ends(first: f64, middle: impl Iterator<Item = f64>, last: f64) -> Vec<f64> {
    std::iter::once(first)
        .chain(middle)
        .chain(std::iter::once(last))
        .collect()
}

/// `(y, x)` for the curve `[first, middle..., last]` over `x`, dropping the middle points
/// that are `None` (zero denominator).
fn kept_points(
    first: f64,
    middle: impl Iterator<Item = Option<f64>>,
    last: f64,
    x: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let y = std::iter::once(Some(first))
        .chain(middle)
        .chain(std::iter::once(Some(last)));
    y.zip(x).filter_map(|(y, &x)| y.map(|y| (y, x))).unzip()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{asc, assert_matches_reference};
    use super::*;

    #[test]
    fn trapezoid_like_numpy() {
        assert_eq!(trapezoid(&[1.0, 2.0, 3.0], &[0.0, 1.0, 3.0]), 1.5 + 5.0);
        assert_eq!(trapezoid(&[1.0], &[0.0]), 0.0);
    }

    #[test]
    fn curve_collapses_runs_of_equal_scores() {
        // known 1 2 2 3 5, novel 0.5 2 2 4; merged 0.5(o) 1(i) 2(i) 2(i) 2(o) 2(o) 3(i) 4(o) 5(i).
        let known = [1.0, 2.0, 2.0, 3.0, 5.0];
        let novel = [0.5, 2.0, 2.0, 4.0];
        let c = curve(&known, &novel);
        assert_eq!(
            c,
            vec![
                (5, 4),
                (5, 3),
                (4, 3),
                (2, 1),
                (2, 1),
                (2, 1),
                (2, 1),
                (1, 1),
                (1, 0),
                (0, 0)
            ]
        );
    }

    #[test]
    fn hand_computed_small_case() {
        // id sorted 0.4 0.6 0.8 0.9: threshold = sort(id)[round(0.2)] = 0.4; OOD above: 2 of 3.
        let m = metrics(&asc(&[0.9, 0.8, 0.6, 0.4]), &asc(&[0.7, 0.5, 0.3]));
        assert_eq!(m.fpr95, 2.0 / 3.0);
        assert!((m.auroc - 0.75).abs() < 1e-15);
    }

    /// `(id, ood, [fpr, auroc, auin, auout])` from DICE's `cal_metric` (numpy 2.4.6,
    /// `np.trapz` = `np.trapezoid`).
    fn cal_metric_cases() -> Vec<(Vec<f64>, Vec<f64>, [f64; 4])> {
        vec![
            (
                vec![0.9, 0.8, 0.6, 0.4],
                vec![0.7, 0.5, 0.3],
                [
                    0.6666666666666666,
                    0.7500000000000001,
                    0.7104166666666666,
                    0.5444444444444445,
                ],
            ),
            (
                vec![1.0, 0.5],
                vec![0.5, 0.0],
                [0.0, 0.875, 0.6666666666666666, 0.6666666666666666],
            ),
            (
                (1..=20).map(f64::from).collect(),
                vec![1.5, 2.5, 10.5, 30.0],
                [0.75, 0.5875, 0.8096642832347503, 0.25348383500557414],
            ),
            (
                vec![3.0, 4.0, 5.0],
                vec![0.0, 1.0],
                [0.0, 1.0, 0.8333333333333334, 0.75],
            ),
            (
                vec![1.0, 2.0, 2.0, 3.0, 5.0],
                vec![2.0, 2.0, 4.0, 0.5],
                [
                    0.75,
                    0.6000000000000001,
                    0.5839285714285714,
                    0.4910714285714286,
                ],
            ),
            (
                vec![0.1, 0.1, 0.7, 0.3, 0.3, 0.9],
                vec![0.1, 0.3, 0.35, 0.05],
                [
                    0.5,
                    0.6666666666666666,
                    0.6944444444444444,
                    0.5446428571428572,
                ],
            ),
        ]
    }

    #[test]
    fn matches_cal_metric_including_ties() {
        assert_matches_reference(cal_metric_cases(), metrics);
    }
}
