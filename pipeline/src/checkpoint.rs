//! Loading the papers' PyTorch DenseNet checkpoints (`torch.save` files) and fine-tuned
//! state dicts (`.safetensors` with PyTorch key names, as `posthoc um train` exports them)
//! into [`DenseNet`].
//!
//! The state dict is read with burn's PyTorch or safetensors reader (`burn-store`). Before any tensor is
//! applied, every key and shape of the file is checked against the state dict the model
//! needs ([`densenet_state_dict_layout`], PyTorch naming), so a wrong checkpoint fails with
//! the missing keys, the unexpected keys and the mismatched shapes named.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};
use burn::tensor::Device;
use sha2::{Digest, Sha256};

use crate::error::{CheckpointError, PipelineError, ShapeMismatch};
use crate::model::{Arch, Backbone, DenseNet, DenseNetConfig, DenseNetPlan, ResNetV2, bit_npz_key};
use crate::um::tensors::TensorFile;

/// The entry of a training checkpoint dict that holds the state dict (DICE:
/// `torch.save({'epoch': ..., 'state_dict': model.state_dict(), ...})`).
pub const STATE_DICT_KEY: &str = "state_dict";

/// BatchNorm's step counter, written by PyTorch >= 0.4 and unused in eval mode; such keys
/// are accepted and ignored.
pub const IGNORED_KEY_SUFFIX: &str = ".num_batches_tracked";

/// One tensor of a state dict: its key (PyTorch naming) and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDictEntry {
    /// Key, e.g. `block1.layer.0.bn1.running_mean`.
    pub key: String,
    /// Shape, e.g. `[24]`.
    pub shape: Vec<usize>,
}

/// The state dict of DICE's `DenseNet3` for `plan`, in PyTorch's registration order,
/// without the optional `num_batches_tracked` counters.
///
/// Convolution weights are `[out, in, kh, kw]`, `fc.weight` is `[C, m]`, BatchNorm has
/// `weight`, `bias`, `running_mean`, `running_var` of shape `[channels]`.
pub fn densenet_state_dict_layout(plan: &DenseNetPlan) -> Vec<StateDictEntry> {
    let mut sd = StateDictLayout(Vec::new());
    let growth = plan.config.growth_rate;
    sd.push("conv1.weight".into(), &[plan.stem_channels, 3, 3, 3]);
    for b in 0..3 {
        let block = plan.blocks[b];
        for i in 0..plan.layers_per_block {
            let prefix = format!("block{}.layer.{i}", b + 1);
            let c = plan.layer_in_channels(block.in_channels, i);
            sd.batch_norm(&format!("{prefix}.bn1"), c);
            if plan.config.bottleneck {
                let inter = plan.bottleneck_channels();
                sd.push(format!("{prefix}.conv1.weight"), &[inter, c, 1, 1]);
                sd.batch_norm(&format!("{prefix}.bn2"), inter);
                sd.push(format!("{prefix}.conv2.weight"), &[growth, inter, 3, 3]);
            } else {
                sd.push(format!("{prefix}.conv1.weight"), &[growth, c, 3, 3]);
            }
        }
        if b < 2 {
            let t = plan.transitions[b];
            let prefix = format!("trans{}", b + 1);
            sd.batch_norm(&format!("{prefix}.bn1"), t.in_channels);
            sd.push(
                format!("{prefix}.conv1.weight"),
                &[t.out_channels, t.in_channels, 1, 1],
            );
        }
    }
    sd.batch_norm("bn1", plan.feature_dim);
    let classes = plan.config.num_classes;
    sd.push("fc.weight".into(), &[classes, plan.feature_dim]);
    sd.push("fc.bias".into(), &[classes]);
    sd.0
}

/// Builder of a state-dict layout.
struct StateDictLayout(Vec<StateDictEntry>);

impl StateDictLayout {
    fn push(&mut self, key: String, shape: &[usize]) {
        self.0.push(StateDictEntry {
            key,
            shape: shape.to_vec(),
        });
    }

    /// The four tensors of a `BatchNorm2d` over `channels` channels.
    fn batch_norm(&mut self, prefix: &str, channels: usize) {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            self.push(format!("{prefix}.{p}"), &[channels]);
        }
    }
}

