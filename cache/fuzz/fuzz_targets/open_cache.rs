//! A real small cache (written once per process by `CacheWriter`: head, statistics, three
//! splits in 16-row row groups) with one of its files damaged by the input, then opened
//! and read whole with and without hash checks, and verified. Never a panic or a hang.
//!
//! Input: byte 0 picks the file (the data files in manifest order, then `manifest.json`);
//! byte 1 picks what happens to it: bits 0-1 `0` = replaced by the rest of the input,
//! `1` = the rest written over it at the offset in bytes 2-5 (little-endian, modulo its
//! size), `2` = truncated at that offset; bit 2 set = the manifest's size and sha256 of the
//! file updated to the new bytes ("resealed"), so the Parquet decoder's own checks are hit.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ndarray::{Array1, Array2};
use posthoc_cache::{
    CacheWriter, Head, ManifestInit, ModelInfo, Role, SplitData, ToolInfo, WriterOptions,
};
use sha2::{Digest, Sha256};

#[path = "../../tests/common/read_all.rs"]
mod read_all;

const M: usize = 8;
const C: usize = 3;

/// The pristine cache and the names of its files (data files, then the manifest).
fn seed() -> &'static (tempfile::TempDir, Vec<String>) {
    static SEED: OnceLock<(tempfile::TempDir, Vec<String>)> = OnceLock::new();
    SEED.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let init = ManifestInit {
            model: ModelInfo {
                id: "fuzz".into(),
                checkpoint_sha256: None,
                feature_dim: M,
                num_classes: C,
                class_names: (0..C).map(|k| format!("c{k}")).collect(),
            },
            preprocessing: serde_json::json!({}),
            tool: ToolInfo::this_crate(),
            created: None,
            provenance: serde_json::json!({}),
        };
        let options = WriterOptions {
            row_group_rows: 16,
            ..Default::default()
        };
        let mut w = CacheWriter::create_with(&dir, init, options).unwrap();
        let value = |i: usize| ((i * 2654435761) % 1000) as f32 / 250.0 - 1.0;
        w.write_head(&Head {
            weight: Array2::from_shape_fn((C, M), |(k, i)| value(k * M + i)),
            bias: Array1::from_shape_fn(C, value),
        })
        .unwrap();
        for (set, role, n) in [
            ("id_train", Role::IdTrain, 40u64),
            ("id_test", Role::IdTest, 30),
            ("noise", Role::Ood, 20),
        ] {
            let mut sw = w.split_writer(set, role).unwrap();
            let index: Vec<u64> = (0..n).collect();
            let r = n as usize;
            sw.append(&SplitData {
                paths: index.iter().map(|i| format!("{set}/{i}.png")).collect(),
                labels: index
                    .iter()
                    .map(|&i| if role.is_id() { (i % C as u64) as i32 } else { -1 })
                    .collect(),
                features: Array2::from_shape_fn((r, M), |(j, i)| value(j * 31 + i).max(0.0)),
                logits: Array2::from_shape_fn((r, C), |(j, k)| value(j * 7 + k) * 5.0),
                index,
            })
            .unwrap();
            sw.close().unwrap();
        }
        let manifest = w.finish().unwrap();
        let mut names: Vec<String> = manifest.files.iter().map(|f| f.name.clone()).collect();
        names.push(posthoc_cache::MANIFEST_FILE.to_string());
        (tmp, names)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Writes the size and sha256 of `bytes` into the manifest entry of `name`.
fn reseal(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(posthoc_cache::MANIFEST_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let Ok(mut m) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    if let Some(files) = m["files"].as_array_mut() {
        for f in files.iter_mut().filter(|f| f["name"] == name) {
            f["bytes"] = bytes.len().into();
            f["sha256"] = hex::encode(Sha256::digest(bytes)).into();
        }
    }
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (tmp, names) = seed();
    let work = tempfile::tempdir().unwrap();
    let dir: PathBuf = work.path().join("cache");
    copy_dir(&tmp.path().join("cache"), &dir);
    let name = &names[data[0] as usize % names.len()];
    let path = dir.join(name);
    let original = std::fs::read(&path).unwrap();
    let mode = data[1];
    let rest = &data[2..];
    let offset = |len: usize| -> usize {
        let o = rest.get(..4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
        o as usize % len.max(1)
    };
    let damaged = match mode & 3 {
        0 => rest.to_vec(),
        1 => {
            let mut b = original.clone();
            let at = offset(b.len());
            for (i, v) in rest.iter().skip(4).enumerate() {
                if let Some(slot) = b.get_mut(at + i) {
                    *slot = *v;
                }
            }
            b
        }
        _ => original[..offset(original.len())].to_vec(),
    };
    std::fs::write(&path, &damaged).unwrap();
    if mode & 4 != 0 && name != posthoc_cache::MANIFEST_FILE {
        reseal(&dir, name, &damaged);
    }
    for check_hashes in [true, false] {
        let _ = read_all::read_all(&dir, check_hashes, 7);
    }
});
