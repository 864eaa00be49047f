//! Named `f32` tensors in safetensors files: the exported fine-tuned state dict (PyTorch
//! keys, readable by burn-store's `SafetensorsStore` and `safetensors.torch.load_file`) and
//! the training checkpoints. Files are written to a temporary sibling and renamed into
//! place, so a reader never sees a half-written file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::UmError;
use super::net::ParamEntry;

/// Named tensors and string metadata (safetensors' `__metadata__`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    /// Tensors by name: shape and values.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Free-form string metadata.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Adds `entries` under their keys, each prefixed by `prefix`.
    pub fn insert_entries<'a>(
        &mut self,
        prefix: &str,
        entries: impl IntoIterator<Item = &'a ParamEntry>,
    ) {
        for e in entries {
            self.tensors.insert(
                format!("{prefix}{}", e.key),
                (e.shape.clone(), e.values.clone()),
            );
        }
    }

    /// The tensors whose names start with `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    }

    /// The file's bytes in safetensors format (all tensors F32, little-endian).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, (shape, values))| {
                let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (k.clone(), shape.clone(), raw)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, shape, raw)| {
                TensorView::new(Dtype::F32, shape.clone(), raw)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| format!("tensor {k}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
    }

    /// Writes the file atomically: a temporary file in the same folder, synced, then
    /// renamed over `path`.
    pub fn write(&self, path: &Path) -> Result<(), UmError> {
        let bytes = self.to_bytes().map_err(|reason| UmError::TensorFile {
            path: path.to_path_buf(),
            reason,
        })?;
        write_atomic(path, &bytes)
    }

    /// Reads a safetensors file of F32 tensors.
    pub fn read(path: &Path) -> Result<Self, UmError> {
        let bad = |reason: String| UmError::TensorFile {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(UmError::io(path))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name}: dtype {:?}, expected F32",
                    view.dtype()
                )));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(Self { tensors, metadata })
    }
}

/// Writes `bytes` to `path` through a synced temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), UmError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(UmError::io(dir))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        UmError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.safetensors");
        let mut f = TensorFile::default();
        f.tensors.insert(
            "x.weight".into(),
            (vec![2, 2], vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE]),
        );
        f.tensors.insert("y".into(), (vec![1], vec![0.1]));
        f.metadata.insert("epoch".into(), "3".into());
        f.write(&path).unwrap();
        let g = TensorFile::read(&path).unwrap();
        assert_eq!(f, g);
        assert_eq!(g.with_prefix("x.").keys().collect::<Vec<_>>(), ["weight"]);
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, b"not a tensor file").unwrap();
        let err = TensorFile::read(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("not a safetensors"),
            "{err}"
        );
    }
}