/// How a checkpoint's state dict differs from the one a model needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDictDiff {
    /// Keys the model needs that the checkpoint lacks (model order).
    pub missing: Vec<String>,
    /// Keys of the checkpoint the model has no place for (numeric path segments in numeric
    /// order: `layer.8` before `layer.10`), ignored keys excluded.
    pub unexpected: Vec<String>,
    /// Keys on both sides with different shapes (model order).
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// Checkpoint keys accepted without use (`*.num_batches_tracked`, same order).
    pub ignored: Vec<String>,
}

impl StateDictDiff {
    /// Whether every needed key is present with its shape and nothing unknown is left.
    pub fn is_match(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatches.is_empty()
    }

    /// The ignored keys when the state dicts match, else the mismatch error for the
    /// checkpoint at `path` and the model `model` (its name in the message).
    pub fn into_result(self, path: &Path, model: &str) -> Result<Vec<String>, CheckpointError> {
        if self.is_match() {
            return Ok(self.ignored);
        }
        Err(CheckpointError::StateDictMismatch {
            path: path.to_path_buf(),
            model: model.to_owned(),
            missing: self.missing,
            unexpected: self.unexpected,
            shape_mismatches: self.shape_mismatches,
        })
    }
}

/// Compares the `expected` state dict with the keys and shapes `found` in a checkpoint.
/// Keys ending in [`IGNORED_KEY_SUFFIX`] that the model does not need are ignored.
pub fn compare_state_dict(
    expected: &[StateDictEntry],
    found: &BTreeMap<String, Vec<usize>>,
) -> StateDictDiff {
    let mut diff = StateDictDiff::default();
    for entry in expected {
        match found.get(&entry.key) {
            None => diff.missing.push(entry.key.clone()),
            Some(shape) if *shape != entry.shape => diff.shape_mismatches.push(ShapeMismatch {
                key: entry.key.clone(),
                expected: entry.shape.clone(),
                found: shape.clone(),
            }),
            Some(_) => {}
        }
    }
    let needed: std::collections::HashSet<&str> = expected.iter().map(|e| e.key.as_str()).collect();
    for key in found.keys() {
        if needed.contains(key.as_str()) {
            continue;
        }
        if key.ends_with(IGNORED_KEY_SUFFIX) {
            diff.ignored.push(key.clone());
        } else {
            diff.unexpected.push(key.clone());
        }
    }
    diff.unexpected.sort_by(|a, b| compare_keys(a, b));
    diff.ignored.sort_by(|a, b| compare_keys(a, b));
    diff
}

/// Orders state-dict keys segment by segment, numeric segments by value.
fn compare_keys(a: &str, b: &str) -> std::cmp::Ordering {
    let mut sa = a.split('.');
    let mut sb = b.split('.');
    loop {
        match (sa.next(), sb.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(i), Ok(j)) => i.cmp(&j),
                    _ => x.cmp(y),
                };
                if ord.is_ne() {
                    return ord;
                }
            }
        }
    }
}

/// A DenseNet loaded from a checkpoint, with the provenance of the file.
#[derive(Debug)]
pub struct LoadedDenseNet {
    /// The network with the checkpoint's weights and running statistics.
    pub model: DenseNet,
    /// The checked configuration.
    pub plan: DenseNetPlan,
    /// Provenance of the checkpoint file.
    pub info: CheckpointInfo,
}

/// Where a model's weights came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The checkpoint file as given.
    pub path: PathBuf,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Number of tensors loaded into the model.
    pub tensors_loaded: usize,
    /// Keys present in the file and deliberately not used (`num_batches_tracked`).
    pub ignored_keys: Vec<String>,
}

/// Lower-case hex sha256 of a file and its size in bytes.
pub fn file_sha256(path: &Path) -> Result<(String, u64), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// Loads the DICE DenseNet checkpoint at `path` (a `torch.save` dict whose
/// [`STATE_DICT_KEY`] entry is the state dict) into a network for `config` on `device`.
pub fn load_densenet(
    config: &DenseNetConfig,
    path: &Path,
    device: &Device,
) -> Result<LoadedDenseNet, PipelineError> {
    load_densenet_with_key(config, path, Some(STATE_DICT_KEY), device)
}

