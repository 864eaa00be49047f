//! Experiment configs (`configs/*.toml`): the model, its preprocessing, the image sets,
//! and the evaluate sweep. Parsed once at the edge; every section is optional so an
//! evaluate-only config can name just `[eval]`.

use std::path::{Path, PathBuf};

#[cfg(feature = "pipeline")]
use posthoc_pipeline::data::{DataError, ImageSetSpec, Interpolation, Preprocess};
#[cfg(feature = "pipeline")]
use posthoc_pipeline::model::{Arch, DenseNetConfig};
use serde::{Deserialize, Serialize};

/// A whole experiment config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The backbone and its checkpoint.
    pub model: Option<ModelSection>,
    /// The test-time transform, as torchvision would apply it.
    pub preprocess: Option<PreprocessSection>,
    /// ID and OOD image sets.
    pub data: Option<DataSection>,
    /// Precompute settings.
    pub precompute: Option<PrecomputeSection>,
    /// Evaluate settings and the sweep.
    #[serde(default)]
    pub eval: EvalSection,
    /// Unleashing-Mask fine-tuning settings.
    pub um: Option<toml::Table>,
}

/// `[model]`: which network, which checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Identifier written to the cache manifest (caches of other models are refused).
    pub id: String,
    /// Architecture name: one of [`Arch::ALL`] (`densenet-bc`, `efficientnet-lite0`, ...).
    pub arch: String,
    /// Network depth (DenseNet-BC only: 100 for DenseNet-BC-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Growth rate (DenseNet-BC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_rate: Option<usize>,
    /// Transition compression (DenseNet-BC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduction: Option<f64>,
    /// Bottleneck (1x1) layers in dense blocks (DenseNet-BC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<bool>,
    /// Number of classes of the head.
    pub num_classes: usize,
    /// Class names in label order.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// A file of class names in label order, one a line, the name being the line's first
    /// whitespace-separated field (`n01440764 tench` gives `n01440764`, the ImageFolder
    /// class folder); instead of `class_names`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names_file: Option<PathBuf>,
    /// Dropout rate inside dense layers (training only).
    #[serde(default)]
    pub dropout: f64,
    /// Checkpoint path (relative to the working directory).
    pub checkpoint: PathBuf,
}

impl ModelSection {
    /// The architecture `arch` names; an error naming the config at `path` and listing the
    /// known architectures when it is none of them.
    #[cfg(feature = "pipeline")]
    pub fn architecture(&self, path: &Path) -> Result<Arch, ConfigError> {
        self.arch
            .parse::<Arch>()
            .map_err(|_| ConfigError::UnsupportedArch {
                path: path.to_owned(),
                arch: self.arch.clone(),
            })
    }

    /// The network of this section with dropout probability `dropout`; an error (naming
    /// the config at `path`) unless `arch` is `densenet-bc` with its four hyperparameters.
    #[cfg(feature = "pipeline")]
    pub fn densenet(&self, path: &Path, dropout: f64) -> Result<DenseNetConfig, ConfigError> {
        if self.architecture(path)? != Arch::DenseNetBc {
            return Err(ConfigError::NotDenseNet {
                path: path.to_owned(),
                arch: self.arch.clone(),
            });
        }
        let need = |field: &'static str| ConfigError::MissingField {
            path: path.to_owned(),
            section: "model",
            field,
            why: "arch = \"densenet-bc\" needs it",
        };
        Ok(DenseNetConfig {
            depth: self.depth.ok_or_else(|| need("depth"))?,
            growth_rate: self.growth_rate.ok_or_else(|| need("growth_rate"))?,
            reduction: self.reduction.ok_or_else(|| need("reduction"))?,
            bottleneck: self.bottleneck.ok_or_else(|| need("bottleneck"))?,
            num_classes: self.num_classes,
            dropout,
        })
    }

    /// Class names in label order: `class_names`, the first fields of `class_names_file`'s
    /// lines, or the label numbers when neither is given. Errors name the config at `path`
    /// (both given) or the class file and line (unreadable, a blank line).
    pub fn labelled_classes(&self, path: &Path) -> Result<Vec<String>, ConfigError> {
        match (&self.class_names_file, self.class_names.is_empty()) {
            (Some(_), false) => Err(ConfigError::Conflict {
                path: path.to_owned(),
                what: "[model] has both class_names and class_names_file: give one".into(),
            }),
            (Some(file), true) => read_class_names(file),
            (None, false) => Ok(self.class_names.clone()),
            (None, true) => Ok((0..self.num_classes).map(|c| c.to_string()).collect()),
        }
    }
}

