//! Dense linear algebra of the fitted methods in `f64`: products through the `gemm`
//! crate (the head pass's kernels), symmetric inverses, eigenvectors and
//! pseudo-inverses through `faer`.

use faer::Mat;
use faer::linalg::solvers::DenseSolveCore;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2};

/// `out = a b^T` (`a`: `n x k`, `b`: `p x k`, `out`: `n x p`, all standard layout),
/// single-threaded (callers parallelise over blocks).
pub fn matmul_nt(a: ArrayView2<f64>, b: ArrayView2<f64>, mut out: ArrayViewMut2<f64>) {
    let (n, k) = a.dim();
    let p = b.nrows();
    assert_eq!(b.ncols(), k, "inner dimensions");
    assert_eq!(out.dim(), (n, p), "output shape");
    assert!(a.is_standard_layout() && b.is_standard_layout() && out.is_standard_layout());
    // SAFETY: the three views are standard layout with the sizes checked above; `b^T`
    // (k x p) is read through `b`'s layout (p x k) with row stride 1 and column stride
    // k; `out` does not alias `a` or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            n,
            p,
            k,
            out.as_mut_ptr(),
            1,
            p as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
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

fn to_faer(a: ArrayView2<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[[i, j]])
}

fn from_faer(m: faer::MatRef<f64>) -> Array2<f64> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)])
}

/// The inverse of a symmetric positive-definite matrix (Cholesky), or `None` when it is
/// not positive definite (singular or indefinite).
pub fn inverse_spd(a: ArrayView2<f64>) -> Option<Array2<f64>> {
    let m = to_faer(a);
    let llt = m.llt(faer::Side::Lower).ok()?;
    let inv = llt.inverse();
    Some(from_faer(inv.as_ref()))
}

/// Eigenvalues (ascending) and eigenvectors (columns) of a symmetric matrix.
pub fn symmetric_eigen(a: ArrayView2<f64>) -> Option<(Array1<f64>, Array2<f64>)> {
    let m = to_faer(a);
    let evd = m.self_adjoint_eigen(faer::Side::Lower).ok()?;
    let s = evd.S();
    let values = Array1::from_shape_fn(a.nrows(), |i| s[i]);
    Some((values, from_faer(evd.U())))
}

/// The Moore-Penrose pseudo-inverse (`m x n` for an `n x m` matrix), through the SVD.
pub fn pseudo_inverse(a: ArrayView2<f64>) -> Option<Array2<f64>> {
    let m = to_faer(a);
    let svd = m.thin_svd().ok()?;
    Some(from_faer(svd.pseudoinverse().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn products_inverses_eigenvectors_and_pinv() {
        let a = array![[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]];
        let b = array![[2.0, 1.0, 1.0], [1.0, 0.0, -1.0]];
        let mut out = Array2::zeros((2, 2));
        matmul_nt(a.view(), b.view(), out.view_mut());
        assert_eq!(out, a.dot(&b.t()));
        let s = array![[4.0, 1.0], [1.0, 3.0]];
        let inv = inverse_spd(s.view()).unwrap();
        let eye = s.dot(&inv);
        assert!((eye[[0, 0]] - 1.0).abs() < 1e-14 && eye[[0, 1]].abs() < 1e-14);
        assert!(inverse_spd(array![[1.0, 1.0], [1.0, 1.0]].view()).is_none());
        let (vals, vecs) = symmetric_eigen(s.view()).unwrap();
        assert!(vals[0] < vals[1]);
        let v = vecs.column(1);
        let sv = s.dot(&v);
        assert!((&sv - &(&v * vals[1])).iter().all(|d| d.abs() < 1e-12));
        let p = pseudo_inverse(a.view()).unwrap();
        assert_eq!(p.dim(), (3, 2));
        let apa = a.dot(&p).dot(&a);
        assert!((&apa - &a).iter().all(|d| d.abs() < 1e-12));
    }
}
