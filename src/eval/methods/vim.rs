//! `vim` and `residual` (Wang et al. CVPR 2022, `haoqiwang/vim`, `benchmark.py`):
//! `u = -pinv(W) b`; `R` = the eigenvectors of the covariance of `h - u` over ID-train
//! (`X^T X / N`, not re-centred, as `EmpiricalCovariance(assume_centered=True)`) outside
//! its top `D`; `v = ||(h - u) R||`; ViM `logsumexp(z) - alpha v` with
//! `alpha = mean_train(max z) / mean_train(v)`; Residual `-v`. Default `D = 64` (`--dim`;
//! the paper takes 1000 for 2048-wide ImageNet features); `D < m` is checked.
//!
//! The eigendecomposition is one fit shared by every `D` (and by both methods); `R` and
//! `alpha` are a fit per `D`. pytorch-ood 0.4.0 computes the same in float32.

use ndarray::{Array2, Axis, s};

use super::{FitContext, Method, Request, blockwise, logits_of, req};
use crate::eval::EvalError;
use crate::eval::head::{argmax, energy_of};
use crate::eval::linalg::{matmul_nt, pseudo_inverse, symmetric_eigen};
use crate::eval::params::Dim;
use crate::eval::sweep::{Param, Params};

/// ViM or Residual.
pub struct Vim {
    name: &'static str,
    with_energy: bool,
}

/// ViM.
pub static VIM: Vim = Vim {
    name: "vim",
    with_energy: true,
};
/// Residual.
pub static RESIDUAL: Vim = Vim {
    name: "residual",
    with_energy: false,
};

/// The origin `u` and the eigenvectors (ascending eigenvalues, columns) of the
/// covariance of `h - u`.
struct Space {
    u: ndarray::Array1<f64>,
    vectors: Array2<f64>,
}

/// The residual space of one `D` (as rows, for the GEMM) and `alpha`.
struct Residual {
    /// `R^T`, `(m - D) x m`.
    rt: Array2<f64>,
    alpha: f64,
}

impl Residual {
    /// `||(x - u) R||` for each row of a block.
    fn norms(&self, u: &ndarray::Array1<f64>, block: ndarray::ArrayView2<f32>) -> Vec<f64> {
        let x = block.mapv(f64::from) - u;
        let mut y = Array2::zeros((x.nrows(), self.rt.nrows()));
        matmul_nt(x.view(), self.rt.view(), y.view_mut());
        y.outer_iter().map(|r| r.dot(&r).sqrt()).collect()
    }
}

impl Method for Vim {
    fn name(&self) -> &'static str {
        self.name
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Dim]
    }
    fn defaults(&self) -> Params {
        Params {
            dim: Some(Dim::new(64).expect("64 >= 1")),
            ..Params::default()
        }
    }
    fn needs_train(&self) -> bool {
        true
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let train = ctx.train(self.name)?;
        let dim = req(p.dim);
        let m = ctx.inputs().head.width();
        if dim.get() >= m {
            return Err(EvalError::DimTooLarge { dim: dim.get(), m });
        }
        let space = ctx.fit("vim", "principal space".to_owned(), |inputs| {
            let w = inputs.head.weights();
            let pinv = pseudo_inverse(w).ok_or(EvalError::Singular {
                method: "vim",
                what: "the head W (no SVD)",
                small: w.nrows(),
                m: w.ncols(),
            })?;
            let u = -pinv.dot(&inputs.head.bias());
            let x = train.features.mapv(f64::from) - &u;
            let cov = x.t().dot(&x) / x.nrows() as f64;
            let (_, vectors) = symmetric_eigen(cov.view()).ok_or(EvalError::Singular {
                method: "vim",
                what: "ID-train covariance (no eigendecomposition)",
                small: m,
                m,
            })?;
            Ok(Space { u, vectors })
        })?;
        let residual = {
            let space = space.clone();
            ctx.fit("vim", format!("dim={}", dim.get()), move |inputs| {
                // Ascending eigenvalues: the first m - D columns are outside the top D.
                let rt = space
                    .vectors
                    .slice(s![.., ..m - dim.get()])
                    .t()
                    .as_standard_layout()
                    .into_owned();
                let mut r = Residual { rt, alpha: 1.0 };
                let v = r.norms(&space.u, train.features);
                let logits = logits_of(inputs, train.features);
                let max_logit = logits
                    .map_axis(Axis(1), |z| z.fold(f64::NEG_INFINITY, |a, &b| a.max(b)))
                    .mean()
                    .unwrap_or(f64::NAN);
                let mean_v = v.iter().sum::<f64>() / v.len() as f64;
                r.alpha = max_logit / mean_v;
                Ok(r)
            })?
        };
        let with_energy = self.with_energy;
        Ok(Request::custom(move |inputs, features| {
            inputs.head.check_features(features)?;
            Ok(blockwise(features, |block| {
                let v = residual.norms(&space.u, block);
                let logits = logits_of(inputs, block);
                v.iter()
                    .zip(logits.outer_iter())
                    .map(|(&v, z)| {
                        let score = if with_energy {
                            energy_of(z, 1.0) - residual.alpha * v
                        } else {
                            -v
                        };
                        (score, argmax(z))
                    })
                    .collect()
            }))
        }))
    }
}
