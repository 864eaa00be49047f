//! Shared helpers of the integration tests: deterministic synthetic caches.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use posthoc_cache::{
    CacheWriter, Head, Manifest, ManifestInit, ModelInfo, Role, SplitData, ToolInfo, WriterOptions,
};

/// splitmix64: a tiny deterministic generator.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) from a seed.
pub fn unit(seed: u64) -> f32 {
    (mix(seed) >> 40) as f32 / (1u64 << 24) as f32
}

pub fn init(m: usize, c: usize) -> ManifestInit {
    ManifestInit {
        model: ModelInfo {
            id: "synthetic".into(),
            checkpoint_sha256: None,
            feature_dim: m,
            num_classes: c,
            class_names: (0..c).map(|k| format!("class{k}")).collect(),
        },
        preprocessing: serde_json::json!({"resize": 32}),
        tool: ToolInfo {
            name: "test".into(),
            version: "0".into(),
        },
        created: None,
        provenance: serde_json::json!({"test": true}),
    }
}

pub fn head(m: usize, c: usize) -> Head {
    Head {
        weight: Array2::from_shape_fn((c, m), |(k, i)| unit(1_000_000 + (k * m + i) as u64) - 0.5),
        bias: Array1::from_shape_fn(c, |k| unit(2_000_000 + k as u64) - 0.5),
    }
}

/// Row `index` of a set: ReLU-like features (about a third exactly zero), logits,
/// label `index % c` for ID sets and -1 for OOD.
pub fn rows(set_seed: u64, indices: &[u64], m: usize, c: usize, role: Role) -> SplitData {
    let n = indices.len();
    let features = Array2::from_shape_fn((n, m), |(r, i)| {
        let v = unit(set_seed ^ mix(indices[r]) ^ ((i as u64) << 40)) * 3.0 - 1.0;
        v.max(0.0)
    });
    let logits = Array2::from_shape_fn((n, c), |(r, k)| {
        unit(set_seed ^ mix(indices[r] + 7) ^ ((k as u64) << 44)) * 10.0 - 5.0
    });
    SplitData {
        index: indices.to_vec(),
        paths: indices.iter().map(|i| format!("dir/{i:05}.png")).collect(),
        labels: indices
            .iter()
            .map(|&i| {
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

/// The sets of the standard synthetic cache: (name, role, seed, rows).
pub const SETS: [(&str, Role, u64, u64); 3] = [
    ("id_train", Role::IdTrain, 11, 300),
    ("id_test", Role::IdTest, 22, 120),
    ("noise", Role::Ood, 33, 90),
];

pub const M: usize = 12;
pub const C: usize = 4;

/// Writes the standard synthetic cache to `dir` with `row_group_rows`, appending in
/// batches of 37 rows; only rows whose index satisfies `keep` are written (shards).
pub fn write_cache(dir: &Path, row_group_rows: usize, keep: impl Fn(u64) -> bool) -> Manifest {
    let options = WriterOptions {
        row_group_rows,
        ..Default::default()
    };
    write_cache_with(dir, options, keep)
}

/// [`write_cache`] with explicit writer options.
pub fn write_cache_with(
    dir: &Path,
    options: WriterOptions,
    keep: impl Fn(u64) -> bool,
) -> Manifest {
    let mut w = CacheWriter::create_with(dir, init(M, C), options).unwrap();
    w.write_head(&head(M, C)).unwrap();
    for (set, role, seed, n) in SETS {
        let mut sw = w.split_writer(set, role).unwrap();
        let all: Vec<u64> = (0..n).filter(|&i| keep(i)).collect();
        for chunk in all.chunks(37) {
            sw.append(&rows(seed, chunk, M, C, role)).unwrap();
        }
        sw.close().unwrap();
    }
    w.finish().unwrap()
}

/// The rows of set `set` of the standard cache, all of them.
pub fn expected_split(set: &str) -> SplitData {
    let (_, role, seed, n) = SETS.iter().copied().find(|s| s.0 == set).unwrap();
    rows(seed, &(0..n).collect::<Vec<_>>(), M, C, role)
}

/// Rewrites the manifest entry of `name` to match the file now on disk (size, hash),
/// so that a test can reach the reader's own checks.
pub fn reseal(dir: &Path, name: &str) {
    use sha2::Digest;
    let path = dir.join("manifest.json");
    let mut manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join(name)).unwrap();
    let entry = manifest.files.iter_mut().find(|f| f.name == name).unwrap();
    entry.bytes = bytes.len() as u64;
    entry.sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

/// `../shared/fixtures/<sub>` relative to the repository root, if present.
pub fn fixture(sub: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(sub);
    if p.exists() {
        Some(p)
    } else {
        println!("skipping: ../shared/fixtures/{sub} not found");
        None
    }
}
