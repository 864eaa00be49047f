//! `mahalanobis` and `rmd`: class-conditional Gaussians with a tied covariance on the
//! penultimate features (no input perturbation: that needs the network).
//!
//! - Mahalanobis (Lee et al. NeurIPS 2018, `pokaxpoka/deep_Mahalanobis_detector`,
//!   `sample_estimator` / `get_Mahalanobis_score`): `mu_c` = ID-train class means,
//!   `S` = the covariance of the class-centred ID-train features (divided by `N`);
//!   score `-1/2 min_c (h - mu_c)^T S^-1 (h - mu_c)`.
//! - RMD (Ren et al. 2021): `-min_c [MD_c(h) - MD_0(h)]`, `MD_0` with the mean and
//!   covariance of all ID-train features.
//!
//! `S` is inverted through its eigendecomposition (faer, `f64`). The paper's code uses
//! a pseudo-inverse; here a covariance whose smallest eigenvalue is below `1e-12` times
//! its largest is an error (no silent regularisation). `--variant pytorch-ood` is
//! pytorch-ood 0.4.0: the scatter matrices are not divided by `N` and get `1e-6 I` added
//! before the inverse (that is its only regularisation, named by the `variant` key in the
//! report): scores differ from the paper's by the factor `1/N` (same ranking) and by that
//! ridge.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::{FitContext, Method, Request, TrainSet, blockwise, logits_of};
use crate::eval::EvalError;
use crate::eval::head::argmax;
use crate::eval::linalg::{matmul_nt, symmetric_eigen};
use crate::eval::params::Variant;
use crate::eval::sweep::{Param, Params};

/// Mahalanobis or RMD.
pub struct Gaussian {
    name: &'static str,
    relative: bool,
}

/// Mahalanobis.
pub static MAHALANOBIS: Gaussian = Gaussian {
    name: "mahalanobis",
    relative: false,
};
/// Relative Mahalanobis.
pub static RMD: Gaussian = Gaussian {
    name: "rmd",
    relative: true,
};

/// The ridge pytorch-ood adds to its (undivided) scatter matrices.
const PYTORCH_OOD_RIDGE: f64 = 1e-6;
/// Smallest eigenvalue, relative to the largest, of an invertible covariance.
const RCOND: f64 = 1e-12;

/// A mean and the precision `S^-1` of one Gaussian family, as the pieces of
/// `MD(h) = h^T P h - 2 (P mu)^T h + mu^T P mu`.
struct Quadratic {
    precision: Array2<f64>,
    /// `P mu_c`, one row per mean.
    nu: Array2<f64>,
    /// `mu_c^T P mu_c`.
    offset: Array1<f64>,
}

impl Quadratic {
    fn new(
        method: &'static str,
        what: &'static str,
        means: Array2<f64>,
        scatter: Array2<f64>,
        rows: usize,
        variant: Variant,
    ) -> Result<Self, EvalError> {
        let m = scatter.nrows();
        let cov = match variant {
            Variant::Paper => scatter / rows as f64,
            Variant::PytorchOod => scatter + Array2::<f64>::eye(m) * PYTORCH_OOD_RIDGE,
        };
        let (values, vectors) = symmetric_eigen(cov.view()).ok_or(EvalError::Singular {
            method,
            what,
            small: m,
            m,
        })?;
        let largest = values.iter().fold(0.0f64, |a, &v| a.max(v));
        let small = values.iter().filter(|&&v| v <= largest * RCOND).count();
        if small > 0 {
            return Err(EvalError::Singular {
                method,
                what,
                small,
                m,
            });
        }
        // P = V diag(1 / lambda) V^T.
        let scaled = &vectors / &values.view().insert_axis(Axis(0));
        let precision = scaled.dot(&vectors.t());
        let nu = means.dot(&precision);
        let offset = (&nu * &means).sum_axis(Axis(1));
        Ok(Self {
            precision,
            nu,
            offset,
        })
    }

