//! numpy's default `np.percentile(a, q)` (method `"linear"`, scalar `q`) reproduced bit
//! for bit, for `f64` and for `f32` data.
//!
//! For sorted values `x[0] <= ... <= x[n-1]`: `v = (n - 1) * (q / 100)` (in `f64`),
//! `i = floor(v)`, `g = v - i`; the result is `x[n-1]` when `v >= n - 1`, else the
//! interpolation between `a = x[i]` and `b = x[i+1]`, evaluated in the data's own type
//! as numpy does: `d = b - a`, then `a + d * g` when `g < 0.5`, `b - d * (1 - g)`
//! otherwise, where for `f32` data the weight (`g` or `1 - g`) is first rounded to
//! `f32` (numpy's weak promotion of the Python-float weight). Any NaN gives NaN.

use std::cmp::Ordering;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A float type whose values numpy interpolates in that type (`f32`, `f64`).
pub trait PercentileFloat: Copy + PartialOrd + sealed::Sealed {
    /// True for NaN.
    fn is_nan_value(self) -> bool;
    /// numpy's `_lerp(a, b, g)` with a Python-float weight `g`, in `Self` arithmetic.
    fn numpy_lerp(a: Self, b: Self, g: f64) -> Self;
    /// A quiet NaN.
    fn nan() -> Self;
}

impl PercentileFloat for f64 {
    fn is_nan_value(self) -> bool {
        self.is_nan()
    }
    fn numpy_lerp(a: f64, b: f64, g: f64) -> f64 {
        let d = b - a;
        if g >= 0.5 {
            b - d * (1.0 - g)
        } else {
            a + d * g
        }
    }
    fn nan() -> f64 {
        f64::NAN
    }
}

impl PercentileFloat for f32 {
    fn is_nan_value(self) -> bool {
        self.is_nan()
    }
    fn numpy_lerp(a: f32, b: f32, g: f64) -> f32 {
        let d = b - a;
        if g >= 0.5 {
            b - d * ((1.0 - g) as f32)
        } else {
            a + d * (g as f32)
        }
    }
    fn nan() -> f32 {
        f32::NAN
    }
}

/// Virtual index split into `(i, g)`; `i + 1` may be past the end when `v >= n - 1`.
fn virtual_index(n: usize, q: f64) -> (usize, f64, bool) {
    assert!(
        (0.0..=100.0).contains(&q),
        "percentile q = {q} outside [0, 100]"
    );
    let v = (n - 1) as f64 * (q / 100.0);
    let i = v.floor();
    let at_end = v >= (n - 1) as f64;
    (i as usize, v - i, at_end)
}

fn ascending<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    a.partial_cmp(b).unwrap_or(Ordering::Equal)
}

/// `np.percentile(data, q)` (linear), reordering `data` in place (O(n) selection).
/// `None` when `data` is empty; NaN when it holds a NaN.
///
/// # Panics
/// When `q` is outside `[0, 100]` (checked parameters never are).
pub fn percentile<T: PercentileFloat>(data: &mut [T], q: f64) -> Option<T> {
    if data.is_empty() {
        return None;
    }
    let (i, g, at_end) = virtual_index(data.len(), q);
    if data.iter().any(|x| x.is_nan_value()) {
        return Some(T::nan());
    }
    if at_end {
        let last = data
            .iter()
            .copied()
            .reduce(|m, x| if x > m { x } else { m });
        return last;
    }
    let (_, &mut a, above) = data.select_nth_unstable_by(i, ascending);
    let b = above
        .iter()
        .copied()
        .reduce(|m, x| if x < m { x } else { m })
        .expect("v < n - 1 leaves a value above index i");
    Some(T::numpy_lerp(a, b, g))
}

/// `np.percentile` (linear) of values already sorted ascending (no NaN); cheap for many
/// `q` over the same values. `None` when `sorted` is empty.
///
/// # Panics
/// When `q` is outside `[0, 100]`.
pub fn percentile_sorted<T: PercentileFloat>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "values not sorted");
    let (i, g, at_end) = virtual_index(sorted.len(), q);
    if at_end {
        return sorted.last().copied();
    }
    Some(T::numpy_lerp(sorted[i], sorted[i + 1], g))
}

