//! Nearest neighbours without an `N x B` matrix: queries in blocks (callers run blocks
//! in parallel), the bank in tiles, one GEMM per (block, tile) and a per-row top-k
//! merged tile by tile.

use ndarray::{Array2, ArrayView2, s};

use super::linalg::matmul_nt;

/// Bank rows per tile.
const TILE_ROWS: usize = 2048;

/// Keeps the `k` largest of `top` and `values` in `top` (unordered).
fn merge_top(top: &mut Vec<f64>, values: impl Iterator<Item = f64>, k: usize) {
    top.extend(values);
    if top.len() > k {
        top.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        top.truncate(k);
    }
}

/// Per bank row `j`, the map from the similarity `g = q . b_j` to the value ranked:
/// `scale_j * g + bias_j` (KNN: `2 g - |b_j|^2`; NNGuide: `energy_j * g`), so methods
/// with different weightings share one bank matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct RowAffine {
    /// `scale_j`, one per bank row.
    pub scale: Vec<f64>,
    /// `bias_j`, one per bank row.
    pub bias: Vec<f64>,
}

/// For each query row `q` (rows of `queries`, `f64`, one block: callers parallelise
/// over blocks), the `k` largest values of `scale_j * (q . b_j) + bias_j` over the bank
/// rows `b_j`, in descending order, with the bank read in tiles of [`TILE_ROWS`].
/// `k <= bank rows`; `affine` has one entry per bank row.
pub fn top_k(
    queries: ArrayView2<f64>,
    bank: ArrayView2<f64>,
    affine: &RowAffine,
    k: usize,
) -> Vec<Vec<f64>> {
    assert!(k >= 1 && k <= bank.nrows(), "1 <= k <= bank rows");
    assert!(
        affine.scale.len() == bank.nrows() && affine.bias.len() == bank.nrows(),
        "one scale and bias per bank row"
    );
    let q = queries.as_standard_layout();
    let n = q.nrows();
    let mut tops: Vec<Vec<f64>> = vec![Vec::with_capacity(2 * k + TILE_ROWS); n];
    let mut g = Array2::<f64>::zeros((n, TILE_ROWS.min(bank.nrows())));
    for t0 in (0..bank.nrows()).step_by(TILE_ROWS) {
        let t1 = (t0 + TILE_ROWS).min(bank.nrows());
        let mut gt = g.slice_mut(s![.., ..t1 - t0]);
        if gt.is_standard_layout() {
            matmul_nt(q.view(), bank.slice(s![t0..t1, ..]), gt.view_mut());
        } else {
            let mut last = Array2::<f64>::zeros((n, t1 - t0));
            matmul_nt(q.view(), bank.slice(s![t0..t1, ..]), last.view_mut());
            gt.assign(&last);
        }
        let (scale, bias) = (&affine.scale[t0..t1], &affine.bias[t0..t1]);
        for (top, row) in tops.iter_mut().zip(gt.outer_iter()) {
            merge_top(
                top,
                row.iter()
                    .zip(scale.iter().zip(bias))
                    .map(|(&v, (&a, &b))| a * v + b),
                k,
            );
        }
    }
    for top in &mut tops {
        top.sort_unstable_by(|a, b| b.total_cmp(a));
    }
    tops
}

/// `h / max(|h|, 1e-12)` in `f64` for every row (PyTorch's `F.normalize`).
pub fn normalized_rows(features: ArrayView2<f32>) -> Array2<f64> {
    let mut x = features.mapv(f64::from);
    for mut row in x.outer_iter_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        row.mapv_inplace(|v| v / norm);
    }
    x
}

/// `count` distinct row indices of `0..n` drawn with a fixed seed (a partial
/// Fisher-Yates shuffle driven by SplitMix64, whose stream is fixed by its definition,
/// so a bank fraction selects the same rows on every machine and version), ascending.
pub fn seeded_rows(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..count.min(n) {
        let j = i + (next() % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(count.min(n));
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_top_k_equals_the_full_sort() {
        // More bank rows than one tile and more queries than one block.
        let bank = Array2::from_shape_fn((TILE_ROWS + 37, 5), |(r, i)| {
            ((r * 31 + i * 7) % 101) as f64 / 50.0 - 1.0
        });
        let q = Array2::from_shape_fn((40, 5), |(r, i)| ((r * 13 + i * 5) % 17) as f64 / 8.0 - 1.0);
        let affine = RowAffine {
            scale: (0..bank.nrows()).map(|j| 1.0 + (j % 3) as f64).collect(),
            bias: (0..bank.nrows()).map(|j| (j % 7) as f64 * 0.01).collect(),
        };
        let got = top_k(q.view(), bank.view(), &affine, 5);
        for (r, top) in got.iter().enumerate() {
            let mut all: Vec<f64> = (0..bank.nrows())
                .map(|j| affine.scale[j] * q.row(r).dot(&bank.row(j)) + affine.bias[j])
                .collect();
            all.sort_unstable_by(|a, b| b.total_cmp(a));
            for (a, b) in top.iter().zip(&all[..5]) {
                assert!((a - b).abs() < 1e-12, "row {r}");
            }
        }
    }

    #[test]
    fn seeded_rows_are_distinct_sorted_and_repeatable() {
        let a = seeded_rows(1000, 10, 0);
        assert_eq!(a, seeded_rows(1000, 10, 0));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(seeded_rows(5, 5, 0), vec![0, 1, 2, 3, 4]);
    }
}
