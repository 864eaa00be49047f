//! Block GEMM of the scoring pass, `z = x W^T` (`x`: `B x m` f64, `W`: `C x m` f64), with
//! the `gemm` crate vs ndarray's `dot` (matrixmultiply), one thread, at the shapes of
//! ImageNet ResNet-50 (m = 2048, C = 1000) and CIFAR DenseNet-BC (m = 342, C = 10); then
//! the whole multi-score pass (`logit_scores`) on all cores. Run: `just bench-head`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2};
use posthoc::eval::{Head64, LogitScore, Temperature, logit_scores};

fn gemm_crate(x: &Array2<f64>, w: &Array2<f64>, out: &mut Array2<f64>) {
    let (rows, m) = x.dim();
    let c = w.nrows();
    // SAFETY: standard-layout arrays of the sizes and strides given; no aliasing.
    unsafe {
        gemm::gemm(
            rows,
            c,
            m,
            out.as_mut_ptr(),
            1,
            c as isize,
            false,
            x.as_ptr(),
            1,
            m as isize,
            w.as_ptr(),
            m as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn ndarray_dot(x: &Array2<f64>, w: &Array2<f64>, out: &mut Array2<f64>) {
    ndarray::linalg::general_mat_mul(1.0, x, &w.t(), 0.0, out);
}

/// Median seconds per call over repeated runs of at least `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn filled(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(r, c)| {
        let v = (r as u64 * 2654435761 + c as u64 * 40503 + seed) % 1000;
        v as f64 / 1000.0 - 0.3
    })
}

fn main() {
    let budget = Duration::from_millis(400);
    println!("block GEMM z = x W^T, f64, one thread (GFLOP/s; ratio = gemm / ndarray time)");
    for (m, c) in [(2048, 1000), (342, 10)] {
        let w = filled(c, m, 7);
        for rows in [64, 128, 256, 512] {
            let x = filled(rows, m, 3);
            let mut out = Array2::zeros((rows, c));
            let flop = 2.0 * (rows * m * c) as f64;
            let tg = time(budget, || gemm_crate(black_box(&x), &w, &mut out));
            let reference = out.clone();
            let tn = time(budget, || ndarray_dot(black_box(&x), &w, &mut out));
            let diff = (&out - &reference)
                .iter()
                .fold(0.0f64, |a, b| a.max(b.abs()));
            println!(
                "m {m:>4} C {c:>4} B {rows:>3}: gemm {:>6.1}  ndarray {:>6.1}  ratio {:.2}  (max diff {diff:.1e})",
                flop / tg / 1e9,
                flop / tn / 1e9,
                tg / tn
            );
        }
    }

    let threads = rayon::current_num_threads();
    println!("\nlogit_scores (MSP, MaxLogit, energy T=1, energy T=10), {threads} threads");
    for (n, m, c) in [(16384, 2048, 1000), (10000, 342, 10)] {
        let feats = filled(n, m, 11).mapv(|v| (v + 0.3) as f32);
        let head = Head64::new(filled(c, m, 5) * 0.05, Array1::zeros(c)).unwrap();
        let scores = [
            LogitScore::Msp,
            LogitScore::MaxLogit,
            LogitScore::Energy(Temperature::ONE),
            LogitScore::Energy(Temperature::new(10.0).unwrap()),
        ];
        let t = time(Duration::from_secs(2), || {
            black_box(logit_scores(feats.view(), &head, None, &scores).unwrap());
        });
        let flop = 2.0 * (n * m * c) as f64;
        println!(
            "N {n:>5} m {m:>4} C {c:>4}: {:.3} s  {:.1} GFLOP/s  {:.0} rows/s",
            t,
            flop / t / 1e9,
            n as f64 / t
        );
    }
}
