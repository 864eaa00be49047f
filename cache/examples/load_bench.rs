//! Load time and peak memory of a large split (run once by hand, not a test):
//!
//! ```text
//! cargo run --release -p posthoc-cache --example load_bench -- write /tmp/big 90000 2048 1000
//! cargo run --release -p posthoc-cache --example load_bench -- read /tmp/big
//! cargo run --release -p posthoc-cache --example load_bench -- read-nohash /tmp/big
//! cargo run --release -p posthoc-cache --example load_bench -- stream /tmp/big
//! cargo run --release -p posthoc-cache --example load_bench -- verify /tmp/big
//! ```
//!
//! Each command runs in its own process so that the peak RSS (VmHWM) is its own.

use std::time::Instant;

use ndarray::{Array1, Array2};
use posthoc_cache::{
    CacheWriter, FeatureCache, Head, ManifestInit, ModelInfo, Role, SplitData, ToolInfo,
};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(seed: u64) -> f32 {
    (mix(seed) >> 40) as f32 / (1u64 << 24) as f32
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let t = Instant::now();
    match args[0].as_str() {
        "write" => {
            let n: u64 = args[2].parse().unwrap();
            let m: usize = args[3].parse().unwrap();
            let c: usize = args[4].parse().unwrap();
            let init = ManifestInit {
                model: ModelInfo {
                    id: "synthetic".into(),
                    checkpoint_sha256: None,
                    feature_dim: m,
                    num_classes: c,
                    class_names: (0..c).map(|k| k.to_string()).collect(),
                },
                preprocessing: serde_json::json!({}),
                tool: ToolInfo::this_crate(),
                created: None,
                provenance: serde_json::json!({"example": "load_bench"}),
            };
            let mut w = CacheWriter::create(&dir, init).unwrap();
            w.write_head(&Head {
                weight: Array2::from_shape_fn((c, m), |(k, i)| unit((k * m + i) as u64) - 0.5),
                bias: Array1::zeros(c),
            })
            .unwrap();
            let mut sw = w.split_writer("big", Role::Ood).unwrap();
            let batch = 4096u64;
            for start in (0..n).step_by(batch as usize) {
                let idx: Vec<u64> = (start..(start + batch).min(n)).collect();
                let rows = idx.len();
                // ReLU-like features: ~40% exact zeros, the rest in (0, 2).
                let features = Array2::from_shape_fn((rows, m), |(r, i)| {
                    (unit(idx[r] * 4099 + i as u64) * 3.33 - 1.33).max(0.0)
                });
                let logits = Array2::from_shape_fn((rows, c), |(r, k)| {
                    unit(idx[r] * 7919 + k as u64 + (1 << 40)) * 20.0 - 10.0
                });
                sw.append(&SplitData {
                    paths: idx.iter().map(|i| format!("val/{i:08}.JPEG")).collect(),
                    labels: vec![-1; rows],
                    index: idx,
                    features,
                    logits,
                })
                .unwrap();
            }
            sw.close().unwrap();
            let manifest = w.finish().unwrap();
            let e = manifest.split_entry("big").unwrap();
            println!(
                "write: {:.2}s, {} rows, file {:.1} MiB",
                t.elapsed().as_secs_f64(),
                e.rows,
                e.bytes as f64 / (1 << 20) as f64
            );
        }
        "read" | "read-nohash" => {
            let cache = FeatureCache::open_with(&dir, args[0] == "read").unwrap();
            let data = cache.split("big").unwrap();
            let raw = (data.features.len() + data.logits.len()) * 4;
            println!(
                "{}: {:.2}s, features {:?}, raw f32 bytes {:.1} MiB (features {:.1} MiB), peak RSS {:.1} MiB",
                args[0],
                t.elapsed().as_secs_f64(),
                data.features.dim(),
                raw as f64 / (1 << 20) as f64,
                (data.features.len() * 4) as f64 / (1 << 20) as f64,
                peak_rss_mib()
            );
        }
        "stream" => {
            let cache = FeatureCache::open(&dir).unwrap();
            let mut rows = 0;
            for b in cache.stream_split("big", 4096).unwrap() {
                rows += b.unwrap().rows();
            }
            println!(
                "stream: {:.2}s, {rows} rows, peak RSS {:.1} MiB",
                t.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
        }
        "verify" => {
            let report = posthoc_cache::verify(&dir).unwrap();
            println!(
                "verify: {:.2}s, ok = {}, peak RSS {:.1} MiB",
                t.elapsed().as_secs_f64(),
                report.is_ok(),
                peak_rss_mib()
            );
        }
        other => panic!("unknown command {other}"),
    }
}
