//! Experiment configs (`configs/*.toml`): the model, its preprocessing, the image sets,
//! and the evaluate sweep. Parsed once at the edge; every section is optional so an
//! evaluate-only config can name just `[eval]`.

use std::path::{Path, PathBuf};

#[cfg(feature = "pipeline")]
use posthoc_pipeline::data::{DataError, Preprocess};
#[cfg(feature = "pipeline")]
use posthoc_pipeline::model::DenseNetConfig;
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
    /// Architecture name (`densenet-bc`).
    pub arch: String,
    /// Network depth (100 for DenseNet-BC-100).
    pub depth: usize,
    /// DenseNet growth rate.
    pub growth_rate: usize,
    /// Transition compression.
    pub reduction: f64,
    /// Bottleneck (1x1) layers in dense blocks.
    pub bottleneck: bool,
    /// Number of classes of the head.
    pub num_classes: usize,
    /// Class names in label order.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Dropout rate inside dense layers (training only).
    #[serde(default)]
    pub dropout: f64,
    /// Checkpoint path (relative to the working directory).
    pub checkpoint: PathBuf,
}

impl ModelSection {
    /// The network of this section with dropout probability `dropout`; an error (naming
    /// the config at `path`) unless `arch` is `densenet-bc`, the one implemented.
    #[cfg(feature = "pipeline")]
    pub fn densenet(&self, path: &Path, dropout: f64) -> Result<DenseNetConfig, ConfigError> {
        if self.arch != "densenet-bc" {
            return Err(ConfigError::UnsupportedArch {
                path: path.to_owned(),
                arch: self.arch.clone(),
            });
        }
        Ok(DenseNetConfig {
            depth: self.depth,
            growth_rate: self.growth_rate,
            reduction: self.reduction,
            bottleneck: self.bottleneck,
            num_classes: self.num_classes,
            dropout,
        })
    }

    /// Class names in label order: `class_names`, or the label numbers when none are given.
    pub fn labelled_classes(&self) -> Vec<String> {
        if self.class_names.is_empty() {
            (0..self.num_classes).map(|c| c.to_string()).collect()
        } else {
            self.class_names.clone()
        }
    }
}

/// `[preprocess]`: `Resize(resize)`, `CenterCrop(crop)`, `ToTensor`, `Normalize(mean, std)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    /// Shorter side after resizing.
    pub resize: u32,
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
        Preprocess::new(
            Some(self.resize as usize),
            self.crop as usize,
            self.mean,
            self.std,
        )
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
    /// The sweep: each entry expands to the cartesian product of its lists.
    #[serde(default)]
    pub run: Vec<RunSection>,
}

/// One `[[eval.run]]`: a method and its parameter lists (a scalar is a one-element list).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Method name (`msp`, `maxlogit`, `energy`, `temp-msp`, `react`, `dice`, `dice-react`, `line`, `himplos`).
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
    #[error("{}: [model] arch = {arch:?}: only \"densenet-bc\" is implemented", path.display())]
    UnsupportedArch {
        /// Config path.
        path: PathBuf,
        /// The `arch` given.
        arch: String,
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
        assert_eq!(model.labelled_classes()[0], "airplane");
        model.class_names.clear();
        assert_eq!(
            model.labelled_classes(),
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
        );
        model.arch = "resnet".into();
        let e = model.densenet(Path::new("x.toml"), 0.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.toml: [model] arch = \"resnet\": only \"densenet-bc\" is implemented"
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