/// The first whitespace-separated field of every line of `file` (trailing empty lines
/// ignored); a blank line in between is an error naming the file and line.
pub fn read_class_names(file: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
        path: file.to_owned(),
        source,
    })?;
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            line.split_whitespace()
                .next()
                .map(str::to_owned)
                .ok_or_else(|| ConfigError::BadLine {
                    path: file.to_owned(),
                    line: i + 1,
                    reason: "blank line: expected a class name".into(),
                })
        })
        .collect()
}

/// `[preprocess]`: `Resize(resize)`, `CenterCrop(crop)`, `ToTensor`, `Normalize(mean, std)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    /// Shorter side after resizing.
    pub resize: u32,
    /// Resize filter, `"bilinear"` (default, torchvision's) or `"bicubic"` (both Pillow-exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg(feature = "pipeline")]
    pub interpolation: Option<Interpolation>,
    /// `Resize` filter, as written (checked by builds with the `pipeline` feature).
    #[cfg(not(feature = "pipeline"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolation: Option<String>,
    /// Centre-crop size.
    pub crop: u32,
    /// Per-channel mean (RGB).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
}

#[cfg(feature = "pipeline")]
impl PreprocessSection {
    /// The checked transform this section describes.
    pub fn transform(&self) -> Result<Preprocess, DataError> {
        Ok(Preprocess::new(
            Some(self.resize as usize),
            self.crop as usize,
            self.mean,
            self.std,
        )?
        .with_interpolation(self.interpolation.unwrap_or_default()))
    }
}

/// Where an image set lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SetSource {
    /// An ImageFolder tree.
    Folder {
        /// Root of the tree.
        folder: PathBuf,
    },
    /// Tar shards of ImageFolder members, read in order.
    Tar {
        /// Shard paths.
        tar: Vec<PathBuf>,
    },
    /// An image list: `<path> <label>` per line (label optional for OOD sets), paths
    /// relative to `root`.
    List {
        /// The list file.
        list: PathBuf,
        /// Folder the listed paths are relative to.
        root: PathBuf,
    },
}

#[cfg(feature = "pipeline")]
impl SetSource {
    /// The pipeline's description of this set.
    pub fn spec(&self) -> ImageSetSpec {
        match self {
            SetSource::Folder { folder } => ImageSetSpec::Folder(folder.clone()),
            SetSource::Tar { tar } => ImageSetSpec::Tar(tar.clone()),
            SetSource::List { list, root } => ImageSetSpec::List {
                list: list.clone(),
                root: root.clone(),
            },
        }
    }
}

/// `[data]`: the ID splits and the OOD sets (by name).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// ID training split (statistics come from it).
    pub id_train: SetSource,
    /// ID test split (the positive class of every metric).
    pub id_test: SetSource,
    /// OOD sets by name, in the order they are reported.
    #[serde(default)]
    pub ood: indexmap::IndexMap<String, SetSource>,
}

/// `[precompute]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecomputeSection {
    /// Images per forward batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Cache directory to write.
    pub out: PathBuf,
}

fn default_batch_size() -> usize {
    128
}

/// `[eval]`: the default cache, convention, OOD selection and the sweep.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Default cache directory (`--cache` overrides).
    pub cache: Option<PathBuf>,
    /// `sklearn` (default) or `dice`.
    pub convention: Option<String>,
    /// OOD sets to report (default: every OOD set in the cache).
    pub ood: Option<Vec<String>>,
    /// Named groups of OOD sets (`near = ["isun"]`, `far = ["mnist", "dtd"]`), each
    /// reported as an extra average row per configuration, as OpenOOD's tables do.
    #[serde(default)]
    pub groups: indexmap::IndexMap<String, Vec<String>>,
    /// The sweep: each entry expands to the cartesian product of its lists.
    #[serde(default)]
    pub run: Vec<RunSection>,
}