/// Sorts `data` ascending for [`percentile_sorted`]. `false` (and `data` untouched) when
/// it holds a NaN, whose percentiles are all NaN.
pub fn sort_for_percentiles<T: PercentileFloat>(data: &mut [T]) -> bool {
    if data.iter().any(|x| x.is_nan_value()) {
        return false;
    }
    data.sort_unstable_by(ascending);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from numpy 2.4.6: `np.percentile(np.array(DATA, dtype), q)` with a
    /// Python-number `q`.
    const DATA: [f64; 7] = [0.3, -1.25, 7.0, 0.1, 2.5, 0.3, 11.0];

    #[test]
    fn linear_interpolation_f64_matches_numpy() {
        let cases = [
            (0.0, -1.25),
            (10.0, -0.43999999999999995),
            (25.0, 0.2),
            (50.0, 0.3),
            (62.5, 1.95),
            (90.0, 8.600000000000001),
            (100.0, 11.0),
        ];
        for (q, want) in cases {
            let mut d = DATA.to_vec();
            assert_eq!(percentile(&mut d, q), Some(want), "q = {q}");
            let mut s = DATA.to_vec();
            assert!(sort_for_percentiles(&mut s));
            assert_eq!(percentile_sorted(&s, q), Some(want), "sorted, q = {q}");
        }
    }

    #[test]
    fn float32_interpolates_in_float32_like_numpy() {
        // Cases where numpy's float32 result differs from the float64 interpolation
        // rounded to float32 (found by search with numpy 2.4.6); both branches of the
        // lerp (g >= 0.5 and g < 0.5).
        let cases: [([f32; 5], f64, f32, f32); 3] = [
            (
                [
                    0.073_190_07,
                    0.257_803_1,
                    0.763_128_5,
                    0.697_893_56,
                    0.128_673_21,
                ],
                37.6,
                0.193_754_67,
                0.193_754_69,
            ),
            (
                [
                    0.446_812_96,
                    0.371_854_57,
                    0.477_074,
                    0.127_620_68,
                    0.222_506_87,
                ],
                38.8,
                0.304_946_78,
                0.304_946_8,
            ),
            (
                [5.217_626, 21.139_845, 13.782_278, 98.374_99, 0.274_714_77],
                36.6,
                9.191_624,
                9.191_625,
            ),
        ];
        for (data, q, numpy_f32, via_f64) in cases {
            let mut d = data.to_vec();
            let got = percentile(&mut d, q).unwrap();
            assert_eq!(
                got.to_bits(),
                numpy_f32.to_bits(),
                "q = {q}: {got} vs {numpy_f32}"
            );
            let mut d64: Vec<f64> = data.iter().map(|&x| f64::from(x)).collect();
            let wide = percentile(&mut d64, q).unwrap() as f32;
            assert_eq!(wide.to_bits(), via_f64.to_bits(), "q = {q}");
            assert_ne!(got, wide);
        }
    }

    #[test]
    fn edge_cases() {
        assert_eq!(percentile::<f64>(&mut [], 50.0), None);
        assert_eq!(percentile(&mut [4.0f64], 0.0), Some(4.0));
        assert_eq!(percentile(&mut [4.0f64], 100.0), Some(4.0));
        assert!(
            percentile(&mut [1.0, f64::NAN, 2.0], 50.0)
                .unwrap()
                .is_nan()
        );
        let mut with_nan = [1.0f32, f32::NAN];
        assert!(!sort_for_percentiles(&mut with_nan));
        // Ties: the interpolation between equal neighbours is that value.
        assert_eq!(percentile(&mut [1.0, 2.0, 2.0, 2.0, 3.0], 40.0), Some(2.0));
    }

    #[test]
    fn selection_agrees_with_sorting_on_many_quantiles() {
        let mut x: Vec<f64> = (0..1001)
            .map(|i| ((i * 7919) % 1013) as f64 * 0.37 - 50.0)
            .collect();
        let mut sorted = x.clone();
        assert!(sort_for_percentiles(&mut sorted));
        for k in 0..=200 {
            let q = k as f64 * 0.5;
            let a = percentile(&mut x, q).unwrap();
            let b = percentile_sorted(&sorted, q).unwrap();
            assert_eq!(a.to_bits(), b.to_bits(), "q = {q}");
        }
    }
}
