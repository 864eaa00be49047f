//! The evaluate stage's math: checked hyperparameters, numpy-exact percentiles, the
//! float64 linear head and its blockwise scoring pass, head masks, activation shaping,
//! the method registry ([`methods`]: MSP, MaxLogit, energy, ReAct, DICE, LINe, HIMPLoS
//! and the zoo: entropy, GEN, KL matching, ASH, SCALE, KNN, Mahalanobis, RMD, ViM,
//! Residual, SHE, NNGuide, fDBD, GradNorm) and the OOD metrics.
//!
//! Definitions follow `docs/methods.md`. Everything after the cached `f32` features is
//! computed in `f64`.

/// Runs `$call` with `const $fused: bool` set: `true`, compiled for AVX-512 (F, DQ) or
/// AVX2 with fused multiply-add where the CPU has them (checked at run time), else
/// `false` with the build's baseline instructions. The kernels are plain loops that the
/// compiler vectorises for the enabled features; `$fused` selects `mul_add` in them.
macro_rules! with_fused_simd {
    (|$fused:ident| $call:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512dq,fma")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
            {
                const $fused: bool = true;
                // SAFETY: the CPU supports AVX-512 F/DQ and FMA (checked at run time).
                unsafe { avx512(|| $call) }
            } else if fma && std::arch::is_x86_feature_detected!("avx2") {
                const $fused: bool = true;
                // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                unsafe { avx2(|| $call) }
            } else {
                const $fused: bool = false;
                $call
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            const $fused: bool = false;
            $call
        }
    }};
}

pub mod dice_sweep;
pub mod engine;
mod expsum;
pub mod head;
pub mod linalg;
pub mod masks;
pub mod methods;
pub mod metrics;
pub mod neighbours;
pub mod params;
pub mod scores;
pub mod select;
pub mod shaping;
pub mod sweep;

pub use dice_sweep::dice_sweep;
pub use head::{Head64, LogitScore, logit_scores};
pub use masks::{DiceMask, HimplosMask, LineMasks};
pub use metrics::{
    Convention, Metrics, SortedScores, id_accuracy, metrics, metrics_sorted, roc_curve,
};
pub use params::{
    BankFraction, Clip, ClipValue, Dim, Gamma, LinePercentile, Neighbours, ScoreKind, Sparsity,
    Temperature, TopM, Variant,
};
pub use posthoc_cache::percentile::{percentile, percentile_sorted};
pub use scores::Scored;

/// Errors of the evaluate stage.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A hyperparameter outside its domain, named by its command-line flag.
    #[error("{flag} {value}: {reason}")]
    Param {
        /// The command-line flag, e.g. `--p`.
        flag: &'static str,
        /// The value as the user gave it.
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// Two arrays that must agree in one dimension do not.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        /// Which array and dimension, e.g. "features columns vs head width m".
        what: &'static str,
        /// The size required.
        expected: usize,
        /// The size given.
        found: usize,
    },
    /// A statistic of an empty set of values.
    #[error("{what}: no values")]
    Empty {
        /// What the values are.
        what: &'static str,
    },
    /// A NaN or infinite value where finite ones are required.
    #[error("{what}: non-finite value {value} at index {index}")]
    NonFinite {
        /// What the values are.
        what: &'static str,
        /// Its position.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A method name no score answers to.
    #[error("unknown method {name:?}: expected one of {known}")]
    UnknownMethod {
        /// The name given.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// A metric convention no metric module answers to.
    #[error("--convention {name}: expected one of {known}")]
    UnknownConvention {
        /// The name given.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// A parameter flag given for methods none of which take it.
    #[error("{flag} does not apply to {methods} (it applies to {applies_to})")]
    NotApplicable {
        /// The flag, e.g. `--p`.
        flag: &'static str,
        /// The selected methods.
        methods: String,
        /// The methods that take it.
        applies_to: String,
    },
    /// A percentile of the ID-train activations (for a `pNN` clip) could not be had.
    #[error("--clip p{q}: cannot get the ID-train activation percentile: {reason}")]
    TrainPercentile {
        /// The percentile asked for.
        q: f64,
        /// Why not.
        reason: String,
    },
    /// A class label outside `0..classes`.
    #[error("{what}: label {label} at row {row} is not in 0..{classes}")]
    Label {
        /// Which label array.
        what: &'static str,
        /// The row holding it.
        row: usize,
        /// The offending label.
        label: i64,
        /// The number of classes.
        classes: usize,
    },
    /// DICE masks of a sweep that are not nested (the one with fewer kept weights keeps
    /// one the other drops).
    #[error(
        "DICE masks p = {outer} and p = {inner} are not nested (built from different statistics?)"
    )]
    NotNested {
        /// Sparsity of the mask with more kept weights.
        outer: f64,
        /// Sparsity of the mask with fewer kept weights.
        inner: f64,
    },
    /// A method that fits on the ID-train split, run without it.
    #[error(
        "{method} fits on the ID-train features, but the cache's id_train split was not read (does the cache have one?)"
    )]
    NeedsTrain {
        /// The method.
        method: &'static str,
    },
    /// A count parameter larger than the rows it selects from.
    #[error("{flag} {value} is larger than {what} ({rows} rows)")]
    TooFewRows {
        /// The flag, e.g. `--k`.
        flag: &'static str,
        /// The value given.
        value: usize,
        /// What the rows are.
        what: &'static str,
        /// How many rows there are.
        rows: usize,
    },
    /// ViM / Residual's `D` not below the feature width.
    #[error("--dim {dim}: must be smaller than the feature width m = {m}")]
    DimTooLarge {
        /// `D` as given.
        dim: usize,
        /// The feature width.
        m: usize,
    },
    /// A covariance (or other matrix) that cannot be inverted.
    #[error(
        "{method}: the {what} is singular ({small} of {m} eigenvalues below 1e-12 x the largest); the paper's reading does not regularise: use --variant pytorch-ood (adds 1e-6 I to the scatter matrix) or more ID-train rows"
    )]
    Singular {
        /// The method.
        method: &'static str,
        /// Which matrix.
        what: &'static str,
        /// How many eigenvalues are (numerically) zero.
        small: usize,
        /// The matrix size.
        m: usize,
    },
    /// A class with no ID-train rows where a method needs a per-class statistic.
    #[error("{method}: class {class} has no usable ID-train rows")]
    EmptyClass {
        /// The method.
        method: &'static str,
        /// The class.
        class: usize,
    },
}