/// One `[[eval.run]]`: a method and its parameter lists (a scalar is a one-element list).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Method name (`msp`, `dice`, `knn`, ...: `posthoc eval --help` lists them).
    pub method: String,
    /// Sparsity percentages.
    pub p: Option<OneOrMany<f64>>,
    /// Clip thresholds: numbers, or `"pNN"` for a percentile of ID-train activations.
    pub clip: Option<OneOrMany<ClipValue>>,
    /// Temperatures.
    pub temperature: Option<OneOrMany<f64>>,
    /// LINe activation-mask percentile.
    pub p_a: Option<OneOrMany<f64>>,
    /// LINe weight-mask percentile.
    pub p_w: Option<OneOrMany<f64>>,
    /// GEN's exponent.
    pub gamma: Option<OneOrMany<f64>>,
    /// GEN's M.
    pub top_m: Option<OneOrMany<f64>>,
    /// Nearest neighbours (knn, nnguide).
    pub k: Option<OneOrMany<f64>>,
    /// ViM / Residual dimension D.
    pub dim: Option<OneOrMany<f64>>,
    /// KNN / NNGuide bank fraction.
    pub bank_fraction: Option<OneOrMany<f64>>,
    /// Logit score after activation shaping (`energy`, `msp`, `maxlogit`, `gen`).
    pub score: Option<OneOrMany<String>>,
    /// `paper` or `pytorch-ood`.
    pub variant: Option<OneOrMany<String>>,
}

impl RunSection {
    /// The parameter lists given, as the command line would spell them
    /// (`(Param::K, "10,50")`), in [`Param::ALL`] order.
    pub fn values(&self) -> Vec<(crate::eval::sweep::Param, String)> {
        use crate::eval::sweep::Param;
        let nums = |o: &Option<OneOrMany<f64>>| {
            o.as_ref().map(|v| {
                v.to_vec()
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
        };
        let texts = |o: &Option<OneOrMany<String>>| o.as_ref().map(|v| v.to_vec().join(","));
        let clip = self.clip.as_ref().map(|v| {
            v.to_vec()
                .iter()
                .map(ClipValue::to_cli_string)
                .collect::<Vec<_>>()
                .join(",")
        });
        [
            (Param::P, nums(&self.p)),
            (Param::Clip, clip),
            (Param::Temperature, nums(&self.temperature)),
            (Param::PA, nums(&self.p_a)),
            (Param::PW, nums(&self.p_w)),
            (Param::Gamma, nums(&self.gamma)),
            (Param::TopM, nums(&self.top_m)),
            (Param::K, nums(&self.k)),
            (Param::Dim, nums(&self.dim)),
            (Param::BankFraction, nums(&self.bank_fraction)),
            (Param::Score, texts(&self.score)),
            (Param::Variant, texts(&self.variant)),
        ]
        .into_iter()
        .filter_map(|(p, v)| v.map(|v| (p, v)))
        .collect()
    }
}

/// A TOML scalar or array.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A clip threshold as written in a config: a number or `"pNN"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClipValue {
    /// An absolute threshold.
    Number(f64),
    /// `"pNN"` (or a number written as a string).
    Text(String),
}

impl ClipValue {
    /// The value as the CLI would spell it (`1`, `p90`).
    pub fn to_cli_string(&self) -> String {
        match self {
            ClipValue::Number(v) => format!("{v}"),
            ClipValue::Text(s) => s.clone(),
        }
    }
}

/// Errors reading a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `[model] arch` names a network that is not implemented.
    #[cfg(feature = "pipeline")]
    #[error("{}: [model] arch = {arch:?} is not a known architecture (known: {})", path.display(), Arch::known_names())]
    UnsupportedArch {
        /// Config path.
        path: PathBuf,
        /// The `arch` given.
        arch: String,
    },
    /// A command that only works on DenseNet-BC got another architecture.
    #[error("{}: [model] arch = {arch:?}: this command needs arch = \"densenet-bc\"", path.display())]
    NotDenseNet {
        /// Config path.
        path: PathBuf,
        /// The `arch` given.
        arch: String,
    },
    /// A field the rest of the section makes necessary is absent.
    #[error("{}: [{section}] {field} is missing ({why})", path.display())]
    MissingField {
        /// Config path.
        path: PathBuf,
        /// Section name.
        section: &'static str,
        /// Field name.
        field: &'static str,
        /// Why it is needed.
        why: &'static str,
    },
    /// Two settings that exclude each other.
    #[error("{}: {what}", path.display())]
    Conflict {
        /// Config path.
        path: PathBuf,
        /// What conflicts.
        what: String,
    },
    /// A line of a list file (class names, image list) that cannot be used.
    #[error("{}:{line}: {reason}", path.display())]
    BadLine {
        /// The list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// Config path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not fit the schema.
    #[error("config {path}: {source}")]
    Parse {
        /// Config path.
        path: PathBuf,
        /// Underlying error.
        source: Box<toml::de::Error>,
    },
    /// A section the command needs is absent.
    #[error("config {path} has no [{section}] section, which `{command}` needs")]
    MissingSection {
        /// Config path.
        path: PathBuf,
        /// Section name.
        section: &'static str,
        /// Command that needs it.
        command: &'static str,
    },
}

/// Section `name` of the config at `path` (`section`), or the error naming the file, the
/// section and the `command` that needs it.
pub fn required<'a, T>(
    section: &'a Option<T>,
    path: &Path,
    name: &'static str,
    command: &'static str,
) -> Result<&'a T, ConfigError> {
    section.as_ref().ok_or_else(|| ConfigError::MissingSection {
        path: path.to_owned(),
        section: name,
        command,
    })
}

