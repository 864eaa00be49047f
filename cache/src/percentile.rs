//! Exact numpy percentiles (`np.percentile`, default "linear" method), on float32 and
//! float64 data, and an exact streaming selection of order statistics.
//!
//! numpy computes the virtual index `v = (n - 1) * (q / 100)` in f64, takes
//! `a = x[floor(v)]`, `b = x[floor(v) + 1]` of the sorted data (both the maximum when
//! `v >= n - 1`) and `g = v - floor(v)`, then interpolates
//! `a + (b - a) * g`, or `b - (b - a) * (1 - g)` when `g >= 0.5`. For float32 data and a
//! Python scalar `q` (numpy >= 2, NEP 50 weak promotion) that arithmetic runs in float32:
//! `g` and `1 - g` (f64) are rounded to f32 and every product/sum is an f32 operation.
//! Checked against numpy 2.4 on random data and on the fixture's ReAct threshold.
//!
//! [`percentile`] selects in O(n) on data in memory; [`percentile_sorted`] serves many `q`
//! over sorted values; [`RadixSelect`] finds exact order statistics of a stream too large
//! to hold (the ID-train activations).

use std::cmp::Ordering;

/// Number of points of the stored percentile grid `q = 0, 0.1, ..., 100`.
pub const GRID_LEN: usize = 1001;

/// The stored grid: `q_k = k / 10` (the f64 nearest to it, as Python's `k / 10`).
pub fn grid() -> Vec<f64> {
    (0..GRID_LEN).map(|k| k as f64 / 10.0).collect()
}

/// Position of `q` on [`grid`], if it is a grid point (within 1e-9).
pub fn grid_position(q: f64) -> Option<usize> {
    let k = (q * 10.0).round();
    ((q * 10.0 - k).abs() < 1e-9 && (0.0..=1000.0).contains(&k)).then_some(k as usize)
}

/// Ranks (0-based, in sorted order) and weight of numpy's linear interpolation for the
/// q-th percentile of `n >= 1` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Interpolation {
    /// Rank of the lower neighbour `a`.
    pub lower: u64,
    /// Rank of the upper neighbour `b`.
    pub upper: u64,
    /// Weight `g` of `b` (f64, as numpy computes it).
    pub gamma: f64,
}

/// numpy's neighbours and weight for percentile `q` (in [0, 100]) of `n` values.
pub(crate) fn interpolation(n: u64, q: f64) -> Interpolation {
    assert!(n > 0, "percentile of no values");
    let last = n - 1;
    let v = last as f64 * (q / 100.0);
    let (prev, next) = if v >= last as f64 {
        (-1.0, -1.0)
    } else {
        let p = v.floor();
        (p, p + 1.0)
    };
    let gamma = v - prev;
    let rank = |x: f64| if x < 0.0 { last } else { x as u64 };
    Interpolation {
        lower: rank(prev),
        upper: rank(next),
        gamma,
    }
}

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