/// Whether `path` names a safetensors file (extension `.safetensors`).
pub fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// Like [`load_densenet`]; `state_dict_key` names the entry of the saved dict holding the
/// state dict, `None` when the file is the state dict itself. A `.safetensors` file is a
/// flat state dict in PyTorch naming (the key is not used); it gets the same key and shape
/// checks.
pub fn load_densenet_with_key(
    config: &DenseNetConfig,
    path: &Path,
    state_dict_key: Option<&str>,
    device: &Device,
) -> Result<LoadedDenseNet, PipelineError> {
    if is_safetensors(path) {
        let store = SafetensorsStore::from_file(path)
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(false);
        return load_densenet_from_store(config, path, store, device);
    }
    let mut store = PytorchStore::from_file(path).allow_partial(false);
    if let Some(key) = state_dict_key {
        store = store.with_top_level_key(key);
    }
    load_densenet_from_store(config, path, store, device)
}

/// Checks the keys and shapes `store` holds against the model's state dict, then loads it.
fn load_densenet_from_store<S: ModuleStore>(
    config: &DenseNetConfig,
    path: &Path,
    store: S,
    device: &Device,
) -> Result<LoadedDenseNet, PipelineError>
where
    S::Error: std::fmt::Display,
{
    let plan = config.plan()?;
    let expected = densenet_state_dict_layout(&plan);
    let model = DenseNet::from_plan(&plan, device);
    let (model, info) = load_checked(model, &expected, &describe_model(&plan), path, store)?;
    Ok(LoadedDenseNet { model, plan, info })
}

