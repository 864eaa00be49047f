//! Building a cache from a folder of `.npy` files (features computed elsewhere).

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Axis};
use ndarray_npy::{ReadNpyError, read_npy};

use crate::data::{Head, SplitData};
use crate::error::{CacheError, Result, io_err};
use crate::manifest::{Manifest, ManifestInit, ModelInfo, Role, ToolInfo};
use crate::writer::{CacheWriter, WriterOptions};

/// Options of [`import_npy`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Model id recorded in the manifest.
    pub model_id: String,
    /// Class names; default `"0"`, `"1"`, ..., `"C-1"`.
    pub class_names: Option<Vec<String>>,
    /// sha256 (hex) of the checkpoint the features came from, if known.
    pub checkpoint_sha256: Option<String>,
    /// Preprocessing description (free-form JSON) for the manifest.
    pub preprocessing: serde_json::Value,
    /// Creation time (RFC 3339) for the manifest, if wanted.
    pub created: Option<String>,
}

/// One set found in the source folder.
struct SourceSet {
    prefix: String,
    set: String,
    role: Role,
}

fn npy_err(file: &Path) -> impl FnOnce(ReadNpyError) -> CacheError + '_ {
    move |source| match source {
        ReadNpyError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            CacheError::MissingFile {
                file: file.to_path_buf(),
                what: "required by import-npy".into(),
            }
        }
        source => CacheError::Npy {
            file: file.to_path_buf(),
            source,
        },
    }
}

fn read_f32_2d(file: &Path) -> Result<Array2<f32>> {
    read_npy(file).map_err(npy_err(file))
}

/// Labels as int64 (or int32) `.npy`, as i32.
fn read_labels(file: &Path) -> Result<Vec<i32>> {
    let wide: std::result::Result<Array1<i64>, _> = read_npy(file);
    let values: Vec<i64> = match wide {
        Ok(a) => a.to_vec(),
        Err(ReadNpyError::WrongDescriptor(_)) => {
            let a: Array1<i32> = read_npy(file).map_err(npy_err(file))?;
            a.iter().map(|&v| i64::from(v)).collect()
        }
        Err(e) => return Err(npy_err(file)(e)),
    };
    values
        .iter()
        .enumerate()
        .map(|(row, &v)| {
            i32::try_from(v).map_err(|_| CacheError::BadLabel {
                file: file.to_path_buf(),
                row: row as u64,
                label: v,
                role: "id".into(),
                num_classes: 0,
            })
        })
        .collect()
}

fn read_lines(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CacheError::MissingFile {
                file: file.to_path_buf(),
                what: "required by import-npy: one path per row".into(),
            }
        } else {
            io_err(file)(e)
        }
    })?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Sets present in `from`: every `<prefix>_feat.npy` with prefix `id_train`, `id_test`
/// or `ood_<name>` (set `<name>`), sorted by prefix.
fn find_sets(from: &Path) -> Result<Vec<SourceSet>> {
    let mut sets = Vec::new();
    for entry in std::fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(prefix) = name.strip_suffix("_feat.npy") else {
            continue;
        };
        let (set, role) = match prefix {
            "id_train" => ("id_train".to_string(), Role::IdTrain),
            "id_test" => ("id_test".to_string(), Role::IdTest),
            p => match p.strip_prefix("ood_") {
                Some(set) => (set.to_string(), Role::Ood),
                None => {
                    return Err(CacheError::InvalidInput {
                        context: entry.path().display().to_string(),
                        reason: "feature files must be named id_train_feat.npy, id_test_feat.npy or ood_<set>_feat.npy".into(),
                    });
                }
            },
        };
        crate::manifest::validate_set_name(&set)?;
        sets.push(SourceSet {
            prefix: prefix.to_string(),
            set,
            role,
        });
    }
    sets.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    if sets.is_empty() {
        return Err(CacheError::MissingFile {
            file: from.join("<set>_feat.npy"),
            what: "no *_feat.npy in the source folder".into(),
        });
    }
    Ok(sets)
}

/// Logits `z = W h + b` for rows without cached logits: accumulated in f64, rounded
/// once to f32 (what `import-npy` stores when a set has no logits file).
pub fn logits_from_head(features: &Array2<f32>, head: &Head) -> Array2<f32> {
    let w = head.weight.mapv(f64::from);
    let b = head.bias.mapv(f64::from);
    let h = features.mapv(f64::from);
    let z = h.dot(&w.t()) + &b.insert_axis(Axis(0));
    z.mapv(|v| v as f32)
}

