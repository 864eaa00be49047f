//! The sweep engine: scores every [`Setting`] on the ID test set and every OOD set and
//! computes the metrics, doing each piece of shared work once.
//!
//! Plan: settings are grouped into *passes* over the features. All logit-only scores
//! (MSP, MaxLogit, energy and temperature-scaled MSP at any temperature) share one pass
//! of the plain head; each distinct clip value is one pass shared by every score that
//! uses it; DICE masks for all sparsities come from one sort of `V = mu * W` and each
//! masked head is built once, then shared by DICE and DICE + ReAct; LINe and HIMPLoS
//! masks are built once per parameter pair. Passes x sets run in parallel (rayon), and
//! so do the metrics of settings x OOD sets.

use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;
use serde_json::{Map, Value};

use super::EvalError;
use super::dice_sweep::dice_sweep;
use super::head::{Head64, LogitScore, logit_scores};
use super::masks::{DiceMask, HimplosMask, LineMasks};
use super::metrics::{Convention, Metrics, SortedScores, id_accuracy, metrics_sorted};
use super::params::{Clip, ClipValue, LinePercentile, Sparsity, Temperature};
use super::scores::{self, Scored};
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

/// Which head a linear pass uses.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LinearHead {
    Plain,
    /// Index into the DICE masks.
    Dice(usize),
}

/// One pass over a set's features.
#[derive(Debug, Clone)]
enum Pass {
    /// `scores` of `W' min(h, c) + b` for one head `W'` and one optional clip.
    Linear {
        head: LinearHead,
        clip: Option<ClipValue>,
        scores: Vec<LogitScore>,
    },
    /// DICE energies of several nested masks (indices into the DICE masks) in one band
    /// pass ([`dice_sweep`]).
    DiceSweep {
        clip: Option<ClipValue>,
        masks: Vec<usize>,
    },
    /// LINe with one clip and one mask pair (index into the LINe masks).
    Line { clip: ClipValue, masks: usize },
    /// HIMPLoS with one mask (index into the HIMPLoS masks), clip and temperature.
    Himplos {
        mask: usize,
        clip: ClipValue,
        t: Temperature,
    },
}

/// Where a setting's scores come from: a pass and a score within it.
#[derive(Debug, Clone, Copy)]
struct Source {
    pass: usize,
    score: usize,
}

/// The masks and passes a list of settings needs.
struct Plan {
    dice: Vec<DiceMask>,
    line: Vec<LineMasks>,
    himplos: Vec<HimplosMask>,
    passes: Vec<Pass>,
    sources: Vec<Source>,
    clips: Vec<Option<f64>>,
}

