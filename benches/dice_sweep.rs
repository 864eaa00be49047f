//! A DICE sweep p in {10, 20, ..., 90} at the ImageNet ResNet-50 shape (m = 2048,
//! C = 1000): the one-pass nested-band sweep (`dice_sweep`) against one dense head pass
//! per mask (`scores::dice`), on all cores. Run: `just bench-dice-sweep [rows]`.

use std::hint::black_box;
use std::time::Instant;

use ndarray::{Array1, Array2};
use posthoc::eval::{DiceMask, Head64, Sparsity, dice_sweep, scores};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(8192);
    let (m, c) = (2048, 1000);
    let hash =
        |a: usize, b: usize, s: usize| ((a * 2654435761 + b * 40503 + s) % 1000) as f64 / 1000.0;
    let feats = Array2::from_shape_fn((n, m), |(r, i)| (hash(r, i, 1) * 1.5) as f32);
    let w = Array2::from_shape_fn((c, m), |(k, i)| (hash(k, i, 2) - 0.5) * 0.05);
    let head = Head64::new(w, Array1::zeros(c)).unwrap();
    let mu = Array1::from_shape_fn(m, |i| hash(i, 0, 3));
    let ps: Vec<Sparsity> = (1..=9)
        .map(|k| Sparsity::new(10.0 * k as f64).unwrap())
        .collect();

    let t = Instant::now();
    let masks = DiceMask::sweep(mu.view(), &head, &ps).unwrap();
    let t_masks = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let swept = black_box(dice_sweep(feats.view(), &head, &masks, None).unwrap());
    let t_sweep = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let dense: Vec<_> = masks
        .iter()
        .map(|mask| black_box(scores::dice(feats.view(), &head, mask).unwrap()))
        .collect();
    let t_dense = t.elapsed().as_secs_f64();

    let max_diff = swept
        .iter()
        .zip(&dense)
        .flat_map(|(a, b)| a.scores.iter().zip(&b.scores).map(|(x, y)| (x - y).abs()))
        .fold(0.0f64, f64::max);
    let threads = rayon::current_num_threads();
    println!("DICE sweep p = 10..90 (9 masks), N {n} x m {m}, C {c}, {threads} threads");
    println!("  masks (one sort of V):          {t_masks:.3} s");
    println!(
        "  one-pass band sweep:            {t_sweep:.3} s  ({:.0} rows/s)",
        n as f64 / t_sweep
    );
    println!(
        "  dense pass per mask (9 passes): {t_dense:.3} s  ({:.0} rows/s)",
        n as f64 / t_dense
    );
    println!(
        "  speedup {:.2}x, max |score diff| {max_diff:.1e}",
        t_dense / t_sweep
    );
}
