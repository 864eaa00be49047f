//! `posthoc._posthoc`: the compiled half of the `posthoc` Python package.
//!
//! It wraps the public API of `posthoc_cache` (reading and writing caches) and of the
//! `posthoc` library (the evaluate path of `posthoc eval`); it re-implements nothing.
//! The pure-Python half (`posthoc/__init__.py`) turns what it returns into dicts,
//! DataFrames and `pyarrow` tables.
//!
//! Errors: every [`posthoc_cache::CacheError`] becomes `posthoc.CacheError` with the
//! message the CLI prints; bad parameters become `ValueError`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use posthoc::config::ExperimentConfig;
use posthoc::eval::sweep::{Param, SweepValues};
use posthoc::evaluate::{CacheSource, RequestArgs, RunError, resolve_request};
use posthoc_cache::{
    CacheWriter, FeatureCache, Head, ManifestInit, ModelInfo, PARTIAL_DIR, ResumePoint, Role,
    SplitData, SplitWriter, ToolInfo, WriterOptions, logits_from_head,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

create_exception!(
    _posthoc,
    CacheError,
    PyException,
    "A cache directory or file is missing, unfinished, corrupt or does not match its manifest."
);

/// `(features n x m, labels n, index n)` of one split as NumPy arrays.
type FeatureArrays<'py> = (
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<i32>>,
    Bound<'py, PyArray1<u64>>,
);

/// `(W: C x m, b: C)` of the linear head as NumPy arrays.
type HeadArrays<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray1<f32>>);

/// `posthoc.CacheError` carrying `e`'s message.
fn cache_err(e: posthoc_cache::CacheError) -> PyErr {
    CacheError::new_err(e.to_string())
}

/// A [`RunError`] as Python sees it: cache failures are `CacheError`, the rest
/// (methods, parameters, conventions, configs that do not fit) `ValueError`.
fn run_err(e: RunError) -> PyErr {
    match e {
        RunError::Cache(_) | RunError::Open { .. } => CacheError::new_err(e.to_string()),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// `ValueError` carrying `e`'s message.
fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Parses `name -> comma list` exactly as the CLI's flags (`--p 0,50,90`), for every
/// parameter of the registry by its JSON key (`p`, `clip`, `k`, `dim`, ...); an unknown
/// name is a `ValueError` listing the known ones.
fn sweep_values(params: &HashMap<String, String>) -> PyResult<SweepValues> {
    let mut values = SweepValues::default();
    for (name, text) in params {
        let param = Param::ALL
            .into_iter()
            .find(|p| p.key() == name)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "unknown parameter `{name}` (known: {})",
                    Param::ALL.map(Param::key).join(", ")
                ))
            })?;
        values.set(param, text).map_err(value_err)?;
    }
    Ok(values)
}

/// An open, finished cache (`posthoc.open`); reads are verified against the manifest's
/// sha256 unless it was opened with `verify=False`.
#[pyclass(module = "posthoc._posthoc", name = "RawCache", frozen)]
struct RawCache {
    inner: FeatureCache,
}

#[pymethods]
impl RawCache {
    /// The cache directory.
    #[getter]
    fn dir(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }

