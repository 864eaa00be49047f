//! The method registry: one file per method, each saying everything about it — its
//! command-line / JSON name, the parameters it takes with their paper defaults, what it
//! needs from the cache, its fit step on ID-train data (keyed by the parameters that
//! change the fit, so a sweep fits once per distinct key) and its score.
//!
//! A method turns one setting into a [`Request`]: either a *linear* score (a head, an
//! optional activation shaping and a logit score), which the engine pools with every
//! other request on the same head and shaping into one pass over the features, or a
//! *custom* score (a closure over the fitted state, scored per set).
//!
//! # Adding a method
//! 1. One file here, `src/eval/methods/<name>.rs`, with a unit struct implementing
//!    [`Method`]: `name`, `params` (which [`Param`]s it takes), `defaults` (the paper's
//!    values), `needs_train` if it reads ID-train features, and `plan`, which fits through
//!    [`FitContext::fit`] (keyed by what changes the fit) and returns its [`Request`].
//! 2. One line in [`REGISTRY`] (and the `mod` line).
//! 3. One parity test in `tests/` against the reference's per-sample scores
//!    (`tests/parity_zoo.rs` for the pytorch-ood peers).

use std::any::Any;
use std::sync::Arc;

use ndarray::{ArrayView1, ArrayView2};

use super::EvalError;
use super::engine::EvalInputs;
use super::head::LogitScore;
use super::params::{Clip, ClipValue, Sparsity};
use super::scores::Scored;
use super::shaping::Shaping;
use super::sweep::{Param, Params};

mod ash;
mod bank;
mod dice;
mod dice_react;
mod energy;
mod entropy;
mod fdbd;
mod gaussian;
mod gen_entropy;
mod gradnorm;
mod himplos;
mod kl_matching;
mod knn;
mod line;
mod maxlogit;
mod msp;
mod nnguide;
mod react;
mod scale;
mod she;
mod temp_msp;
mod vim;

/// Every method, in the order they are listed (and in error messages).
pub static REGISTRY: &[&dyn Method] = &[
    &msp::Msp,
    &maxlogit::MaxLogit,
    &energy::Energy,
    &temp_msp::TempMsp,
    &react::React,
    &dice::Dice,
    &dice_react::DiceReact,
    &line::Line,
    &himplos::Himplos,
    &entropy::Entropy,
    &gen_entropy::Gen,
    &kl_matching::KlMatching,
    &ash::ASH_P,
    &ash::ASH_B,
    &ash::ASH_S,
    &scale::Scale,
    &knn::Knn,
    &gaussian::MAHALANOBIS,
    &gaussian::RMD,
    &vim::VIM,
    &vim::RESIDUAL,
    &she::She,
    &nnguide::NnGuide,
    &fdbd::Fdbd,
    &gradnorm::GradNorm,
];

/// One method of the evaluate stage.
pub trait Method: Sync + Send {
    /// The command-line and JSON name, e.g. `dice-react`.
    fn name(&self) -> &'static str;

    /// The parameters it takes.
    fn params(&self) -> &'static [Param];

    /// The paper's value of each parameter it takes (a parameter left unset here and
    /// on the command line stays unset, e.g. `--score` = energy).
    fn defaults(&self) -> Params;

    /// Whether it reads the ID-train features and labels (then the cache's `id_train`
    /// split is read).
    fn needs_train(&self) -> bool {
        false
    }

    /// What to score for `params` (every parameter of [`Method::params`] is set), fitting
    /// through `ctx` what it needs.
    fn plan(&self, params: &Params, ctx: &mut FitContext) -> Result<Request, EvalError>;
}

/// Which head a linear request uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadChoice {
    /// The cached head `W, b`.
    Plain,
    /// DICE's head with sparsity `p` (all sparsities of a run come from one sort of
    /// `mu * W`; nested masks share one band pass).
    Dice(Sparsity),
}