/// Loads `store` (read from `path`) into `model` once every key and shape of the file is
/// checked against `expected` (PyTorch naming); `model_name` names the network in errors.
pub(crate) fn load_checked<M: Module, S: ModuleStore>(
    mut model: M,
    expected: &[StateDictEntry],
    model_name: &str,
    path: &Path,
    mut store: S,
) -> Result<(M, CheckpointInfo), PipelineError>
where
    S::Error: std::fmt::Display,
{
    let (sha256, bytes) = file_sha256(path)?;
    let parse = |message: String| CheckpointError::Parse {
        path: path.to_path_buf(),
        message,
    };

    let found: BTreeMap<String, Vec<usize>> = store
        .get_all_tensors()
        .map_err(|e| parse(e.to_string()))?
        .iter()
        .map(|(key, t)| (key.clone(), t.shape.to_vec()))
        .collect();

    let ignored = compare_state_dict(expected, &found).into_result(path, model_name)?;

    let apply_error = |message: String| CheckpointError::Apply {
        path: path.to_path_buf(),
        message,
    };
    let result = model
        .load_from(&mut store)
        .map_err(|e| apply_error(e.to_string()))?;
    // The key check above makes these failures unreachable unless burn-store's naming of the
    // module differs from the PyTorch layout; report them rather than run a half-loaded net.
    let unexpected_unused: Vec<&String> = result
        .unused
        .iter()
        .filter(|k| !k.ends_with(IGNORED_KEY_SUFFIX))
        .collect();
    if !result.errors.is_empty()
        || !result.missing.is_empty()
        || !unexpected_unused.is_empty()
        || result.applied.len() != expected.len()
    {
        return Err(apply_error(format!(
            "applied {} of {} tensors; missing {:?}; unused {:?}; errors: {}",
            result.applied.len(),
            expected.len(),
            result.missing.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            unexpected_unused,
            result
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .into());
    }

    Ok((
        model,
        CheckpointInfo {
            path: path.to_path_buf(),
            sha256,
            bytes,
            tensors_loaded: result.applied.len(),
            ignored_keys: ignored,
        },
    ))
}

/// The state dict `module` needs, in PyTorch naming (burn's names mapped by
/// [`BurnToPyTorchAdapter`]: BatchNorm `gamma`/`beta` -> `weight`/`bias`, linear weights
/// `[out, in]`), sorted by key.
pub fn module_state_dict_layout<M: ModuleSnapshot>(module: &M) -> Vec<StateDictEntry> {
    let mut layout: Vec<StateDictEntry> = module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| StateDictEntry {
            key: t.name.clone(),
            shape: t.shape.to_vec(),
        })
        .collect();
    layout.sort_by(|a, b| compare_keys(&a.key, &b.key));
    layout
}

/// Entries of a saved training dict that hold the state dict (`torch.save({'state_dict':
/// model.state_dict(), ...})`, `{'model': ...}`, `{'net': ...}`), tried in this order.
pub const NESTED_STATE_DICT_KEYS: [&str; 3] = ["state_dict", "model", "net"];

/// The key prefix `nn.DataParallel` adds to every parameter.
pub const DATA_PARALLEL_PREFIX: &str = "module.";

/// The prefix shared by every key that wraps the state dict: one of
/// [`NESTED_STATE_DICT_KEYS`] plus `.`, then [`DATA_PARALLEL_PREFIX`]; empty when none.
pub fn wrapper_prefix<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> String {
    let all_start = |prefix: &str| {
        let mut any = false;
        let all = keys.clone().all(|k| {
            any = true;
            k.starts_with(prefix)
        });
        any && all
    };
    let mut prefix = NESTED_STATE_DICT_KEYS
        .iter()
        .map(|k| format!("{k}."))
        .find(|p| all_start(p))
        .unwrap_or_default();
    let parallel = format!("{prefix}{DATA_PARALLEL_PREFIX}");
    if all_start(&parallel) {
        prefix = parallel;
    }
    prefix
}

/// A network of a registered architecture loaded from a checkpoint.
#[derive(Debug)]
pub struct LoadedBackbone {
    /// The architecture.
    pub arch: Arch,
    /// The network with the checkpoint's weights.
    pub model: Backbone,
    /// Provenance of the checkpoint file.
    pub info: CheckpointInfo,
}

/// Loads the checkpoint at `path` into a fresh `arch` network with `num_classes` classes on
/// `device`. Accepted files: torch zip (`torch.save` since 1.6) and legacy (pre-1.6) `.pth` /
/// `.pt` / `.pth.tar`, the state dict at the top or nested under one of
/// [`NESTED_STATE_DICT_KEYS`], with or without the `module.` prefix of `DataParallel`, and
/// `.safetensors` (PyTorch naming). Every key and shape is checked before any tensor is
/// applied (missing, unexpected and mismatched keys named); `num_batches_tracked` counters
/// are ignored.
pub fn load_backbone(
    arch: Arch,
    num_classes: usize,
    path: &Path,
    device: &Device,
) -> Result<LoadedBackbone, PipelineError> {
    let model = arch.init(num_classes, device)?;
    let name = format!("{arch} ({num_classes} classes)");
    let parse = |message: String| CheckpointError::Parse {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        // The reader's own message would not name the path.
        file_sha256(path)?;
    }
    if is_npz(path) {
        return match model {
            Backbone::ResNetV2(m) => {
                let (m, info) = load_bit_npz(*m, &name, path)?;
                Ok(LoadedBackbone {
                    arch,
                    model: Backbone::ResNetV2(Box::new(m)),
                    info,
                })
            }
            _ => Err(parse(format!(
                "a .npz checkpoint is BiT's format, for arch = \"resnetv2-...\", not {arch}"
            ))
            .into()),
        };
    }
    let keys: Vec<String> = if is_safetensors(path) {
        SafetensorsStore::from_file(path)
            .keys()
            .map_err(|e| parse(e.to_string()))?
    } else {
        PytorchStore::from_file(path)
            .keys()
            .map_err(|e| parse(format!("{e}{}", truncation_hint(path))))?
    };
    let prefix = wrapper_prefix(keys.iter().map(String::as_str));
    let renames = arch.key_renames();
    let names = KeyNames {
        prefix: &prefix,
        renames: &renames,
    };
    let (model, info) = match model {
        Backbone::DenseNet(m) => {
            let (m, info) = load_renamed(*m, &name, path, &names)?;
            (Backbone::DenseNet(Box::new(m)), info)
        }
        Backbone::EfficientNetLite(m) => {
            let (m, info) = load_renamed(*m, &name, path, &names)?;
            (Backbone::EfficientNetLite(Box::new(m)), info)
        }
        Backbone::MobileNetV2(m) => {
            let (m, info) = load_renamed(*m, &name, path, &names)?;
            (Backbone::MobileNetV2(Box::new(m)), info)
        }
        Backbone::ResNet(m) => {
            let (m, info) = load_renamed(*m, &name, path, &names)?;
            (Backbone::ResNet(Box::new(m)), info)
        }
        Backbone::ResNetV2(m) => {
            let (m, info) = load_renamed(*m, &name, path, &names)?;
            (Backbone::ResNetV2(Box::new(m)), info)
        }
    };
    Ok(LoadedBackbone { arch, model, info })
}

/// `" (...truncated...)"` when the unreadable file at `path` starts like a zip archive
/// (`torch.save`'s format since 1.6): a zip whose directory at the end is unreadable was
/// most likely cut short; empty otherwise.
fn truncation_hint(path: &Path) -> &'static str {
    let mut magic = [0u8; 4];
    let zip = File::open(path).is_ok_and(|mut f| f.read_exact(&mut magic).is_ok())
        && magic == *b"PK\x03\x04";
    if zip {
        " (the file starts as a zip archive but cannot be read to its end: truncated, e.g. an incomplete download?)"
    } else {
        ""
    }
}