    /// `MD_c` of every row of `x` (`B x m`) for every mean (`B x C`).
    fn distances(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let (b, c) = (x.nrows(), self.nu.nrows());
        let mut y = Array2::zeros((b, x.ncols()));
        matmul_nt(x, self.precision.view(), y.view_mut());
        let quad = (&y * &x).sum_axis(Axis(1));
        let mut g = Array2::zeros((b, c));
        matmul_nt(x, self.nu.view(), g.view_mut());
        for (mut row, &q) in g.outer_iter_mut().zip(&quad) {
            row.zip_mut_with(&self.offset, |g, &o| *g = q - 2.0 * *g + o);
        }
        g
    }
}

/// The fitted class Gaussians (and the background one for RMD).
struct Fit {
    classes: Quadratic,
    background: Option<Quadratic>,
}

/// Class means and the class-centred scatter matrix of the ID-train split.
fn class_scatter(
    method: &'static str,
    train: &TrainSet,
    classes: usize,
) -> Result<(Array2<f64>, Array2<f64>), EvalError> {
    let x = train.features.mapv(f64::from);
    let m = x.ncols();
    let mut sums = Array2::<f64>::zeros((classes, m));
    let mut counts = vec![0usize; classes];
    for (row, &label) in x.outer_iter().zip(train.labels) {
        let c = usize::try_from(label)
            .ok()
            .filter(|&c| c < classes)
            .ok_or(EvalError::Label {
                what: "ID-train labels",
                row: counts.iter().sum(),
                label,
                classes,
            })?;
        sums.row_mut(c).scaled_add(1.0, &row);
        counts[c] += 1;
    }
    if let Some(c) = counts.iter().position(|&n| n == 0) {
        return Err(EvalError::EmptyClass { method, class: c });
    }
    for (mut row, &n) in sums.outer_iter_mut().zip(&counts) {
        row /= n as f64;
    }
    let mut centred = x;
    for (mut row, &label) in centred.outer_iter_mut().zip(train.labels) {
        row -= &sums.row(label as usize);
    }
    let scatter = centred.t().dot(&centred);
    Ok((sums, scatter))
}

impl Method for Gaussian {
    fn name(&self) -> &'static str {
        self.name
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Variant]
    }
    fn defaults(&self) -> Params {
        Params::default()
    }
    fn needs_train(&self) -> bool {
        true
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let train = ctx.train(self.name)?;
        let variant = p.variant_or_paper();
        let (name, relative) = (self.name, self.relative);
        let fit = ctx.fit(name, format!("variant={}", variant.as_str()), |inputs| {
            let classes = inputs.head.classes();
            let (means, scatter) = class_scatter(name, &train, classes)?;
            let rows = train.features.nrows();
            let class_gaussians = Quadratic::new(
                name,
                "class-centred ID-train covariance",
                means,
                scatter,
                rows,
                variant,
            )?;
            let background = if relative {
                let x = train.features.mapv(f64::from);
                let mu = x.mean_axis(Axis(0)).ok_or(EvalError::Empty {
                    what: "ID-train features",
                })?;
                let centred = &x - &mu;
                let scatter = centred.t().dot(&centred);
                Some(Quadratic::new(
                    name,
                    "ID-train covariance",
                    mu.insert_axis(Axis(0)),
                    scatter,
                    rows,
                    variant,
                )?)
            } else {
                None
            };
            Ok(Fit {
                classes: class_gaussians,
                background,
            })
        })?;
        Ok(Request::custom(move |inputs, features| {
            inputs.head.check_features(features)?;
            Ok(blockwise(features, |block| {
                let x = block.mapv(f64::from);
                let md = fit.classes.distances(x.view());
                let md0 = fit.background.as_ref().map(|b| b.distances(x.view()));
                let logits = logits_of(inputs, block);
                md.outer_iter()
                    .enumerate()
                    .zip(logits.outer_iter())
                    .map(|((r, row), z)| {
                        let min = row.fold(f64::INFINITY, |a, &v| a.min(v));
                        let score = match &md0 {
                            Some(md0) => -(min - md0[[r, 0]]),
                            None => -0.5 * min,
                        };
                        (score, argmax(z))
                    })
                    .collect()
            }))
        }))
    }
}