/// numpy's neighbours `(i, g)` of percentile `q` of `n` values (see [`interpolation`]);
/// `at_end` when both neighbours are the maximum.
fn virtual_index(n: usize, q: f64) -> (usize, f64, bool) {
    assert!(
        (0.0..=100.0).contains(&q),
        "percentile q = {q} outside [0, 100]"
    );
    let i = interpolation(n as u64, q);
    (i.lower as usize, i.gamma, i.lower == i.upper)
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

/// Order-preserving u32 key of a finite f32 (`-0.0` maps to the key of `+0.0`).
#[inline]
fn key(v: f32) -> u32 {
    let bits = if v == 0.0 { 0 } else { v.to_bits() };
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`key`].
#[inline]
fn value_of(key: u32) -> f32 {
    if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

/// Exact selection of order statistics of a stream of f32 values that is too large to
/// sort in memory, by counting: pass 1 counts the top 16 bits of each value's
/// order-preserving key (65,536 counters), pass 2 the next 8 bits inside the buckets
/// that hold a wanted rank, pass 3 the last 8 bits. After three passes every wanted rank
/// is pinned to one exact 32-bit value. Memory: 65,536 + 512 per wanted rank counters;
/// no value is stored. The result does not depend on the order of the values.
pub(crate) struct RadixSelect {
    pass: u8,
    count: u64,
    zeros: u64,
    hist1: Vec<u64>,
    /// Wanted ranks, sorted and distinct.
    ranks: Vec<u64>,
    /// Per rank: its top-16 bucket and (after pass 2) its next-8 digit.
    top: Vec<u32>,
    mid: Vec<u32>,
    /// Per rank: rank within the current bucket.
    residual: Vec<u64>,
    /// top-16 bucket -> slot + 1 (0: not wanted).
    table1: Vec<u32>,
    hist2: Vec<u64>,
    /// (slot1, next-8 digit) -> slot + 1.
    table2: Vec<u32>,
    hist3: Vec<u64>,
    /// Per rank: the selected value (after pass 3).
    values: Vec<f32>,
}

impl RadixSelect {
    /// A selector in its first (counting) pass.
    pub(crate) fn new() -> RadixSelect {
        RadixSelect {
            pass: 1,
            count: 0,
            zeros: 0,
            hist1: vec![0; 1 << 16],
            ranks: Vec::new(),
            top: Vec::new(),
            mid: Vec::new(),
            residual: Vec::new(),
            table1: Vec::new(),
            hist2: Vec::new(),
            table2: Vec::new(),
            hist3: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Number of values seen in pass 1.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Number of zeros (either sign) seen in pass 1.
    pub(crate) fn zeros(&self) -> u64 {
        self.zeros
    }

    /// Whether every wanted rank is resolved.
    pub(crate) fn done(&self) -> bool {
        self.pass > 3
    }

    /// Feeds values of the current pass; every pass must see the same multiset.
    pub(crate) fn observe(&mut self, values: &[f32]) {
        match self.pass {
            1 => {
                for &v in values {
                    self.hist1[(key(v) >> 16) as usize] += 1;
                }
                self.count += values.len() as u64;
                self.zeros += values.iter().filter(|v| **v == 0.0).count() as u64;
            }
            2 => {
                for &v in values {
                    let k = key(v);
                    let s = self.table1[(k >> 16) as usize];
                    if s != 0 {
                        self.hist2[((s - 1) as usize) << 8 | ((k >> 8) & 0xff) as usize] += 1;
                    }
                }
            }
            3 => {
                for &v in values {
                    let k = key(v);
                    let s1 = self.table1[(k >> 16) as usize];
                    if s1 != 0 {
                        let s2 = self.table2[((s1 - 1) as usize) << 8 | ((k >> 8) & 0xff) as usize];
                        if s2 != 0 {
                            self.hist3[((s2 - 1) as usize) << 8 | (k & 0xff) as usize] += 1;
                        }
                    }
                }
            }
            _ => panic!("RadixSelect::observe after the last pass"),
        }
    }

    /// Ends pass 1 and names the wanted ranks (each `< count()`).
    pub(crate) fn want(&mut self, ranks: &[u64]) {
        assert_eq!(self.pass, 1, "want() ends pass 1");
        let mut ranks = ranks.to_vec();
        ranks.sort_unstable();
        ranks.dedup();
        assert!(
            ranks.last().is_none_or(|&r| r < self.count),
            "rank out of range"
        );
        self.ranks = ranks;
        self.table1 = vec![0; 1 << 16];
        let mut slots = 0u32;
        // Walk buckets and ranks together (both ascending).
        let (mut bucket, mut before) = (0usize, 0u64);
        for &r in &self.ranks {
            while before + self.hist1[bucket] <= r {
                before += self.hist1[bucket];
                bucket += 1;
            }
            if self.table1[bucket] == 0 {
                slots += 1;
                self.table1[bucket] = slots;
            }
            self.top.push(bucket as u32);
            self.residual.push(r - before);
        }
        self.hist1 = Vec::new();
        self.hist2 = vec![0; (slots as usize) << 8];
        self.pass = 2;
    }

    /// Ends pass 2 or 3.
    pub(crate) fn end_pass(&mut self) {
        match self.pass {
            2 => {
                self.table2 = vec![0; self.hist2.len()];
                let mut slots = 0u32;
                for i in 0..self.ranks.len() {
                    let s1 = (self.table1[self.top[i] as usize] - 1) as usize;
                    let counts = &self.hist2[s1 << 8..(s1 + 1) << 8];
                    let (digit, rest) = locate(counts, self.residual[i]);
                    let t = &mut self.table2[s1 << 8 | digit];
                    if *t == 0 {
                        slots += 1;
                        *t = slots;
                    }
                    self.mid.push(digit as u32);
                    self.residual[i] = rest;
                }
                self.hist2 = Vec::new();
                self.hist3 = vec![0; (slots as usize) << 8];
                self.pass = 3;
            }
            3 => {
                for i in 0..self.ranks.len() {
                    let s1 = (self.table1[self.top[i] as usize] - 1) as usize;
                    let s2 = (self.table2[s1 << 8 | self.mid[i] as usize] - 1) as usize;
                    let counts = &self.hist3[s2 << 8..(s2 + 1) << 8];
                    let (digit, _) = locate(counts, self.residual[i]);
                    let k = self.top[i] << 16 | self.mid[i] << 8 | digit as u32;
                    self.values.push(value_of(k));
                }
                self.hist3 = Vec::new();
                self.pass = 4;
            }
            _ => panic!("RadixSelect::end_pass in pass {}", self.pass),
        }
    }

    /// The value of rank `rank` (one of the wanted ones) in ascending order.
    pub(crate) fn value(&self, rank: u64) -> f32 {
        assert!(self.done(), "selection not finished");
        let i = self.ranks.binary_search(&rank).expect("rank was wanted");
        self.values[i]
    }
}

/// The digit whose bucket holds rank `r` among `counts`, and the rank inside it.
fn locate(counts: &[u64], mut r: u64) -> (usize, u64) {
    for (d, &c) in counts.iter().enumerate() {
        if r < c {
            return (d, r);
        }
        r -= c;
    }
    unreachable!("rank beyond the counted values (passes saw different data)")
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

    /// Values and expected results printed by numpy 2.4.6:
    /// `np.percentile(a, q)` and `np.percentile(a.astype(np.float64), q)`.
    #[test]
    fn matches_numpy_on_a_small_array() {
        let a = [0.1f32, 0.2, 0.3, 0.7, 0.0, 0.0, -1.5, 2.25];
        let a64: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
        let cases = [
            (0.0, -1.5, -1.5),
            (12.5, -0.1875, -0.1875),
            (33.3, 0.03310000151395798, 0.033100000493228386),
            (50.0, 0.15000000596046448, 0.15000000223517418),
            (90.0, 1.1649999618530273, 1.1649999916553495),
            (99.9, 2.239150047302246, 2.239149999916554),
            (100.0, 2.25, 2.25),
        ];
        for (q, e32, e64) in cases {
            assert_eq!(
                f64::from(percentile(&mut a.clone(), q).unwrap()),
                e32,
                "q = {q}"
            );
            assert_eq!(percentile(&mut a64.clone(), q).unwrap(), e64, "q = {q}");
        }
    }

    #[test]
    fn keys_preserve_order() {
        let mut v = vec![
            -3.5f32,
            -1e-30,
            -0.0,
            0.0,
            1e-40,
            1e-30,
            2.0,
            f32::MAX,
            f32::MIN,
        ];
        v.sort_by(f32::total_cmp);
        for w in v.windows(2) {
            assert!(key(w[0]) <= key(w[1]), "{} {}", w[0], w[1]);
        }
        for &x in &v {
            let back = value_of(key(x));
            assert_eq!(back, x);
            assert!(x != 0.0 || back.is_sign_positive());
        }
    }

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn radix_select_equals_sorting() {
        let mut state = 7u64;
        for trial in 0..20 {
            let n = 1 + (splitmix(&mut state) % 5000) as usize;
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let r = splitmix(&mut state);
                    match r % 5 {
                        0 => 0.0,
                        1 => -0.0,
                        2 => ((r >> 8) % 7) as f32 * 0.25, // many duplicates
                        3 => -(((r >> 8) as f32) / 1e15),
                        _ => f32::from_bits(((r >> 32) as u32) & 0x3fff_ffff), // wide range
                    }
                })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_by(f32::total_cmp);
            let ranks: Vec<u64> = (0..n as u64)
                .step_by(1 + trial)
                .chain([n as u64 - 1])
                .collect();
            let mut sel = RadixSelect::new();
            for chunk in values.chunks(333) {
                sel.observe(chunk);
            }
            assert_eq!(sel.count(), n as u64);
            sel.want(&ranks);
            while !sel.done() {
                // Another chunking and order for each pass: the result must not care.
                for chunk in values.rchunks(97) {
                    sel.observe(chunk);
                }
                sel.end_pass();
            }
            for &r in &ranks {
                let got = sel.value(r);
                let want = sorted[r as usize];
                assert!(got == want, "trial {trial} rank {r}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn grid_positions() {
        let g = grid();
        assert_eq!(g.len(), GRID_LEN);
        assert_eq!(g[900], 90.0);
        assert_eq!(grid_position(90.0), Some(900));
        assert_eq!(grid_position(99.9), Some(999));
        assert_eq!(grid_position(0.05), None);
        assert_eq!(grid_position(100.0), Some(1000));
        assert_eq!(grid_position(100.1), None);
    }

    #[test]
    fn interpolation_at_the_ends() {
        let i = interpolation(1, 50.0);
        assert_eq!((i.lower, i.upper), (0, 0));
        let i = interpolation(10, 100.0);
        assert_eq!((i.lower, i.upper), (9, 9));
        let i = interpolation(11, 25.0);
        assert_eq!((i.lower, i.upper, i.gamma), (2, 3, 0.5));
    }
}