/// Builds a cache at `out` from a folder laid out like the `posthoc-small` fixture:
/// `fc_weight.npy` (f32 C x m), `fc_bias.npy` (f32 C), and per set `<prefix>_feat.npy`
/// (f32 n x m), `<prefix>_files.txt` (n lines), for ID sets `<prefix>_labels.npy` (int64
/// or int32, n), optionally `<prefix>_logits.npy` (f32 n x C). Prefixes: `id_train`,
/// `id_test`, `ood_<set>`. When a logits file is absent the logits are computed from the
/// head in f64 and rounded to f32 (recorded in the provenance). Rows get `index` = row
/// number. Statistics are computed from `id_train` when present.
pub fn import_npy(
    from: impl AsRef<Path>,
    out: impl AsRef<Path>,
    options: &ImportOptions,
) -> Result<Manifest> {
    let from = from.as_ref();
    let weight_path = from.join("fc_weight.npy");
    let bias_path = from.join("fc_bias.npy");
    let head = Head {
        weight: read_f32_2d(&weight_path)?,
        bias: read_npy::<_, Array1<f32>>(&bias_path).map_err(npy_err(&bias_path))?,
    };
    let (c, m) = head.weight.dim();
    head.validate(&weight_path, m, c)?;
    let sets = find_sets(from)?;

    let mut source_files = vec![weight_path.clone(), bias_path.clone()];
    let mut logits_origin = serde_json::Map::new();
    let class_names = options
        .class_names
        .clone()
        .unwrap_or_else(|| (0..c).map(|k| k.to_string()).collect());
    let init = ManifestInit {
        model: ModelInfo {
            id: options.model_id.clone(),
            checkpoint_sha256: options.checkpoint_sha256.clone(),
            feature_dim: m,
            num_classes: c,
            class_names,
        },
        preprocessing: options.preprocessing.clone(),
        tool: ToolInfo::this_crate(),
        created: options.created.clone(),
        provenance: serde_json::Value::Null, // set below, once the sources are known
    };
    init.model.validate("import-npy options")?;

    // Read and check every set before creating anything.
    let mut loaded = Vec::new();
    for s in &sets {
        let feat_path = from.join(format!("{}_feat.npy", s.prefix));
        let files_path = from.join(format!("{}_files.txt", s.prefix));
        let logits_path = from.join(format!("{}_logits.npy", s.prefix));
        let labels_path = from.join(format!("{}_labels.npy", s.prefix));
        let features = read_f32_2d(&feat_path)?;
        let n = features.nrows();
        if features.ncols() != m {
            return Err(CacheError::DimMismatch {
                file: feat_path,
                column: "feature".into(),
                expected: m,
                found: features.ncols(),
            });
        }
        let logits = if logits_path.exists() {
            let z = read_f32_2d(&logits_path)?;
            if z.dim() != (n, c) {
                return Err(CacheError::DimMismatch {
                    file: logits_path.clone(),
                    column: "logits".into(),
                    expected: if z.nrows() != n { n } else { c },
                    found: if z.nrows() != n { z.nrows() } else { z.ncols() },
                });
            }
            logits_origin.insert(s.set.clone(), "file".into());
            source_files.push(logits_path);
            z
        } else {
            tracing::info!(set = s.set, "no logits file: computing W h + b");
            logits_origin.insert(s.set.clone(), "computed: round_f32(W h + b in f64)".into());
            logits_from_head(&features, &head)
        };
        let paths = read_lines(&files_path)?;
        if paths.len() != n {
            return Err(CacheError::RowCount {
                file: files_path,
                expected: n as u64,
                found: paths.len() as u64,
            });
        }
        let labels = if s.role.is_id() {
            let l = read_labels(&labels_path)?;
            if l.len() != n {
                return Err(CacheError::RowCount {
                    file: labels_path,
                    expected: n as u64,
                    found: l.len() as u64,
                });
            }
            source_files.push(labels_path);
            l
        } else {
            vec![-1; n]
        };
        source_files.push(feat_path);
        source_files.push(files_path);
        loaded.push(SplitData {
            index: (0..n as u64).collect(),
            paths,
            labels,
            features,
            logits,
        });
    }

    let mut described = Vec::new();
    source_files.sort();
    for f in &source_files {
        let (sha256, bytes) = crate::io::sha256_file(f)?;
        described.push(serde_json::json!({
            "name": f.file_name().map(|n| n.to_string_lossy().into_owned()),
            "bytes": bytes,
            "sha256": sha256,
        }));
    }
    let source_dir: PathBuf = std::fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf());
    let mut init = init;
    init.provenance = serde_json::json!({
        "importer": "import_npy",
        "source_dir": source_dir.display().to_string(),
        "source_files": described,
        "logits": logits_origin,
    });

    let options_w = WriterOptions::default();
    let mut writer = CacheWriter::create_with(out, init, options_w)?;
    writer.write_head(&head)?;
    for (s, data) in sets.iter().zip(&loaded) {
        let mut sw = writer.split_writer(&s.set, s.role)?;
        let step = options_w.row_group_rows;
        let mut start = 0;
        while start < data.rows() {
            let end = (start + step).min(data.rows());
            sw.append(&data.slice(start, end))?;
            start = end;
        }
        let rows = sw.close()?;
        tracing::info!(set = s.set, rows, "imported");
    }
    drop(loaded);
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_logits_are_rounded_f64() {
        let head = Head {
            weight: ndarray::array![[1.0f32, 2.0], [0.1, -0.3]],
            bias: ndarray::array![0.5f32, 1e-8],
        };
        let h = ndarray::array![[1.0f32, 1.0], [3.0, 0.7]];
        let z = logits_from_head(&h, &head);
        let exact = |r: usize, k: usize| {
            (f64::from(h[[r, 0]]) * f64::from(head.weight[[k, 0]])
                + f64::from(h[[r, 1]]) * f64::from(head.weight[[k, 1]])
                + f64::from(head.bias[k])) as f32
        };
        for r in 0..2 {
            for k in 0..2 {
                assert_eq!(z[[r, k]], exact(r, k));
            }
        }
    }
}