/// The state dict of an `arch` checkpoint with `num_classes` classes in the checkpoint's
/// own key names (torchvision's, lukemelas', OpenOOD's), without `num_batches_tracked`; for
/// BiT the `.npz` arrays ([`bit_npz_layout`]).
pub fn arch_state_dict_layout(
    arch: Arch,
    num_classes: usize,
) -> Result<Vec<StateDictEntry>, PipelineError> {
    let renames = arch.key_renames();
    let names = KeyNames {
        prefix: "",
        renames: &renames,
    };
    let layout = match arch.init(num_classes, &Device::flex())? {
        Backbone::DenseNet(m) => module_state_dict_layout(m.as_ref()),
        Backbone::EfficientNetLite(m) | Backbone::MobileNetV2(m) => {
            module_state_dict_layout(m.as_ref())
        }
        Backbone::ResNet(m) => module_state_dict_layout(m.as_ref()),
        Backbone::ResNetV2(m) => return Ok(bit_npz_layout(m.as_ref())),
    };
    Ok(layout
        .into_iter()
        .map(|e| StateDictEntry {
            key: names.to_file(&e.key),
            shape: e.shape,
        })
        .collect())
}

/// Whether `path` names a NumPy `.npz` archive (BiT's weights).
pub fn is_npz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "npz")
}

/// The arrays of BiT's `.npz` for `model`: keys as [`bit_npz_key`] names them, shapes in
/// TF layout (convolutions `[kh, kw, in, out]`, the head `[1, 1, in, C]`), sorted by key.
pub fn bit_npz_layout(model: &ResNetV2) -> Vec<StateDictEntry> {
    let mut layout: Vec<StateDictEntry> = module_state_dict_layout(model)
        .into_iter()
        .map(|e| StateDictEntry {
            key: bit_npz_key(&e.key).expect("every ResNetV2 tensor has a BiT name"),
            shape: match e.shape[..] {
                [o, i, kh, kw] => vec![kh, kw, i, o],
                [c, i] => vec![1, 1, i, c],
                _ => e.shape,
            },
        })
        .collect();
    layout.sort_by(|a, b| a.key.cmp(&b.key));
    layout
}

/// `[d0, d1, d2, d3]` row-major values permuted to axes `[3, 2, 0, 1]` (TF `HWIO` to
/// PyTorch `OIHW`, BiT's `tf2th`).
fn hwio_to_oihw(values: &[f32], [h, w, i, o]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for (idx, v) in values.iter().enumerate() {
        let (y, rest) = (idx / (w * i * o), idx % (w * i * o));
        let (x, rest) = (rest / (i * o), rest % (i * o));
        let (c, k) = (rest / o, rest % o);
        out[((k * i + c) * h + y) * w + x] = *v;
    }
    out
}

/// Every `.npy` array of the `.npz` at `path` as float32, by name (`.npy` suffix removed).
fn read_npz(path: &Path) -> Result<TensorFile, CheckpointError> {
    use ndarray_npy::ReadNpyExt;
    let parse = |message: String| CheckpointError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        parse(format!(
            "not a readable .npz (zip) archive: {e}{}",
            truncation_hint(path)
        ))
    })?;
    let mut arrays = TensorFile::default();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| parse(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|e| parse(format!("entry {i}: {e}")))?
            .into_owned();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| parse(format!("{name}: {e}")))?;
        let array = ndarray::ArrayD::<f32>::read_npy(&bytes[..])
            .map_err(|e| parse(format!("{name}: {e} (float32 arrays expected)")))?;
        let shape = array.shape().to_vec();
        let values = array.as_standard_layout().iter().copied().collect();
        arrays.tensors.insert(key, (shape, values));
    }
    Ok(arrays)
}

