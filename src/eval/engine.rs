//! The sweep engine: scores every [`Setting`] on the ID test set and every OOD set and
//! computes the metrics, doing each piece of shared work once.
//!
//! Plan: each setting's method (the registry, [`super::methods`]) turns it into a
//! request, fitting on ID-train data once per fit key. Linear requests are grouped into
//! *passes* over the features: all logit-only scores (MSP, MaxLogit, energy, entropy,
//! GEN, temperature-scaled MSP at any temperature) share one pass of the plain head;
//! each distinct shaping (a clip value, an ASH or SCALE percentile) is one pass shared by
//! every score that uses it; DICE masks for all sparsities come from one sort of
//! `V = mu * W` and each masked head is built once, then shared by DICE and
//! DICE + ReAct. Custom requests (LINe, HIMPLoS, KNN, ...) are one pass each. Passes x sets run in parallel (rayon), and
//! so do the metrics of settings x OOD sets.

use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;
use serde_json::{Map, Value};

use super::EvalError;
use super::dice_sweep::dice_sweep;
use super::head::{Head64, LogitScore, shaped_logit_scores};
use super::masks::DiceMask;
use super::methods::{CustomScore, FitContext, HeadChoice, Request, TrainSet};
use super::metrics::{Convention, Metrics, SortedScores, id_accuracy, metrics_sorted};
use super::params::{ClipValue, Sparsity};
use super::scores::Scored;
use super::shaping::Shaping;
use super::sweep::Setting;

/// One scored set: its name and `f32` features (`N x m`).
#[derive(Debug, Clone, Copy)]
pub struct ScoreSet<'a> {
    /// Set name (`id_test`, `isun`, ...).
    pub name: &'a str,
    /// Penultimate features, `N x m`.
    pub features: ArrayView2<'a, f32>,
}

/// Everything the evaluate stage reads: the head, the ID-train statistics, the ID test
/// set with labels and the OOD sets.
pub struct EvalInputs<'a> {
    /// The linear head in `f64`.
    pub head: &'a Head64,
    /// ID-train feature mean `mu` (length `m`).
    pub train_mean: ArrayView1<'a, f64>,
    /// ID-train class means `mu_c` (`C x m`): LINe's `S = mu_c * W`, HIMPLoS prototypes.
    pub class_means: ArrayView2<'a, f64>,
    /// `q -> percentile(all ID-train activations, q)`, for clips given as `pNN`.
    pub train_percentile: &'a (dyn Fn(f64) -> Result<f64, EvalError> + Sync),
    /// ID test set (positive class).
    pub id: ScoreSet<'a>,
    /// ID test labels (for the accuracy of the logits each setting uses).
    pub id_labels: &'a [i64],
    /// OOD sets, in report order.
    pub ood: Vec<ScoreSet<'a>>,
    /// The ID-train split, for the methods that fit on it (`None`: not read; see
    /// [`needs_train`]).
    pub train: Option<TrainSet<'a>>,
}

/// Whether any of `settings` fits on the ID-train features (so the caller reads them).
pub fn needs_train(settings: &[Setting]) -> bool {
    settings.iter().any(|s| s.method().method().needs_train())
}

/// The result of one setting.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The setting.
    pub setting: Setting,
    /// Its parameters as the report writes them (percentile clips resolved).
    pub params: Map<String, Value>,
    /// Scores of the ID test set.
    pub id: Scored,
    /// Scores of each OOD set, in input order.
    pub ood: Vec<Scored>,
    /// Metrics against each OOD set, in input order.
    pub metrics: Vec<Metrics>,
    /// Accuracy of the logits this setting uses on the ID test set.
    pub id_accuracy: f64,
}

/// How many times slower per kept weight the band kernel of [`dice_sweep`] runs than the
/// dense GEMM (measured at m = 2048, C = 1000: about 15 vs 75 GFLOP/s per core).
const BAND_COST: f64 = 5.0;

/// Bit pattern of a resolved clip, to share passes between settings with one clip.
fn clip_key(c: Option<ClipValue>) -> Option<u64> {
    c.map(|c| c.get().to_bits())
}

/// The clip of a shaping that is a plain clip (or none): the shapings DICE's band
/// pass takes. `Err` for ASH and SCALE.
fn as_clip(s: Option<Shaping>) -> Result<Option<ClipValue>, ()> {
    match s {
        None => Ok(None),
        Some(Shaping::Clip(c)) => Ok(Some(c)),
        Some(_) => Err(()),
    }
}

/// Whether two shapings are the same (clips by bit pattern).
fn same_shaping(a: Option<Shaping>, b: Option<Shaping>) -> bool {
    match (as_clip(a), as_clip(b)) {
        (Ok(x), Ok(y)) => clip_key(x) == clip_key(y),
        (Err(()), Err(())) => a == b,
        _ => false,
    }
}

/// Which head a linear pass uses.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LinearHead {
    Plain,
    /// Index into the DICE masks.
    Dice(usize),
}