/// A closure scoring one set from the fitted state it captured.
pub type CustomScore =
    Arc<dyn Fn(&EvalInputs, ArrayView2<f32>) -> Result<Scored, EvalError> + Send + Sync>;

/// What a setting scores.
#[derive(Clone)]
pub enum Request {
    /// `score(W' shape(h) + b)`: pooled with every request on the same head and shaping.
    Linear {
        /// The head `W'`.
        head: HeadChoice,
        /// The activation shaping before the head (`None` = plain features).
        shaping: Option<Shaping>,
        /// The logit score.
        score: LogitScore,
    },
    /// A score of its own.
    Custom(CustomScore),
}

impl Request {
    /// A custom request from a closure.
    pub fn custom(
        f: impl Fn(&EvalInputs, ArrayView2<f32>) -> Result<Scored, EvalError> + Send + Sync + 'static,
    ) -> Self {
        Self::Custom(Arc::new(f))
    }
}

/// The ID-train split, read only when a selected method needs it.
#[derive(Debug, Clone, Copy)]
pub struct TrainSet<'a> {
    /// Features, `N x m`.
    pub features: ArrayView2<'a, f32>,
    /// Class labels, `N`.
    pub labels: &'a [i64],
}

/// Fits shared across the settings of one run: each fit is computed once per key.
pub struct FitContext<'i, 'a> {
    inputs: &'i EvalInputs<'a>,
    fitted: Vec<(String, Arc<dyn Any + Send + Sync>)>,
}

impl<'i, 'a> FitContext<'i, 'a> {
    /// A context with nothing fitted yet.
    pub fn new(inputs: &'i EvalInputs<'a>) -> Self {
        Self {
            inputs,
            fitted: Vec::new(),
        }
    }

    /// The run's inputs.
    pub fn inputs(&self) -> &'i EvalInputs<'a> {
        self.inputs
    }

    /// A clip resolved (a percentile through the ID-train activations).
    pub fn clip(&self, clip: Clip) -> Result<ClipValue, EvalError> {
        clip.resolve(|q| (self.inputs.train_percentile)(q))
    }