    /// `manifest.json` as JSON text (the Python side parses it).
    fn manifest_json(&self) -> PyResult<String> {
        serde_json::to_string(self.inner.manifest())
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// `(set, role, file)` of every split in manifest order.
    fn splits(&self) -> Vec<(String, String, String)> {
        self.inner
            .manifest()
            .files
            .iter()
            .filter(|f| f.role.is_split())
            .filter_map(|f| Some((f.set.clone()?, f.role.as_str().to_owned(), f.name.clone())))
            .collect()
    }

    /// `(features n x m f32, labels n i32, index n u64)` of `set`: read into Rust arrays
    /// (one copy out of the Arrow buffers), then handed to NumPy without a copy.
    fn features<'py>(&self, py: Python<'py>, set: &str) -> PyResult<FeatureArrays<'py>> {
        let s = py
            .detach(|| self.inner.split_features(set))
            .map_err(cache_err)?;
        Ok((
            s.features.into_pyarray(py),
            s.labels.into_pyarray(py),
            s.index.into_pyarray(py),
        ))
    }

    /// Every column of `set` as a dict of arrays (`paths` a list of str).
    fn split<'py>(&self, py: Python<'py>, set: &str) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.inner.split(set)).map_err(cache_err)?;
        let d = PyDict::new(py);
        d.set_item("index", s.index.into_pyarray(py))?;
        d.set_item("paths", s.paths)?;
        d.set_item("labels", s.labels.into_pyarray(py))?;
        d.set_item("features", s.features.into_pyarray(py))?;
        d.set_item("logits", s.logits.into_pyarray(py))?;
        Ok(d)
    }

    /// The linear head `(W: C x m f32, b: C f32)`.
    fn head<'py>(&self, py: Python<'py>) -> PyResult<HeadArrays<'py>> {
        let h = py.detach(|| self.inner.head()).map_err(cache_err)?;
        Ok((h.weight.into_pyarray(py), h.bias.into_pyarray(py)))
    }

    /// The ID-train statistics as a dict of arrays and numbers.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.inner.stats()).map_err(cache_err)?;
        let d = PyDict::new(py);
        d.set_item("n_train", s.n_train)?;
        d.set_item("mean", s.mean.into_pyarray(py))?;
        d.set_item("class_means", s.class_means.into_pyarray(py))?;
        d.set_item("class_counts", s.class_counts.into_pyarray(py))?;
        d.set_item("dice_contribution", s.dice_contribution.into_pyarray(py))?;
        d.set_item("line_contribution", s.line_contribution.into_pyarray(py))?;
        d.set_item("mean_ce", s.mean_ce)?;
        d.set_item("accuracy", s.accuracy)?;
        d.set_item("class_mean_ce", s.class_mean_ce)?;
        d.set_item("class_accuracy", s.class_accuracy)?;
        let p = s.activation_percentiles;
        let pd = PyDict::new(py);
        pd.set_item("q", p.q.into_pyarray(py))?;
        pd.set_item("value_f32", p.numpy_f32.into_pyarray(py))?;
        pd.set_item("value_f64", p.numpy_f64.into_pyarray(py))?;
        pd.set_item("num_values", p.num_values)?;
        pd.set_item("num_zeros", p.num_zeros)?;
        d.set_item("activation_percentiles", pd)?;
        Ok(d)
    }
}

/// Opens the finished cache at `location`, a directory or a URL (`file://`, `s3://`,
/// `gs://`, `az://`, `http(s)://`: a remote cache is downloaded once into the local
/// content-addressed store first); errors as `posthoc eval` words them.
#[pyfunction]
#[pyo3(signature = (location, verify = true))]
fn open_cache(py: Python<'_>, location: String, verify: bool) -> PyResult<RawCache> {
    let inner = py.detach(|| open_location(&location, verify))?;
    Ok(RawCache { inner })
}

/// Opens `location` (a directory or URL) with the CLI's error context.
fn open_location(location: &str, verify: bool) -> PyResult<FeatureCache> {
    FeatureCache::open_url(location, verify)
        .map_err(|e| CacheError::new_err(format!("opening cache {location}: {e}")))
}

/// What `posthoc eval` computes for one request, through the same library calls
/// ([`resolve_request`], then [`evaluate_cache`]): returns the long-format rows as JSON
/// text (the `--json` rows) and, with `scores`, one dict per setting (`method`, `params`
/// JSON, `id` scores, `ood` name -> scores).
#[pyfunction]
#[pyo3(signature = (cache=None, location=None, verify=true, method=None, params=HashMap::new(), config=None, ood=None, convention=None, select=None, val_ood=None, val_fraction=None, scores=false))]
#[allow(clippy::too_many_arguments)]
fn evaluate<'py>(
    py: Python<'py>,
    cache: Option<&RawCache>,
    location: Option<String>,
    verify: bool,
    method: Option<String>,
    params: HashMap<String, String>,
    config: Option<PathBuf>,
    ood: Option<Vec<String>>,
    convention: Option<String>,
    select: Option<String>,
    val_ood: Option<String>,
    val_fraction: Option<String>,
    scores: bool,
) -> PyResult<(String, Option<Bound<'py, PyList>>)> {
    let config = config
        .map(|p| ExperimentConfig::load(&p).map(|c| (p, c)))
        .transpose()
        .map_err(value_err)?;
    let values = sweep_values(&params)?;
    let args = RequestArgs {
        methods: method.as_deref(),
        values,
        config: config.as_ref().map(|(p, c)| (p.as_path(), c)),
        ood,
        convention: convention.as_deref(),
        select: select.as_deref(),
        val_ood: val_ood.as_deref(),
        val_fraction: val_fraction.as_deref(),
    };
    let source = match cache {
        Some(c) => CacheSource::Opened(&c.inner),
        None => CacheSource::Location {
            location: location.as_deref(),
            verify,
        },
    };
    let evaluation = py
        .detach(|| resolve_request(args, source)?.evaluate())
        .map_err(run_err)?;
    let rows = serde_json::to_string(&evaluation.rows).map_err(value_err)?;
    if !scores {
        return Ok((rows, None));
    }
    let list = PyList::empty(py);
    for r in evaluation.results {
        let d = PyDict::new(py);
        d.set_item("method", r.setting.method().as_str())?;
        d.set_item(
            "params",
            serde_json::to_string(&r.params).map_err(value_err)?,
        )?;
        d.set_item("id", r.id.scores.into_pyarray(py))?;
        let ood = PyDict::new(py);
        for (name, s) in evaluation.ood_sets.iter().zip(r.ood) {
            ood.set_item(name, s.scores.into_pyarray(py))?;
        }
        d.set_item("ood", ood)?;
        list.append(d)?;
    }
    Ok((rows, Some(list)))
}

