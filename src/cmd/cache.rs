//! `posthoc cache info|verify|import-npy|merge|copy`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use posthoc_cache::{
    CacheLocation, CopyAction, FeatureCache, ImportOptions, LockOptions, Role, WriteLock,
};

/// Cache subcommands. Every cache argument is a location: a directory, or a URL
/// (`file://`, `s3://bucket/prefix`, `gs://`, `az://`, read-only `http(s)://`).
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Print what a cache holds: model, dims, sets, row counts, statistics, provenance.
    Info {
        /// Cache location.
        location: String,
    },
    /// Read every file completely and check hashes, schemas, dims, row counts, values.
    Verify {
        /// Cache location.
        location: String,
    },
    /// Build a cache from a folder of `.npy` arrays (`<set>_feat.npy`, `<set>_logits.npy`,
    /// `<set>_files.txt`, `<set>_labels.npy`, `fc_weight.npy`, `fc_bias.npy`).
    ImportNpy(ImportArgs),
    /// Join caches written as disjoint shards (`precompute --shard i/n`) into one.
    Merge {
        /// Output cache location.
        #[arg(long)]
        out: String,
        /// Shard cache locations.
        #[arg(required = true)]
        inputs: Vec<String>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Copy a cache between two locations: resumable (files whose sha256 already matches
    /// are skipped), each file read back and checked, the manifest written last.
    Copy {
        /// Source cache location.
        src: String,
        /// Destination cache location.
        dst: String,
        #[command(flatten)]
        lock: LockArgs,
    },
}

/// How a writer treats the destination's lock.
#[derive(Debug, Clone, Copy, Args)]
pub struct LockArgs {
    /// Wait for another writer of the same destination to finish instead of failing.
    #[arg(long)]
    pub wait_lock: bool,
    /// Take over a stale lock (its holder died or stopped its heartbeat).
    #[arg(long)]
    pub break_lock: bool,
    /// Seconds without a heartbeat after which a lock on an object store is stale.
    #[arg(long, default_value_t = 60)]
    pub stale_after: u64,
}

impl LockArgs {
    /// Takes the writer's lock on `location`.
    pub fn acquire(&self, location: &CacheLocation) -> anyhow::Result<WriteLock> {
        let options = LockOptions {
            wait: self.wait_lock,
            break_stale: self.break_lock,
            stale_after: std::time::Duration::from_secs(self.stale_after),
        };
        Ok(WriteLock::acquire(location, &options)?)
    }
}

/// `posthoc cache import-npy`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Folder of `.npy` arrays.
    #[arg(long = "from")]
    from: PathBuf,
    /// Cache directory to create.
    #[arg(long)]
    out: PathBuf,
    /// Model id for the manifest.
    #[arg(long, default_value = "imported")]
    model_id: String,
    /// Class names in label order, comma separated (default 0..C-1).
    #[arg(long, value_delimiter = ',')]
    class_names: Option<Vec<String>>,
    /// sha256 of the checkpoint the features came from.
    #[arg(long)]
    checkpoint_sha256: Option<String>,
}

/// Runs a cache subcommand.
pub fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    match cmd {
        CacheCommand::Info { location } => info(&location),
        CacheCommand::Verify { location } => {
            let dir = local_dir(&location)?;
            let report = posthoc_cache::verify(&dir)?;
            for f in &report.passed {
                println!(
                    "ok       {:<28} {:<9} {:>9} rows {:>12} bytes",
                    f.name,
                    f.role.as_str(),
                    f.rows,
                    f.bytes
                );
            }
            for p in &report.problems {
                println!("PROBLEM  {p}");
            }
            if !report.is_ok() {
                bail!(
                    "{location}: {} problem(s) found; the first: {}",
                    report.problems.len(),
                    report.problems[0]
                );
            }
            println!("{location}: verified {} files", report.passed.len());
            Ok(())
        }
        CacheCommand::ImportNpy(a) => {
            let options = ImportOptions {
                model_id: a.model_id,
                class_names: a.class_names,
                checkpoint_sha256: a.checkpoint_sha256,
                preprocessing: serde_json::json!({}),
                created: None,
            };
            let manifest = posthoc_cache::import_npy(&a.from, &a.out, &options)
                .with_context(|| format!("importing {}", a.from.display()))?;
            println!(
                "wrote {} ({} files, m = {}, C = {})",
                a.out.display(),
                manifest.files.len(),
                manifest.model.feature_dim,
                manifest.model.num_classes
            );
            Ok(())
        }
        CacheCommand::Merge { out, inputs, lock } => {
            let out_loc = CacheLocation::parse(&out)?;
            let inputs_loc = inputs
                .iter()
                .map(|i| CacheLocation::parse(i))
                .collect::<Result<Vec<_>, _>>()?;
            let _lock = lock.acquire(&out_loc)?;
            let manifest = posthoc_cache::merge_locations(&inputs_loc, &out_loc)?;
            println!(
                "merged {} caches into {out} ({} files)",
                inputs.len(),
                manifest.files.len()
            );
            Ok(())
        }
        CacheCommand::Copy { src, dst, lock } => copy(&src, &dst, lock),
    }
}