/// One pass over a set's features.
#[derive(Clone)]
enum Pass {
    /// `scores` of `W' shape(h) + b` for one head `W'` and one optional shaping.
    Linear {
        head: LinearHead,
        shaping: Option<Shaping>,
        scores: Vec<LogitScore>,
    },
    /// DICE energies of several nested masks (indices into the DICE masks) in one band
    /// pass ([`dice_sweep`]).
    DiceSweep {
        clip: Option<ClipValue>,
        masks: Vec<usize>,
    },
    /// A method's own score.
    Custom(CustomScore),
}

/// Where a setting's scores come from: a pass and a score within it.
#[derive(Debug, Clone, Copy)]
struct Source {
    pass: usize,
    score: usize,
}

/// The masks, fits and passes a list of settings needs: everything fitted on the ID-train
/// split is held here, so a caller can free that split once the plan is made and score
/// any number of sets (e.g. a validation and a test split) with one plan.
pub struct Plan {
    settings: Vec<Setting>,
    dice: Vec<DiceMask>,
    passes: Vec<Pass>,
    sources: Vec<Source>,
    clips: Vec<Option<f64>>,
    fits: usize,
}

impl Plan {
    /// Plans `settings`: each method fits on `inputs.train` once per fit key, DICE masks
    /// and clips are resolved. Nothing is scored yet.
    pub fn new(inputs: &EvalInputs, settings: &[Setting]) -> Result<Self, EvalError> {
        let head = inputs.head;
        // Each method plans its setting, fitting once per fit key.
        let mut ctx = FitContext::new(inputs);
        let mut requests = Vec::with_capacity(settings.len());
        let mut clips = Vec::with_capacity(settings.len());
        for s in settings {
            clips.push(s.clip().map(|c| ctx.clip(c)).transpose()?);
            requests.push(s.method().method().plan(s.params(), &mut ctx)?);
        }

        // DICE masks: one sort of V for every sparsity.
        let mut dice_ps: Vec<Sparsity> = Vec::new();
        for r in &requests {
            if let Request::Linear {
                head: HeadChoice::Dice(p),
                ..
            } = *r
                && !dice_ps.contains(&p)
            {
                dice_ps.push(p);
            }
        }
        let dice = if dice_ps.is_empty() {
            Vec::new()
        } else {
            DiceMask::sweep(inputs.train_mean, head, &dice_ps)?
        };
        let dice_index = |p: Sparsity| dice_ps.iter().position(|&q| q == p).expect("planned above");

        // DICE masks with p > 0 that share a clip go through one band pass when that is
        // cheaper than a dense pass per mask.
        let mut dice_groups: Vec<(Option<u64>, Vec<usize>)> = Vec::new();
        for r in &requests {
            if let Request::Linear {
                head: HeadChoice::Dice(p),
                shaping,
                ..
            } = *r
                && !p.is_plain()
                && let Ok(clip) = as_clip(shaping)
            {
                let i = dice_index(p);
                let key = clip_key(clip);
                match dice_groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, masks)) if !masks.contains(&i) => masks.push(i),
                    Some(_) => {}
                    None => dice_groups.push((key, vec![i])),
                }
            }
        }
        let weights = head.weights().len() as f64;
        let swept = |clip: Option<ClipValue>, i: usize| {
            dice_groups.iter().any(|(k, masks)| {
                let widest = masks.iter().map(|&j| dice[j].kept()).max().unwrap_or(0) as f64;
                *k == clip_key(clip)
                    && masks.contains(&i)
                    && BAND_COST * widest / weights < masks.len() as f64
            })
        };

        let mut passes: Vec<Pass> = Vec::new();
        let mut sources = Vec::with_capacity(settings.len());
        for r in requests {
            let source = match r {
                Request::Linear {
                    head: choice,
                    shaping,
                    score,
                } => {
                    let h = match choice {
                        HeadChoice::Plain => LinearHead::Plain,
                        // p = 0 is the plain head: share the plain pass.
                        HeadChoice::Dice(p) if dice[dice_index(p)].sparsity().is_plain() => {
                            LinearHead::Plain
                        }
                        HeadChoice::Dice(p) => LinearHead::Dice(dice_index(p)),
                    };
                    match (h, as_clip(shaping)) {
                        (LinearHead::Dice(i), Ok(c)) if swept(c, i) => {
                            let found = passes.iter().position(|p| {
                                matches!(p, Pass::DiceSweep { clip, .. } if clip_key(*clip) == clip_key(c))
                            });
                            let pass = found.unwrap_or_else(|| {
                                passes.push(Pass::DiceSweep {
                                    clip: c,
                                    masks: Vec::new(),
                                });
                                passes.len() - 1
                            });
                            let Pass::DiceSweep { masks, .. } = &mut passes[pass] else {
                                unreachable!("found a sweep pass")
                            };
                            let score = masks.iter().position(|&j| j == i).unwrap_or_else(|| {
                                masks.push(i);
                                masks.len() - 1
                            });
                            Source { pass, score }
                        }
                        _ => {
                            let found = passes.iter().position(|p| {
                                matches!(p, Pass::Linear { head, shaping: s, .. }
                                    if *head == h && same_shaping(*s, shaping))
                            });
                            let pass = found.unwrap_or_else(|| {
                                passes.push(Pass::Linear {
                                    head: h,
                                    shaping,
                                    scores: Vec::new(),
                                });
                                passes.len() - 1
                            });
                            let Pass::Linear { scores, .. } = &mut passes[pass] else {
                                unreachable!("found a linear pass")
                            };
                            let score =
                                scores.iter().position(|x| *x == score).unwrap_or_else(|| {
                                    scores.push(score);
                                    scores.len() - 1
                                });
                            Source { pass, score }
                        }
                    }
                }
                Request::Custom(f) => {
                    passes.push(Pass::Custom(f));
                    Source {
                        pass: passes.len() - 1,
                        score: 0,
                    }
                }
            };
            sources.push(source);
        }
        Ok(Plan {
            settings: settings.to_vec(),
            dice,
            passes,
            sources,
            clips: clips.iter().map(|c| c.map(ClipValue::get)).collect(),
            fits: ctx.fits(),
        })
    }

    /// Runs pass `i` on one set.
    fn run(
        &self,
        inputs: &EvalInputs,
        heads: &[Option<Head64>],
        i: usize,
        features: ArrayView2<f32>,
    ) -> Result<Vec<Scored>, EvalError> {
        let head = inputs.head;
        match &self.passes[i] {
            Pass::Linear {
                head: which,
                shaping,
                scores,
            } => {
                let h = match which {
                    LinearHead::Plain => head,
                    LinearHead::Dice(j) => heads[*j].as_ref().expect("built for dense passes"),
                };
                shaped_logit_scores(features, h, *shaping, scores)
            }
            Pass::DiceSweep { clip, masks } => {
                let masks: Vec<DiceMask> = masks.iter().map(|&i| self.dice[i].clone()).collect();
                dice_sweep(features, head, &masks, *clip)
            }
            Pass::Custom(f) => Ok(vec![f(inputs, features)?]),
        }
    }

    /// Scores the planned settings on `inputs`' ID test set and OOD sets and computes
    /// their metrics in `convention`, in the order of the settings. `inputs.train` is not
    /// read (the fits are the plan's).
    pub fn evaluate(
        &self,
        inputs: &EvalInputs,
        convention: Convention,
    ) -> Result<Vec<Evaluation>, EvalError> {
        let settings = &self.settings[..];
        tracing::debug!(passes = self.passes.len(), fits = self.fits, "planned");
        // Masked heads only for the masks that dense passes use (swept masks need none).
        let dice_heads: Vec<Option<Head64>> = (0..self.dice.len())
            .into_par_iter()
            .map(|i| {
                let used = self.passes.iter().any(
                    |p| matches!(p, Pass::Linear { head: LinearHead::Dice(j), .. } if *j == i),
                );
                used.then(|| self.dice[i].apply(inputs.head))
            })
            .collect();
        let sets: Vec<ScoreSet> = std::iter::once(inputs.id)
            .chain(inputs.ood.iter().copied())
            .collect();
        let jobs: Vec<(usize, usize)> = (0..self.passes.len())
            .flat_map(|p| (0..sets.len()).map(move |s| (p, s)))
            .collect();
        let done: Vec<Vec<Scored>> = jobs
            .par_iter()
            .map(|&(p, s)| self.run(inputs, &dice_heads, p, sets[s].features))
            .collect::<Result<_, _>>()?;
        // Settings may share a score (e.g. `dice p=0` and `energy T=1`), so scores are cloned.
        let scored =
            |src: &Source, set: usize| done[src.pass * sets.len() + set][src.score].clone();
        let per_setting: Vec<(Scored, Vec<Scored>)> = self
            .sources
            .iter()
            .map(|src| {
                (
                    scored(src, 0),
                    (1..sets.len()).map(|s| scored(src, s)).collect(),
                )
            })
            .collect();
        settings
            .par_iter()
            .zip(per_setting)
            .zip(&self.clips)
            .map(|((setting, (id, ood)), clip)| {
                let id_sorted = SortedScores::new("ID scores", &id.scores)?;
                let metrics = ood
                    .par_iter()
                    .map(|o| {
                        let ood_sorted = SortedScores::new("OOD scores", &o.scores)?;
                        Ok(metrics_sorted(&id_sorted, &ood_sorted, convention))
                    })
                    .collect::<Result<Vec<_>, EvalError>>()?;
                Ok(Evaluation {
                    setting: *setting,
                    params: setting.params_json(*clip),
                    id_accuracy: id_accuracy(&id.predicted, inputs.id_labels)?,
                    id,
                    ood,
                    metrics,
                })
            })
            .collect()
    }
}

/// Scores every setting on every set and computes its metrics in `convention`.
/// Results come back in the order of `settings`.
pub fn evaluate(
    inputs: &EvalInputs,
    settings: &[Setting],
    convention: Convention,
) -> Result<Vec<Evaluation>, EvalError> {
    Plan::new(inputs, settings)?.evaluate(inputs, convention)
}
