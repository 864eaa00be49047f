//! `posthoc eval`: read a cache once, run a sweep, print the papers' tables, write
//! JSON / CSV / plots.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use posthoc::config::ExperimentConfig;
use posthoc::eval::sweep::{Param, SweepValues};
use posthoc::evaluate::{CacheSource, DEFAULT_VAL_FRACTION, RequestArgs, resolve_request};
use posthoc::report::{self, EvalRow};
use tracing::info;

/// `posthoc eval` arguments. Comma lists sweep (cartesian product).
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Cache directory (default: the config's `[eval] cache`).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Experiment config whose `[[eval.run]]` sweep runs when `--method` is not given.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Methods, comma separated: msp, maxlogit, energy, temp-msp, react, dice,
    /// dice-react, line, himplos, entropy, gen, kl-matching, ash-p, ash-b, ash-s, scale,
    /// knn, mahalanobis, rmd, vim, residual, she, nnguide, fdbd, gradnorm.
    #[arg(long)]
    method: Option<String>,
    /// Percent p: head sparsity (dice, dice-react, himplos) or activation percentile
    /// (ash-p, ash-b, ash-s, scale), e.g. `0,50,70,90`.
    #[arg(long, allow_hyphen_values = true)]
    p: Option<String>,
    /// Clip threshold: a number, or `pNN` = that percentile of ID-train activations.
    #[arg(long, allow_hyphen_values = true)]
    clip: Option<String>,
    /// Temperature T (energy, temp-msp, himplos, gradnorm).
    #[arg(long, allow_hyphen_values = true)]
    temperature: Option<String>,
    /// LINe activation-mask percentile p_a.
    #[arg(long = "p-a", allow_hyphen_values = true)]
    p_a: Option<String>,
    /// LINe weight-mask percentile p_w.
    #[arg(long = "p-w", allow_hyphen_values = true)]
    p_w: Option<String>,
    /// GEN's exponent gamma.
    #[arg(long, allow_hyphen_values = true)]
    gamma: Option<String>,
    /// GEN's M: how many of the largest softmax probabilities (default: all classes).
    #[arg(long = "top-m", allow_hyphen_values = true)]
    top_m: Option<String>,
    /// Nearest neighbours k (knn, nnguide).
    #[arg(long, allow_hyphen_values = true)]
    k: Option<String>,
    /// ViM / Residual principal dimension D (< m).
    #[arg(long, allow_hyphen_values = true)]
    dim: Option<String>,
    /// Fraction of ID-train rows in the knn / nnguide bank, (0, 1], seeded.
    #[arg(long = "bank-fraction", allow_hyphen_values = true)]
    bank_fraction: Option<String>,
    /// Logit score after activation shaping (react, ash-*, scale): energy, msp, maxlogit, gen.
    #[arg(long)]
    score: Option<String>,
    /// Whose reading where it differs: `paper` (default) or `pytorch-ood`.
    #[arg(long)]
    variant: Option<String>,
    /// OOD sets to report, comma separated (default: the config's, else every OOD set).
    #[arg(long, value_delimiter = ',')]
    ood: Option<Vec<String>>,
    /// Metric convention: `sklearn` (default), `dice` (DICE's `cal_metric`) or `openood`
    /// (OpenOOD v1.5: OOD positive, FPR@95 on the ID samples, trapezoid AUPRs).
    #[arg(long)]
    convention: Option<String>,
    /// Write one long-format JSON row per (method, params, OOD set).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the same rows as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write score histograms, ROC curves and sweep curves (SVG + PNG) here.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Pick each method's best setting by `auroc` or `fpr95` on a validation split (needs
    /// --val-ood); the tables show the picks, JSON/CSV the whole sweep with `selected`.
    #[arg(long)]
    select: Option<String>,
    /// The OOD set used only for validation (left out of the reported sets).
    #[arg(long = "val-ood")]
    val_ood: Option<String>,
    /// Share of the ID test rows held out for validation (seeded), in (0, 1).
    #[arg(long = "val-fraction", default_value = DEFAULT_VAL_FRACTION)]
    val_fraction: String,
    /// Skip the sha256 checks while reading (sizes, schemas, dims, values are still checked).
    #[arg(long)]
    no_verify: bool,
}

/// The parameter flags given, as `(parameter, comma list)`.
fn flag_values(args: &EvalArgs) -> Vec<(Param, &str)> {
    [
        (Param::P, &args.p),
        (Param::Clip, &args.clip),
        (Param::Temperature, &args.temperature),
        (Param::PA, &args.p_a),
        (Param::PW, &args.p_w),
        (Param::Gamma, &args.gamma),
        (Param::TopM, &args.top_m),
        (Param::K, &args.k),
        (Param::Dim, &args.dim),
        (Param::BankFraction, &args.bank_fraction),
        (Param::Score, &args.score),
        (Param::Variant, &args.variant),
    ]
    .into_iter()
    .filter_map(|(p, v)| v.as_deref().map(|v| (p, v)))
    .collect()
}

/// Runs `posthoc eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = args
        .config
        .as_ref()
        .map(|p| ExperimentConfig::load(p).map(|c| (p.clone(), c)))
        .transpose()?;
    let mut values = SweepValues::default();
    for (param, text) in flag_values(&args) {
        values.set(param, text)?;
    }
    let location = args.cache.as_ref().map(|p| p.to_string_lossy());
    let resolved = resolve_request(
        RequestArgs {
            methods: args.method.as_deref(),
            values,
            config: config.as_ref().map(|(p, c)| (p.as_path(), c)),
            ood: args.ood.clone(),
            convention: args.convention.as_deref(),
            select: args.select.as_deref(),
            val_ood: args.val_ood.as_deref(),
            val_fraction: Some(&args.val_fraction),
        },
        CacheSource::Location {
            location: location.as_deref(),
            verify: !args.no_verify,
        },
    )?;
    let evaluation = resolved.evaluate()?;
    let request = &resolved.request;
    let rows = &evaluation.rows;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let shown: Vec<EvalRow> = rows
        .iter()
        .filter(|r| r.selected != Some(false))
        .cloned()
        .collect();
    if let Some(sel) = &request.selection {
        use std::io::Write;
        writeln!(
            out,
            "== each method's setting selected by {:?} on {} and a held-out {:?} of {}; reported on the other {} ID rows\n",
            sel.metric, sel.val_ood, sel.fraction, evaluation.id_set, evaluation.n_id
        )?;
    }
    report::write_tables(&mut out, &shown)?;
    report::write_summary(&mut out, &shown)?;
    if let Some(path) = &args.json {
        report::write_json(path, rows).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        report::write_csv(path, rows).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        super::plots::write_all(dir, &evaluation.results, rows, &evaluation.ood_sets)?;
    }
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "done");
    Ok(())
}