    /// The ID-train split, or an error naming `method` when it was not read.
    pub fn train(&self, method: &'static str) -> Result<TrainSet<'a>, EvalError> {
        self.inputs.train.ok_or(EvalError::NeedsTrain { method })
    }

    /// The fit of `method` under `key` (the parameters that change it): computed by
    /// `fit` the first time, shared afterwards.
    pub fn fit<T: Any + Send + Sync>(
        &mut self,
        method: &'static str,
        key: String,
        fit: impl FnOnce(&EvalInputs<'a>) -> Result<T, EvalError>,
    ) -> Result<Arc<T>, EvalError> {
        let key = format!("{method} {key}");
        if let Some((_, v)) = self.fitted.iter().find(|(k, _)| *k == key) {
            return Ok(Arc::clone(v).downcast::<T>().expect("one type per fit key"));
        }
        tracing::info!(fit = %key, "fitting on ID-train data");
        let v = Arc::new(fit(self.inputs)?);
        self.fitted.push((key, v.clone()));
        Ok(v)
    }

    /// How many fits were computed.
    pub fn fits(&self) -> usize {
        self.fitted.len()
    }
}

/// The parameter `p` of `params`; the expansion sets every parameter a method takes.
pub(crate) fn req<T>(v: Option<T>) -> T {
    v.expect(super::sweep::MISSING)
}

/// Rows per block of the custom scores' passes.
const BLOCK_ROWS: usize = 256;

/// Scores `features` in blocks of rows, in parallel: `score(block)` gives one
/// `(score, predicted class)` per row of its block. Whatever a block needs (normalised
/// rows, logits, similarity tiles) exists for one block at a time.
pub(crate) fn blockwise(
    features: ArrayView2<f32>,
    score: impl Fn(ArrayView2<f32>) -> Vec<(f64, usize)> + Sync,
) -> Scored {
    use rayon::prelude::*;
    let n = features.nrows();
    let starts: Vec<usize> = (0..n).step_by(BLOCK_ROWS).collect();
    let per_block: Vec<Vec<(f64, usize)>> = starts
        .into_par_iter()
        .map(|s| score(features.slice(ndarray::s![s..(s + BLOCK_ROWS).min(n), ..])))
        .collect();
    per_block.into_iter().flatten().collect()
}

/// `z = W h + b` in `f64` for every row of `features` (`N x C`).
pub(crate) fn logits_of(inputs: &EvalInputs, features: ArrayView2<f32>) -> ndarray::Array2<f64> {
    let head = inputs.head;
    let rows = super::head::linear_pass(
        features,
        None,
        head,
        |_, h, x| super::head::cast_clipped(h, None, x),
        |_, z: ArrayView1<f64>| z.to_vec(),
    );
    let c = head.classes();
    ndarray::Array2::from_shape_vec((rows.len(), c), rows.concat()).expect("N x C logits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::engine::{ScoreSet, evaluate};
    use crate::eval::head::Head64;
    use crate::eval::metrics::Convention;
    use crate::eval::sweep::{MethodName, SweepSpec, SweepValues};
    use ndarray::{Array1, Array2};

    struct Synthetic {
        head: Head64,
        mean: Array1<f64>,
        class_means: Array2<f64>,
        train: Array2<f32>,
        labels: Vec<i64>,
        test: Array2<f32>,
    }

    /// 3 classes, 6 features, 60 train rows (20 per class), 30 test rows.
    fn synthetic(singular: bool) -> Synthetic {
        let feat = |r: usize, i: usize, c: usize| {
            let v = ((r * 7 + i * 13 + c * 5) % 11) as f32 * 0.1 + if i == c { 2.0 } else { 0.0 };
            if singular && i == 5 { 0.5 } else { v }
        };
        let train = Array2::from_shape_fn((60, 6), |(r, i)| feat(r, i, r % 3));
        let labels = (0..60).map(|r| (r % 3) as i64).collect();
        let test = Array2::from_shape_fn((30, 6), |(r, i)| feat(r + 100, i, r % 3));
        let w = Array2::from_shape_fn((3, 6), |(c, i)| if i == c { 1.0 } else { 0.1 * i as f64 });
        let head = Head64::new(w, Array1::from(vec![0.1, 0.0, -0.1])).unwrap();
        Synthetic {
            head,
            mean: Array1::zeros(6),
            class_means: Array2::zeros((3, 6)),
            train,
            labels,
            test,
        }
    }

    fn inputs(s: &Synthetic) -> EvalInputs<'_> {
        static PERCENTILE: fn(f64) -> Result<f64, EvalError> = |_| Ok(1.0);
        EvalInputs {
            head: &s.head,
            train_mean: s.mean.view(),
            class_means: s.class_means.view(),
            train_percentile: &PERCENTILE,
            id: ScoreSet {
                name: "id",
                features: s.test.view(),
            },
            id_labels: &s.labels[..30],
            ood: vec![ScoreSet {
                name: "ood",
                features: s.test.view(),
            }],
            train: Some(TrainSet {
                features: s.train.view(),
                labels: &s.labels,
            }),
        }
    }

    fn settings(method: &str, flags: &[(Param, &str)]) -> Vec<crate::eval::sweep::Setting> {
        let mut values = SweepValues::default();
        for (p, v) in flags {
            values.set(*p, v).unwrap();
        }
        SweepSpec {
            methods: vec![method.parse::<MethodName>().unwrap()],
            values,
        }
        .settings()
        .unwrap()
    }

    fn fits(s: &Synthetic, method: &str, flags: &[(Param, &str)]) -> usize {
        let inputs = inputs(s);
        let mut ctx = FitContext::new(&inputs);
        for setting in settings(method, flags) {
            setting
                .method()
                .method()
                .plan(setting.params(), &mut ctx)
                .unwrap();
        }
        ctx.fits()
    }

    #[test]
    fn a_sweep_fits_once_per_fit_key_and_a_fit_changing_parameter_refits() {
        let s = synthetic(false);
        // k does not change the bank: one bank and one weighting of it for three k.
        assert_eq!(fits(&s, "knn", &[(Param::K, "1,2,5")]), 2);
        // The bank fraction does: a bank and a weighting each.
        assert_eq!(
            fits(
                &s,
                "knn",
                &[(Param::K, "1"), (Param::BankFraction, "0.5,1")]
            ),
            4
        );
        // KNN and NNGuide share the bank of a fraction, each weighting it its own way.
        let both = inputs(&s);
        let mut ctx = FitContext::new(&both);
        for method in ["knn", "nnguide"] {
            for setting in settings(method, &[(Param::K, "1")]) {
                let p = setting.params();
                setting.method().method().plan(p, &mut ctx).unwrap();
            }
        }
        assert_eq!(ctx.fits(), 3);
        // ViM: one principal space, one residual space and alpha per D.
        assert_eq!(fits(&s, "vim", &[(Param::Dim, "1,2,3")]), 1 + 3);
        // A refit really changes the scores.
        let inputs = inputs(&s);
        let e = evaluate(
            &inputs,
            &settings("vim", &[(Param::Dim, "1,3")]),
            Convention::Sklearn,
        )
        .unwrap();
        assert_ne!(e[0].id.scores, e[1].id.scores);
        let k = evaluate(
            &inputs,
            &settings("knn", &[(Param::K, "1,5")]),
            Convention::Sklearn,
        )
        .unwrap();
        assert_ne!(k[0].id.scores, k[1].id.scores);
    }

    #[test]
    fn a_singular_covariance_is_an_error_unless_regularised_by_name() {
        let s = synthetic(true);
        let inputs = inputs(&s);
        let e = evaluate(&inputs, &settings("mahalanobis", &[]), Convention::Sklearn)
            .expect_err("singular covariance refused");
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "mahalanobis: the class-centred ID-train covariance is singular (1 of 6 eigenvalues"
            ) && msg.contains("--variant pytorch-ood"),
            "{msg}"
        );
        let ok = evaluate(
            &inputs,
            &settings("rmd", &[(Param::Variant, "pytorch-ood")]),
            Convention::Sklearn,
        )
        .unwrap();
        assert!(ok[0].id.scores.iter().all(|v| v.is_finite()));
        assert_eq!(ok[0].params["variant"], "pytorch-ood");
    }

    #[test]
    fn methods_that_fit_say_so_when_the_train_split_is_missing() {
        let s = synthetic(false);
        let mut inputs = inputs(&s);
        inputs.train = None;
        let e = evaluate(&inputs, &settings("she", &[]), Convention::Sklearn)
            .expect_err("no train split");
        assert!(
            e.to_string()
                .starts_with("she fits on the ID-train features"),
            "{e}"
        );
    }

    #[test]
    fn registry_names_are_unique_and_defaults_cover_what_each_method_needs() {
        let names: Vec<&str> = REGISTRY.iter().map(|m| m.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert_eq!(names.len(), 25);
        // Every method runs with its defaults alone (ViM's D = 64 is not below m = 6).
        let s = synthetic(false);
        let inputs = inputs(&s);
        for m in REGISTRY {
            let settings = settings(m.name(), &[]);
            assert_eq!(settings.len(), 1, "{}", m.name());
            let r = evaluate(&inputs, &settings, Convention::Sklearn);
            let dim_too_large = matches!(m.name(), "vim" | "residual");
            assert_eq!(r.is_err(), dim_too_large, "{}: {:?}", m.name(), r.err());
        }
    }
}