/// A local directory holding the cache at `location` (a remote one is fetched through
/// the download cache, every file's sha256 checked on arrival).
fn local_dir(location: &str) -> anyhow::Result<PathBuf> {
    Ok(match CacheLocation::parse(location)? {
        CacheLocation::Local(d) => d,
        CacheLocation::Remote(u) => posthoc_cache::store::fetch_remote(&u)?,
    })
}

fn copy(src: &str, dst: &str, lock: LockArgs) -> anyhow::Result<()> {
    let (src_loc, dst_loc) = (CacheLocation::parse(src)?, CacheLocation::parse(dst)?);
    let _lock = lock.acquire(&dst_loc)?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:36}] {bytes}/{total_bytes} {bytes_per_sec:>12} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix("copy");
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = posthoc_cache::store::copy(&src_loc, &dst_loc, |name, bytes| {
        bar.set_message(name.to_string());
        bar.inc(bytes);
    });
    bar.finish_and_clear();
    let report = report?;
    let (mut copied, mut skipped) = (0u64, 0u64);
    for (name, bytes, action) in &report.files {
        let what = match action {
            CopyAction::Copied => {
                copied += bytes;
                "copied "
            }
            CopyAction::Skipped => {
                skipped += bytes;
                "present"
            }
        };
        println!("{what}  {name:<28} {bytes:>12} bytes");
    }
    println!(
        "{src} -> {dst}: {} files, {copied} bytes copied, {skipped} bytes already present (sha256 matched), manifest written last",
        report.files.len()
    );
    Ok(())
}

fn info(location: &str) -> anyhow::Result<()> {
    let cache = FeatureCache::open_url(location, true)?;
    let m = cache.manifest();
    println!("cache        {location}");
    println!("format       v{}", m.format_version);
    println!("model        {}", m.model.id);
    if let Some(sha) = &m.model.checkpoint_sha256 {
        println!("checkpoint   sha256 {sha}");
    }
    println!(
        "dims         m = {} features, C = {} classes",
        m.model.feature_dim, m.model.num_classes
    );
    println!("classes      {}", m.model.class_names.join(", "));
    println!("tool         {} {}", m.tool.name, m.tool.version);
    if let Some(c) = &m.created {
        println!("created      {c}");
    }
    if !m.preprocessing.is_null() && m.preprocessing != serde_json::json!({}) {
        println!("preprocess   {}", m.preprocessing);
    }
    print_provenance(&m.provenance);
    println!("files");
    for f in &m.files {
        println!(
            "  {:<28} {:<9} {:<14} {:>9} rows {:>12} bytes",
            f.name,
            f.role.as_str(),
            f.set.as_deref().unwrap_or("-"),
            f.rows,
            f.bytes
        );
    }
    if !m.skipped.is_empty() {
        println!("skipped inputs: {}", m.skipped.len());
        for s in m.skipped.iter().take(10) {
            println!("  {}/{}: {}", s.set, s.path, s.reason);
        }
    }
    if cache.sets(Role::IdTrain).is_empty() {
        println!("stats        none (no ID-train split)");
    } else if let Ok(stats) = cache.stats() {
        println!(
            "stats        n_train = {}, mean train CE = {:.6}, train accuracy = {:.4}",
            stats.n_train, stats.mean_ce, stats.accuracy
        );
        if let Some((f32v, _)) = stats.activation_percentiles.at(90.0) {
            println!("             ReAct threshold p90 = {f32v}");
        }
    }
    Ok(())
}

/// The provenance keys `precompute` records, one line each (`merged_from` entries
/// indented below).
fn print_provenance(p: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let tool = &p["tool"];
    if !tool.is_null() {
        println!(
            "built by     {} {} (git {})",
            text(&tool["name"]),
            text(&tool["version"]),
            text(&tool["git_commit"])
        );
    }
    for (key, label) in [
        ("host", "host"),
        ("started", "started"),
        ("finished", "finished"),
        ("shard", "shard"),
    ] {
        if !p[key].is_null() {
            println!("{label:<12} {}", text(&p[key]));
        }
    }
    if let Some(cmd) = p["command"].as_array() {
        let words: Vec<String> = cmd.iter().map(text).collect();
        println!("command      {}", words.join(" "));
    }
    if let Some(sets) = p["sets"].as_array() {
        for s in sets {
            println!(
                "run          {:<14} {:>8} images in {:>8.1} s = {:>8.1} images/s",
                text(&s["name"]),
                s["processed"],
                s["seconds"].as_f64().unwrap_or(0.0),
                s["images_per_second"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if let Some(from) = p["merged_from"].as_array() {
        println!("merged from  {} caches", from.len());
        for f in from {
            println!("  {}", text(&f["dir"]));
            print_indented(&f["provenance"]);
        }
    }
}

fn print_indented(p: &serde_json::Value) {
    for key in ["host", "started", "finished", "shard"] {
        if !p[key].is_null() {
            println!("    {key:<10} {}", p[key]);
        }
    }
}
