//! `just bench-scale`: an ImageNet-size cache, written and finished in bounded memory.
//!
//! ```text
//! bench_scale write  DIR ROWS M C [TEST_ROWS OOD_ROWS]   # head + splits, closed (not finished)
//! bench_scale finish DIR                                 # statistics + manifest, timed
//! ```
//!
//! `write` streams synthetic rows (ReLU-like features, about a third exactly zero;
//! labels `row % C`) into a [`CacheWriter`] in 8192-row batches; `finish` resumes that
//! write and finishes it: joins the parts, computes every statistic (mean, class means,
//! contributions, exact percentiles by streaming radix selection) in streaming passes,
//! writes the manifest. Each prints its wall time and this process's peak RSS (VmHWM),
//! so the two phases are measured separately.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{Array1, Array2};
use posthoc_cache::{CacheWriter, Head, ManifestInit, ModelInfo, Role, SplitData, ToolInfo};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1), quantised to 2^-16 (compressible like real activations, not noise).
fn unit(seed: u64) -> f32 {
    (mix(seed) >> 48) as f32 / 65536.0
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn batch(seed: u64, first: u64, n: usize, m: usize, c: usize, role: Role) -> SplitData {
    let features = Array2::from_shape_fn((n, m), |(r, i)| {
        let row = first + r as u64;
        (unit(seed ^ (row << 12) ^ i as u64) * 3.0 - 1.0).max(0.0)
    });
    let logits = Array2::from_shape_fn((n, c), |(r, k)| {
        let row = first + r as u64;
        unit(seed ^ 0xabcdef ^ (row << 11) ^ k as u64) * 10.0 - 5.0
    });
    SplitData {
        index: (first..first + n as u64).collect(),
        paths: (first..first + n as u64)
            .map(|i| format!("n{:08}/{i:08}.JPEG", i % c as u64))
            .collect(),
        labels: (first..first + n as u64)
            .map(|i| {
                if role.is_id() {
                    (i % c as u64) as i32
                } else {
                    -1
                }
            })
            .collect(),
        features,
        logits,
    }
}

fn write(dir: PathBuf, sets: &[(&str, Role, u64)], m: usize, c: usize) {
    let started = Instant::now();
    let init = ManifestInit {
        model: ModelInfo {
            id: "synthetic-imagenet".into(),
            checkpoint_sha256: None,
            feature_dim: m,
            num_classes: c,
            class_names: (0..c).map(|k| format!("class{k}")).collect(),
        },
        preprocessing: serde_json::json!({"synthetic": true}),
        tool: ToolInfo::this_crate(),
        created: None,
        provenance: serde_json::json!({"bench": "bench_scale"}),
    };
    let mut w = CacheWriter::create(&dir, init).expect("create");
    w.write_head(&Head {
        weight: Array2::from_shape_fn((c, m), |(k, i)| unit(7 ^ ((k * m + i) as u64)) - 0.5),
        bias: Array1::from_shape_fn(c, |k| unit(9 ^ k as u64) - 0.5),
    })
    .expect("head");
    for (s, &(set, role, rows)) in sets.iter().enumerate() {
        let mut sw = w.split_writer(set, role).expect("split writer");
        let mut first = 0;
        while first < rows {
            let n = (rows - first).min(8192) as usize;
            sw.append(&batch(s as u64 + 1, first, n, m, c, role))
                .expect("append");
            first += n as u64;
        }
        sw.close().expect("close");
    }
    println!(
        "write  {}: {} s, peak RSS {:.0} MiB",
        sets.iter()
            .map(|(s, _, r)| format!("{s} {r} x {m}"))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs(),
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_scale write DIR ROWS M C [TEST_ROWS OOD_ROWS] | finish DIR";
    match args.first().map(String::as_str) {
        Some("write") if args.len() >= 5 => {
            let n = |i: usize| -> u64 { args[i].parse().expect(usage) };
            let (rows, m, c) = (n(2), n(3) as usize, n(4) as usize);
            let mut sets = vec![("id_train", Role::IdTrain, rows)];
            if args.len() >= 7 {
                sets.push(("id_test", Role::IdTest, n(5)));
                sets.push(("ood", Role::Ood, n(6)));
            }
            write(PathBuf::from(&args[1]), &sets, m, c);
        }
        Some("finish") if args.len() == 2 => {
            let started = Instant::now();
            let w = CacheWriter::open_resume(&args[1]).expect("resume");
            let manifest = w.finish().expect("finish");
            let train = manifest
                .files
                .iter()
                .find(|f| f.role == Role::IdTrain)
                .expect("id_train");
            println!(
                "finish id_train {} x {} ({:.1} GB of f32 features): {:.1} s, peak RSS {:.0} MiB",
                train.rows,
                manifest.model.feature_dim,
                (train.rows * manifest.model.feature_dim as u64 * 4) as f64 / 1e9,
                started.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