/// Loads BiT's `.npz` at `path` into `model` (`name` in errors): every array is checked
/// against [`bit_npz_layout`] (missing, unexpected and mismatched keys in BiT's names and
/// TF shapes), converted to PyTorch layout and applied.
fn load_bit_npz(
    model: ResNetV2,
    name: &str,
    path: &Path,
) -> Result<(ResNetV2, CheckpointInfo), PipelineError> {
    let arrays = read_npz(path)?.tensors;
    let expected = bit_npz_layout(&model);
    let found = arrays
        .iter()
        .map(|(k, (shape, _))| (k.clone(), shape.clone()))
        .collect();
    let ignored = compare_state_dict(&expected, &found).into_result(path, name)?;
    let module_layout = module_state_dict_layout(&model);
    let mut file = TensorFile::default();
    for e in &module_layout {
        let npz_key = bit_npz_key(&e.key).expect("every ResNetV2 tensor has a BiT name");
        let (shape, values) = &arrays[&npz_key];
        let values = match shape[..] {
            [h, w, i, o] => hwio_to_oihw(values, [h, w, i, o]),
            _ => values.clone(),
        };
        file.tensors
            .insert(e.key.clone(), (e.shape.clone(), values));
    }
    let bytes = file.to_bytes().map_err(|message| CheckpointError::Parse {
        path: path.to_path_buf(),
        message,
    })?;
    let store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(false);
    let (model, mut info) = load_checked(model, &module_layout, name, path, store)?;
    info.ignored_keys = ignored;
    Ok((model, info))
}

/// How a checkpoint's keys map to a module's: a prefix wrapping every key (stripped) and
/// `(file fragment, module fragment)` renames.
struct KeyNames<'a> {
    prefix: &'a str,
    renames: &'a [(String, String)],
}

impl KeyNames<'_> {
    /// The key remapper's `(regex, replacement)` pairs from file keys to module paths.
    fn to_module_regexes(&self) -> Vec<(String, String)> {
        let escape = |s: &str| s.replace('.', "\\.");
        let mut pairs = Vec::new();
        if !self.prefix.is_empty() {
            pairs.push((format!("^{}", escape(self.prefix)), String::new()));
        }
        for (file, module) in self.renames {
            pairs.push((escape(file), module.clone()));
        }
        pairs
    }

    /// A module key in the checkpoint's naming (for messages).
    fn to_file(&self, key: &str) -> String {
        let mut key = key.to_owned();
        for (file, module) in self.renames {
            key = key.replace(module, file);
        }
        key
    }
}

/// [`load_checked`] from the PyTorch or safetensors store of `path`, its keys mapped by
/// `names`; keys in errors are written the checkpoint's way.
fn load_renamed<M: Module>(
    model: M,
    name: &str,
    path: &Path,
    names: &KeyNames<'_>,
) -> Result<(M, CheckpointInfo), PipelineError> {
    let expected = module_state_dict_layout(&model);
    let result = if is_safetensors(path) {
        let mut store = SafetensorsStore::from_file(path)
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(false);
        for (from, to) in names.to_module_regexes() {
            store = store.with_key_remapping(&from, &to);
        }
        load_checked(model, &expected, name, path, store)
    } else {
        let mut store = PytorchStore::from_file(path).allow_partial(false);
        for (from, to) in names.to_module_regexes() {
            store = store.with_key_remapping(&from, &to);
        }
        load_checked(model, &expected, name, path, store)
    };
    result.map_err(|e| match e {
        PipelineError::Checkpoint(CheckpointError::StateDictMismatch {
            path,
            model,
            missing,
            unexpected,
            shape_mismatches,
        }) => CheckpointError::StateDictMismatch {
            path,
            model,
            missing: missing.iter().map(|k| names.to_file(k)).collect(),
            unexpected: unexpected.iter().map(|k| names.to_file(k)).collect(),
            shape_mismatches: shape_mismatches
                .into_iter()
                .map(|m| ShapeMismatch {
                    key: names.to_file(&m.key),
                    ..m
                })
                .collect(),
        }
        .into(),
        other => other,
    })
}

