//! Shared helpers of the pipeline tests: locating `../shared` and reading `.npy` fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::ReadNpyExt;

/// `<repo>/../shared/<rel>` if it exists; otherwise prints one skip line and returns `None`.
pub fn shared_path(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        println!("skipping: ../shared/{rel} not found");
        None
    }
}

/// The parity fixture folder and the CIFAR-10 checkpoint, or `None` (skip) when absent.
pub fn parity_fixture() -> Option<(PathBuf, PathBuf)> {
    let fixtures = shared_path("fixtures/densenet100-cifar10")?;
    let ckpt = shared_path("data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar")?;
    Some((fixtures, ckpt))
}

/// The CIFAR-100 checkpoint, or `None` (skip) when absent.
pub fn cifar100_checkpoint() -> Option<PathBuf> {
    shared_path("data/checkpoints/dice-densenet100/cifar100/checkpoint_100.pth.tar")
}

/// A float32 `.npy` file.
pub fn read_f32(path: &Path) -> ArrayD<f32> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ArrayD::<f32>::read_npy(f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An int64 `.npy` file.
pub fn read_i64(path: &Path) -> ArrayD<i64> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ArrayD::<i64>::read_npy(f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first `rows` rows of an array (along axis 0), as a flat row-major vector.
pub fn first_rows(a: &ArrayD<f32>, rows: usize) -> Vec<f32> {
    a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..rows))
        .iter()
        .copied()
        .collect()
}

/// Largest `|a - b|` over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Index of the largest value of each row of a row-major `[n, c]` matrix.
pub fn argmax_rows(values: &[f32], c: usize) -> Vec<usize> {
    values
        .chunks(c)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

/// An array's shape as a vector.
pub fn shape_of(a: &ArrayD<f32>) -> Vec<usize> {
    a.shape().to_vec()
}

/// Builds an `IxDyn` array from a flat vector.
pub fn array(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()
}