impl Plan {
    fn new(inputs: &EvalInputs, settings: &[Setting]) -> Result<Self, EvalError> {
        let head = inputs.head;
        // Resolve every clip once (a percentile clip reads the ID-train percentile).
        let resolve = |c: Clip| c.resolve(|q| (inputs.train_percentile)(q));
        let clips: Vec<Option<ClipValue>> = settings
            .iter()
            .map(|s| s.clip().map(resolve).transpose())
            .collect::<Result<_, _>>()?;

        // DICE masks: one sort of V for every sparsity.
        let mut dice_ps: Vec<Sparsity> = Vec::new();
        for s in settings {
            if let Setting::Dice(p) | Setting::DiceReact(p, _) = *s
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

        let mut line_params: Vec<(LinePercentile, LinePercentile)> = Vec::new();
        let mut himplos_ps: Vec<Sparsity> = Vec::new();
        for s in settings {
            match *s {
                Setting::Line { p_a, p_w, .. } if !line_params.contains(&(p_a, p_w)) => {
                    line_params.push((p_a, p_w))
                }
                Setting::Himplos { p, .. } if !himplos_ps.contains(&p) => himplos_ps.push(p),
                _ => {}
            }
        }
        let line = if line_params.is_empty() {
            Vec::new()
        } else {
            let s = &inputs.class_means * &head.weights();
            line_params
                .iter()
                .map(|&(p_a, p_w)| LineMasks::new(s.view(), head, p_a, p_w))
                .collect::<Result<_, _>>()?
        };
        let himplos = himplos_ps
            .iter()
            .map(|&p| HimplosMask::new(head, p))
            .collect::<Result<_, _>>()?;

        // DICE masks with p > 0 that share a clip go through one band pass when that is
        // cheaper than a dense pass per mask.
        let mut dice_groups: Vec<(Option<u64>, Vec<usize>)> = Vec::new();
        for (s, &clip) in settings.iter().zip(&clips) {
            if let Setting::Dice(p) | Setting::DiceReact(p, _) = *s
                && !p.is_plain()
            {
                let i = dice_ps.iter().position(|&q| q == p).expect("planned above");
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
        for (s, &clip) in settings.iter().zip(&clips) {
            let linear =
                |head: LinearHead, clip: Option<ClipValue>, score: LogitScore| (head, clip, score);
            let dice_head = |p: Sparsity| {
                let i = dice_ps.iter().position(|&q| q == p).expect("planned above");
                // p = 0 is the plain head: share the plain pass.
                if dice[i].sparsity().is_plain() {
                    LinearHead::Plain
                } else {
                    LinearHead::Dice(i)
                }
            };
            let energy1 = LogitScore::Energy(Temperature::ONE);
            let want = match *s {
                Setting::Msp => Some(linear(LinearHead::Plain, None, LogitScore::Msp)),
                Setting::MaxLogit => Some(linear(LinearHead::Plain, None, LogitScore::MaxLogit)),
                Setting::Energy(t) => Some(linear(LinearHead::Plain, None, LogitScore::Energy(t))),
                Setting::TempMsp(t) => {
                    Some(linear(LinearHead::Plain, None, LogitScore::TempMsp(t)))
                }
                Setting::React(_) => Some(linear(LinearHead::Plain, clip, energy1)),
                Setting::Dice(p) => Some(linear(dice_head(p), None, energy1)),
                Setting::DiceReact(p, _) => Some(linear(dice_head(p), clip, energy1)),
                Setting::Line { .. } | Setting::Himplos { .. } => None,
            };
            let source = match want {
                Some((LinearHead::Dice(i), c, _)) if swept(c, i) => {
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
                Some((h, c, score)) => {
                    let found = passes.iter().position(|p| {
                        matches!(p, Pass::Linear { head, clip, .. }
                            if *head == h && clip_key(*clip) == clip_key(c))
                    });
                    let pass = found.unwrap_or_else(|| {
                        passes.push(Pass::Linear {
                            head: h,
                            clip: c,
                            scores: Vec::new(),
                        });
                        passes.len() - 1
                    });
                    let Pass::Linear { scores, .. } = &mut passes[pass] else {
                        unreachable!("found a linear pass")
                    };
                    let score = scores.iter().position(|x| *x == score).unwrap_or_else(|| {
                        scores.push(score);
                        scores.len() - 1
                    });
                    Source { pass, score }
                }
                None => {
                    let pass = match *s {
                        Setting::Line { p_a, p_w, .. } => Pass::Line {
                            clip: clip.expect("LINe has a clip"),
                            masks: line_params.iter().position(|&x| x == (p_a, p_w)).unwrap(),
                        },
                        Setting::Himplos { p, t, .. } => Pass::Himplos {
                            mask: himplos_ps.iter().position(|&x| x == p).unwrap(),
                            clip: clip.expect("HIMPLoS has a clip"),
                            t,
                        },
                        _ => unreachable!("linear settings handled above"),
                    };
                    passes.push(pass);
                    Source {
                        pass: passes.len() - 1,
                        score: 0,
                    }
                }
            };
            sources.push(source);
        }
        Ok(Plan {
            dice,
            line,
            himplos,
            passes,
            sources,
            clips: clips.iter().map(|c| c.map(ClipValue::get)).collect(),
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
                clip,
                scores,
            } => {
                let h = match which {
                    LinearHead::Plain => head,
                    LinearHead::Dice(j) => heads[*j].as_ref().expect("built for dense passes"),
                };
                logit_scores(features, h, *clip, scores)
            }
            Pass::DiceSweep { clip, masks } => {
                let masks: Vec<DiceMask> = masks.iter().map(|&i| self.dice[i].clone()).collect();
                dice_sweep(features, head, &masks, *clip)
            }
            Pass::Line { clip, masks } => Ok(vec![scores::line(
                features,
                head,
                *clip,
                &self.line[*masks],
            )?]),
            Pass::Himplos { mask, clip, t } => Ok(vec![scores::himplos(
                features,
                head,
                &self.himplos[*mask],
                *clip,
                *t,
                inputs.class_means,
            )?]),
        }
    }
}

/// Scores every setting on every set and computes its metrics in `convention`.
/// Results come back in the order of `settings`.
pub fn evaluate(
    inputs: &EvalInputs,
    settings: &[Setting],
    convention: Convention,
) -> Result<Vec<Evaluation>, EvalError> {
    let plan = Plan::new(inputs, settings)?;
    // Masked heads only for the masks that dense passes use (swept masks need none).
    let dice_heads: Vec<Option<Head64>> = (0..plan.dice.len())
        .into_par_iter()
        .map(|i| {
            let used = plan
                .passes
                .iter()
                .any(|p| matches!(p, Pass::Linear { head: LinearHead::Dice(j), .. } if *j == i));
            used.then(|| plan.dice[i].apply(inputs.head))
        })
        .collect();
    let sets: Vec<ScoreSet> = std::iter::once(inputs.id)
        .chain(inputs.ood.iter().copied())
        .collect();
    let jobs: Vec<(usize, usize)> = (0..plan.passes.len())
        .flat_map(|p| (0..sets.len()).map(move |s| (p, s)))
        .collect();
    let done: Vec<Vec<Scored>> = jobs
        .par_iter()
        .map(|&(p, s)| plan.run(inputs, &dice_heads, p, sets[s].features))
        .collect::<Result<_, _>>()?;
    // Settings may share a score (e.g. `dice p=0` and `energy T=1`), so scores are cloned.
    let scored = |src: &Source, set: usize| done[src.pass * sets.len() + set][src.score].clone();
    let per_setting: Vec<(Scored, Vec<Scored>)> = plan
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
        .zip(&plan.clips)
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