/// `DenseNet-BC-100 (growth 12, reduction 0.5, 10 classes)` and the like.
fn describe_model(plan: &DenseNetPlan) -> String {
    let c = &plan.config;
    format!(
        "DenseNet{}-{} (growth {}, reduction {}, {} classes)",
        if c.bottleneck { "-BC" } else { "" },
        c.depth,
        c.growth_rate,
        c.reduction,
        c.num_classes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(&str, &[usize])]) -> Vec<StateDictEntry> {
        list.iter()
            .map(|(k, s)| StateDictEntry {
                key: k.to_string(),
                shape: s.to_vec(),
            })
            .collect()
    }

    #[test]
    fn layout_of_densenet_bc_100_has_the_checkpoints_tensors_but_counters() {
        let plan = DenseNetConfig::densenet_bc_100(10).plan().unwrap();
        let layout = densenet_state_dict_layout(&plan);
        // 596 tensors in the file, 99 of them BatchNorm counters.
        assert_eq!(layout.len(), 596 - 99);
        assert_eq!(layout[0].key, "conv1.weight");
        assert_eq!(layout.last().unwrap().key, "fc.bias");
        let fc = layout.iter().find(|e| e.key == "fc.weight").unwrap();
        assert_eq!(fc.shape, vec![10, 342]);
    }

    /// The explicit layout is exactly what burn-store sees in the module once its names
    /// are mapped to PyTorch's (gamma -> weight, Linear weight transposed).
    #[test]
    fn layout_matches_the_burn_module_in_pytorch_naming() {
        for config in [
            DenseNetConfig::densenet_bc_100(10),
            DenseNetConfig {
                depth: 22,
                growth_rate: 4,
                reduction: 0.5,
                bottleneck: false,
                num_classes: 3,
                dropout: 0.2,
            },
        ] {
            let plan = config.plan().unwrap();
            let model = DenseNet::from_plan(&plan, &Device::flex());
            let mut from_module: Vec<(String, Vec<usize>)> = model
                .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
                .into_iter()
                .map(|t| (t.name.clone(), t.shape.to_vec()))
                .collect();
            let mut explicit: Vec<(String, Vec<usize>)> = densenet_state_dict_layout(&plan)
                .into_iter()
                .map(|e| (e.key, e.shape))
                .collect();
            from_module.sort();
            explicit.sort();
            assert_eq!(from_module, explicit);
        }
    }

    #[test]
    fn compare_names_missing_unexpected_and_shapes() {
        let expected = entries(&[("a.weight", &[2, 3]), ("b.bias", &[3]), ("c.bias", &[4])]);
        let found: BTreeMap<String, Vec<usize>> = [
            ("a.weight", vec![2, 3]),
            ("b.bias", vec![5]),
            ("d.weight", vec![1]),
            ("bn.num_batches_tracked", vec![]),
        ]
        .into_iter()
        .map(|(k, s)| (k.to_string(), s))
        .collect();
        let diff = compare_state_dict(&expected, &found);
        assert!(!diff.is_match());
        assert_eq!(diff.missing, vec!["c.bias"]);
        assert_eq!(diff.unexpected, vec!["d.weight"]);
        assert_eq!(
            diff.shape_mismatches,
            vec![ShapeMismatch {
                key: "b.bias".into(),
                expected: vec![3],
                found: vec![5]
            }]
        );
        assert_eq!(diff.ignored, vec!["bn.num_batches_tracked"]);

        let err = CheckpointError::StateDictMismatch {
            path: "x.pth".into(),
            model: "m".into(),
            missing: diff.missing,
            unexpected: diff.unexpected,
            shape_mismatches: diff.shape_mismatches,
        };
        let msg = err.to_string();
        assert!(msg.contains("1 missing key(s): c.bias"), "{msg}");
        assert!(msg.contains("1 unexpected key(s): d.weight"), "{msg}");
        assert!(msg.contains("b.bias (model [3], checkpoint [5])"), "{msg}");
        assert!(msg.contains("x.pth"), "{msg}");
    }

    #[test]
    fn keys_order_numeric_segments_by_value() {
        let mut keys = vec!["b.10.w", "b.8.w", "a.2", "b.8", "b.9.x"];
        keys.sort_by(|a, b| compare_keys(a, b));
        assert_eq!(keys, ["a.2", "b.8", "b.8.w", "b.9.x", "b.10.w"]);
    }

    #[test]
    fn an_exact_match_is_a_match() {
        let expected = entries(&[("a", &[1])]);
        let found = [("a".to_string(), vec![1])].into_iter().collect();
        let diff = compare_state_dict(&expected, &found);
        assert!(diff.is_match());
        assert_eq!(diff, StateDictDiff::default());
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let (hash, bytes) = file_sha256(&p).unwrap();
        assert_eq!(
            hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(bytes, 3);
        let missing = file_sha256(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"));
    }
}