/// The compiled module.
#[pymodule]
fn _posthoc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CacheError", m.py().get_type::<CacheError>())?;
    m.add_class::<RawCache>()?;
    m.add_class::<RawWriter>()?;
    m.add_function(wrap_pyfunction!(open_cache, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    Ok(())
}

/// A cache being written from Python (`posthoc.CacheWriter`): the Rust [`CacheWriter`]
/// with one split open at a time. Re-running over an unfinished `out` resumes: rows whose
/// index was committed before are skipped.
#[pyclass(module = "posthoc._posthoc", name = "RawWriter", unsendable)]
struct RawWriter {
    writer: Option<CacheWriter>,
    head: Head,
    open: Option<(SplitWriter, ResumePoint)>,
    closed: Vec<String>,
    next_index: u64,
}

/// A rejected batch is the caller's input (`ValueError`); I/O is `CacheError`.
fn input_err(e: posthoc_cache::CacheError) -> PyErr {
    match e {
        posthoc_cache::CacheError::Io { .. } => cache_err(e),
        other => value_err(other),
    }
}

impl RawWriter {
    fn writer(&mut self) -> PyResult<&mut CacheWriter> {
        self.writer
            .as_mut()
            .ok_or_else(|| value_err("the CacheWriter is finished"))
    }

    fn close_open(&mut self) -> PyResult<()> {
        if let Some((sw, _)) = self.open.take() {
            self.closed.push(sw.set().to_owned());
            sw.close().map_err(cache_err)?;
        }
        Ok(())
    }
}

#[pymethods]
impl RawWriter {
    /// Creates (or resumes) a cache at `out` with head `(weight, bias)`.
    #[new]
    #[pyo3(signature = (out, weight, bias, model_id, class_names=None, preprocessing="null", checkpoint_sha256=None))]
    fn new(
        out: PathBuf,
        weight: PyReadonlyArray2<f32>,
        bias: PyReadonlyArray1<f32>,
        model_id: String,
        class_names: Option<Vec<String>>,
        preprocessing: &str,
        checkpoint_sha256: Option<String>,
    ) -> PyResult<Self> {
        let head = Head {
            weight: weight.as_array().to_owned(),
            bias: bias.as_array().to_owned(),
        };
        let (c, m) = head.weight.dim();
        head.validate(Path::new("head"), m, c).map_err(value_err)?;
        let init = ManifestInit {
            model: ModelInfo {
                id: model_id,
                checkpoint_sha256,
                feature_dim: m,
                num_classes: c,
                class_names: class_names.unwrap_or_else(|| (0..c).map(|k| k.to_string()).collect()),
            },
            preprocessing: serde_json::from_str(preprocessing).map_err(value_err)?,
            tool: ToolInfo::this_crate(),
            created: None,
            provenance: serde_json::json!({ "importer": "python CacheWriter" }),
        };
        init.model.validate("CacheWriter").map_err(value_err)?;
        let writer = if out.join(PARTIAL_DIR).is_dir() {
            let w = CacheWriter::open_resume(&out).map_err(cache_err)?;
            if w.init().model != init.model {
                return Err(value_err(format!(
                    "{}: an unfinished cache of another model (or head) is there; remove it or pass the same model",
                    out.display()
                )));
            }
            w
        } else {
            let mut w = CacheWriter::create_with(&out, init, WriterOptions::default())
                .map_err(cache_err)?;
            w.write_head(&head).map_err(cache_err)?;
            w
        };
        Ok(RawWriter {
            writer: Some(writer),
            head,
            open: None,
            closed: Vec::new(),
            next_index: 0,
        })
    }

    /// Appends one batch of `set`; returns how many rows were new (0 for rows committed
    /// by an earlier, interrupted run).
    #[pyo3(signature = (set, role, features, logits=None, labels=None, paths=None))]
    fn add(
        &mut self,
        set: &str,
        role: &str,
        features: PyReadonlyArray2<f32>,
        logits: Option<PyReadonlyArray2<f32>>,
        labels: Option<PyReadonlyArray1<i32>>,
        paths: Option<Vec<String>>,
    ) -> PyResult<usize> {
        let role = Role::parse(role).filter(|r| r.is_split()).ok_or_else(|| {
            value_err(format!(
                "role {role:?} of set `{set}`: expected `id_train`, `id_test` or `ood`"
            ))
        })?;
        if self.closed.iter().any(|s| s == set) {
            return Err(value_err(format!(
                "set `{set}` was added already (a set is added in consecutive batches, then closed when the next set starts)"
            )));
        }
        if labels.is_none() && role != Role::Ood {
            return Err(value_err(format!(
                "set `{set}` ({}): labels are required",
                role.as_str()
            )));
        }
        if self.open.as_ref().is_some_and(|(sw, _)| sw.set() != set) {
            self.close_open()?;
        }
        if self.open.is_none() {
            let sw = self.writer()?.split_writer(set, role).map_err(input_err)?;
            let done = sw.resume_point();
            self.open = Some((sw, done));
            self.next_index = 0;
        }
        let features = features.as_array().to_owned();
        let n = features.nrows();
        let m = self.head.feature_dim();
        if features.ncols() != m {
            return Err(value_err(format!(
                "set `{set}` features: expected m = {m} columns (the head's), found {}",
                features.ncols()
            )));
        }
        let logits = match logits {
            Some(z) => z.as_array().to_owned(),
            None => logits_from_head(&features, &self.head),
        };
        let labels = match labels {
            Some(l) => l.as_array().to_vec(),
            None if role == Role::Ood => vec![-1; n],
            None => {
                return Err(value_err(format!(
                    "set `{set}` ({}): labels are required",
                    role.as_str()
                )));
            }
        };
        let first = self.next_index;
        let index: Vec<u64> = (first..first + n as u64).collect();
        let paths = paths.unwrap_or_else(|| index.iter().map(u64::to_string).collect());
        if labels.len() != n || paths.len() != n || logits.nrows() != n {
            return Err(value_err(format!(
                "set `{set}`: {n} feature rows but {} logits rows, {} labels, {} paths",
                logits.nrows(),
                labels.len(),
                paths.len()
            )));
        }
        let batch = SplitData {
            index,
            paths,
            labels,
            features,
            logits,
        };
        let (sw, done) = self.open.as_mut().expect("opened above");
        let keep: Vec<usize> = (0..n)
            .filter(|&r| !done.contains(first + r as u64))
            .collect();
        let batch = if keep.len() == n {
            batch
        } else {
            let rows = keep;
            SplitData {
                index: rows.iter().map(|&r| batch.index[r]).collect(),
                paths: rows.iter().map(|&r| batch.paths[r].clone()).collect(),
                labels: rows.iter().map(|&r| batch.labels[r]).collect(),
                features: batch.features.select(ndarray::Axis(0), &rows),
                logits: batch.logits.select(ndarray::Axis(0), &rows),
            }
        };
        if batch.rows() > 0 {
            sw.append(&batch).map_err(input_err)?;
        }
        self.next_index += n as u64;
        Ok(batch.rows())
    }

    /// Closes the open set, computes the statistics and writes the manifest (last);
    /// returns the manifest as JSON text.
    fn finish(&mut self) -> PyResult<String> {
        self.close_open()?;
        let writer = self
            .writer
            .take()
            .ok_or_else(|| value_err("the CacheWriter is finished"))?;
        let manifest = writer.finish().map_err(cache_err)?;
        serde_json::to_string(&manifest).map_err(value_err)
    }
}