impl ExperimentConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_section_builds_the_network_and_refuses_other_archs() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cifar10-densenet100.toml");
        let mut model = ExperimentConfig::load(&path).unwrap().model.unwrap();
        let mut want = DenseNetConfig::densenet_bc_100(10);
        want.dropout = 0.3;
        assert_eq!(model.densenet(&path, 0.3).unwrap(), want);
        assert_eq!(model.labelled_classes(&path).unwrap()[0], "airplane");
        model.class_names.clear();
        assert_eq!(
            model.labelled_classes(&path).unwrap(),
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
        );
        model.depth = None;
        let e = model.densenet(Path::new("x.toml"), 0.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.toml: [model] depth is missing (arch = \"densenet-bc\" needs it)"
        );
        model.arch = "efficientnet-lite0".into();
        let e = model.densenet(Path::new("x.toml"), 0.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.toml: [model] arch = \"efficientnet-lite0\": this command needs arch = \"densenet-bc\""
        );
        model.arch = "resnet".into();
        let e = model.architecture(Path::new("x.toml")).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "x.toml: [model] arch = \"resnet\" is not a known architecture (known: \"densenet-bc\", \"efficientnet-lite0\""
            ),
            "{e}"
        );
    }

    #[test]
    fn a_missing_section_names_file_section_and_command() {
        let path = Path::new("configs/partial.toml");
        let cfg = ExperimentConfig::parse("", path).unwrap();
        let e = required(&cfg.data, path, "data", "precompute").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config configs/partial.toml has no [data] section, which `precompute` needs"
        );
    }

    #[test]
    fn default_config_parses_with_thirteen_settings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cifar10-densenet100.toml");
        let cfg = ExperimentConfig::load(&path).unwrap();
        let model = cfg.model.unwrap();
        assert_eq!(model.num_classes, 10);
        assert_eq!(model.class_names.len(), 10);
        assert!(model.class_names_file.is_none());
        let data = cfg.data.unwrap();
        assert_eq!(
            data.ood.keys().collect::<Vec<_>>(),
            ["isun", "tinyimagenet", "mnist", "dtd"]
        );
        assert!(matches!(data.id_train, SetSource::Tar { ref tar } if tar.len() == 5));
        let points: usize = cfg
            .eval
            .run
            .iter()
            .map(|r| {
                let n = |o: &Option<OneOrMany<f64>>| o.as_ref().map_or(1, |v| v.to_vec().len());
                n(&r.p)
                    * r.clip.as_ref().map_or(1, |v| v.to_vec().len())
                    * n(&r.temperature)
                    * n(&r.p_a)
                    * n(&r.p_w)
            })
            .sum();
        assert_eq!(points, 13);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        let err = ExperimentConfig::parse("[eval]\nconvetion = \"dice\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("convetion"), "{err}");
    }
}
