//! Backend-agnostic inference for the precompute driver: normalised images in, penultimate
//! features and logits out.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::{
    CheckpointInfo, LoadedBackbone, LoadedDenseNet, load_backbone, load_densenet,
};
use crate::error::PipelineError;
use crate::model::{
    Arch, Backbone, CpuDenseNet, CpuNet, DenseNetConfig, DenseNetPlan, tensor_values,
};

/// Where the network runs.
#[derive(Debug, Clone)]
pub enum ExtractorBackend {
    /// The fused CPU engines ([`CpuDenseNet`]; [`CpuNet`] for the ResNets, MobileNet-v2
    /// and EfficientNet-Lite) on `threads` threads; 0 means one per available core. The
    /// default, and the fastest CPU path. Architectures without an engine (BiT) run on
    /// burn's flex backend.
    Cpu {
        /// Worker threads (0: all available cores).
        threads: usize,
    },
    /// burn tensor operations on a burn device: `Device::flex()` (CPU), or a libtorch / CUDA
    /// device when the crate is built with the `tch` / `cuda` feature.
    Burn(Device),
}

impl ExtractorBackend {
    /// The burn device networks are loaded onto: `Device::flex()` for the CPU engine (whose
    /// weights are copied from a flex model).
    pub fn device(&self) -> Device {
        match self {
            Self::Cpu { .. } => Device::flex(),
            Self::Burn(device) => device.clone(),
        }
    }
}

impl Default for ExtractorBackend {
    fn default() -> Self {
        Self::Cpu { threads: 0 }
    }
}

impl std::str::FromStr for ExtractorBackend {
    type Err = PipelineError;

    /// Parses a backend name: `cpu` (the CPU engine on all cores), `cpu:N` (on `N` threads),
    /// `flex` (burn's flex CPU backend), and with the crate features of the same names
    /// `cuda[:N]` (burn-cuda) and `tch-cuda[:N]` / `tch-cpu` (libtorch).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, index) = match spec.split_once(':') {
            Some((name, index)) => {
                let index = index.parse::<usize>().map_err(|_| PipelineError::Backend {
                    spec: spec.to_string(),
                    reason: format!("`{index}` is not a device index / thread count"),
                })?;
                (name, Some(index))
            }
            None => (spec, None),
        };
        let unavailable = |feature: &str| PipelineError::Backend {
            spec: spec.to_string(),
            reason: format!("posthoc-pipeline was built without its `{feature}` feature"),
        };
        match (name, index) {
            ("cpu", threads) => Ok(Self::Cpu {
                threads: threads.unwrap_or(0),
            }),
            ("flex", None) => Ok(Self::Burn(Device::flex())),
            #[cfg(feature = "cuda")]
            ("cuda", index) => Ok(Self::Burn(Device::cuda(index.unwrap_or(0)))),
            #[cfg(not(feature = "cuda"))]
            ("cuda", _) => Err(unavailable("cuda")),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            ("tch-cuda", index) => Ok(Self::Burn(Device::libtorch_cuda(index.unwrap_or(0)))),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            ("tch-cpu", None) => Ok(Self::Burn(Device::libtorch())),
            #[cfg(not(feature = "tch"))]
            ("tch-cuda" | "tch-cpu", _) => Err(unavailable("tch")),
            _ => Err(PipelineError::Backend {
                spec: spec.to_string(),
                reason: "expected cpu, cpu:N, flex, cuda[:N], tch-cuda[:N] or tch-cpu".into(),
            }),
        }
    }
}

/// Penultimate features and logits of a batch (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// `[n, m]`: `h = avgpool(relu(bn1(block3(...))))`.
    pub features: Vec<f32>,
    /// `[n, C]`: `h W^T + b`.
    pub logits: Vec<f32>,
}

#[derive(Debug)]
enum Engine {
    Cpu {
        net: Box<CpuDenseNet>,
        threads: usize,
    },
    /// The generic fused CPU engine.
    CpuNet { net: Box<CpuNet>, threads: usize },
    /// Any registered architecture (DenseNet-BC included) through burn tensor operations.
    Burn { model: Backbone, device: Device },
}

/// A loaded network that maps batches of normalised `3 x H x W` images to features and
/// logits: DenseNet-BC on the CPU engine or a burn device, the other architectures on a
/// burn device.
#[derive(Debug)]
pub struct FeatureExtractor {
    engine: Engine,
    input_shape: [usize; 3],
    feature_dim: usize,
    num_classes: usize,
    plan: Option<DenseNetPlan>,
    info: CheckpointInfo,
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
}

/// `threads`, or one per available core for 0.
fn resolve_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
}

/// Images per step of one CPU thread, for both engines: measured best on DenseNet-BC-100
/// and on ResNet-50 (batch 32: 18.3 img/s with 1 against 8.6 with 4; `examples/forward_speed.rs
/// --group`).
const CPU_GROUP: usize = 1;

impl FeatureExtractor {
    /// Shape of one input image: `[channels, height, width]`.
    pub const INPUT_SHAPE: [usize; 3] = [3, 32, 32];

    /// Loads `checkpoint` (a DICE `torch.save` file) for `config` onto `backend`.
    pub fn new(
        config: &DenseNetConfig,
        checkpoint: &Path,
        backend: ExtractorBackend,
    ) -> Result<Self, PipelineError> {
        let loaded = load_densenet(config, checkpoint, &backend.device())?;
        Ok(Self::from_loaded(loaded, backend))
    }

    /// Wraps an already loaded network. For [`ExtractorBackend::Burn`] the model must live
    /// on that device already.
    pub fn from_loaded(loaded: LoadedDenseNet, backend: ExtractorBackend) -> Self {
        let LoadedDenseNet { model, plan, info } = loaded;
        let (head_weight, head_bias) = model.head_weights();
        let engine = match backend {
            ExtractorBackend::Cpu { threads } => Engine::Cpu {
                net: Box::new(CpuDenseNet::from_model(&model, &plan)),
                threads: resolve_threads(threads),
            },
            ExtractorBackend::Burn(device) => Engine::Burn {
                model: Backbone::DenseNet(Box::new(model)),
                device,
            },
        };
        Self {
            engine,
            input_shape: Self::INPUT_SHAPE,
            feature_dim: plan.feature_dim,
            num_classes: plan.config.num_classes,
            plan: Some(plan),
            info,
            head_weight,
            head_bias,
        }
    }

    /// Loads `checkpoint` into a `num_classes`-way `arch` network (any architecture but
    /// DenseNet-BC, which [`Self::new`] builds from its hyperparameters) for inputs of
    /// `3 x height x width` (`[height, width]` = `input`), see [`Self::from_backbone`].
    pub fn new_backbone(
        arch: Arch,
        num_classes: usize,
        checkpoint: &Path,
        backend: ExtractorBackend,
        input: [usize; 2],
    ) -> Result<Self, PipelineError> {
        let loaded = load_backbone(arch, num_classes, checkpoint, &backend.device())?;
        Ok(Self::from_backbone(loaded, &backend, input))
    }

    /// Wraps a network of any architecture for inputs of `3 x height x width`. The `cpu`
    /// backend runs it on the fused engine [`CpuNet`] where its family has one
    /// ([`Backbone::cpu_net`]), else with burn's flex CPU backend; for
    /// [`ExtractorBackend::Burn`] the model must live on that device already.
    pub fn from_backbone(
        loaded: LoadedBackbone,
        backend: &ExtractorBackend,
        [height, width]: [usize; 2],
    ) -> Self {
        let LoadedBackbone { model, info, .. } = loaded;
        let (head_weight, head_bias) = model.head_weights();
        let (feature_dim, num_classes) = (model.feature_dim(), model.num_classes());
        let cpu_net = match backend {
            ExtractorBackend::Cpu { threads } => model.cpu_net().map(|net| (net, *threads)),
            ExtractorBackend::Burn(_) => None,
        };
        let engine = match cpu_net {
            Some((net, threads)) => Engine::CpuNet {
                net: Box::new(net),
                threads: resolve_threads(threads),
            },
            None => Engine::Burn {
                model,
                device: backend.device(),
            },
        };
        Self {
            input_shape: [3, height, width],
            feature_dim,
            num_classes,
            engine,
            plan: None,
            info,
            head_weight,
            head_bias,
        }
    }

    /// Dimension `m` of the features.
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Shape of one input image: `[3, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    /// The checked DenseNet configuration (`None` for the other architectures).
    pub fn plan(&self) -> Option<&DenseNetPlan> {
        self.plan.as_ref()
    }

    /// Provenance of the loaded checkpoint (path, sha256, size).
    pub fn checkpoint(&self) -> &CheckpointInfo {
        &self.info
    }

    /// The linear head: weight `[C, m]` (PyTorch layout, row-major) and bias `[C]`.
    pub fn head(&self) -> (&[f32], &[f32]) {
        (&self.head_weight, &self.head_bias)
    }

    /// Features and logits of `n` images given as normalised NCHW float32
    /// (`n x 3 x H x W` values, [`Self::input_shape`]).
    ///
    /// On the CPU engine every image is computed on its own, so a row's result does not
    /// depend on the batch it comes in or on the thread count.
    pub fn extract(&self, inputs: &[f32], n: usize) -> Result<Extracted, PipelineError> {
        let [c, h, w] = self.input_shape;
        let expected = n * c * h * w;
        if inputs.len() != expected {
            return Err(PipelineError::InputShape {
                found: inputs.len(),
                expected,
                n,
                shape: self.input_shape,
            });
        }
        let (features, logits) = match &self.engine {
            Engine::Cpu { net, threads } => net.forward(inputs, n, h, w, *threads, CPU_GROUP),
            Engine::CpuNet { net, threads } => net.forward(inputs, n, h, w, *threads, CPU_GROUP),
            Engine::Burn { model, device } => {
                let x =
                    Tensor::<4>::from_data(TensorData::new(inputs.to_vec(), [n, c, h, w]), device);
                let (f, l) = model.forward(x);
                (tensor_values(f), tensor_values(l))
            }
        };
        Ok(Extracted { features, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse() {
        assert!(matches!(
            "cpu".parse::<ExtractorBackend>().unwrap(),
            ExtractorBackend::Cpu { threads: 0 }
        ));
        assert!(matches!(
            "cpu:2".parse::<ExtractorBackend>().unwrap(),
            ExtractorBackend::Cpu { threads: 2 }
        ));
        assert!(matches!(
            "flex".parse::<ExtractorBackend>().unwrap(),
            ExtractorBackend::Burn(_)
        ));
        for bad in ["gpu", "cpu:x", "flex:1", ""] {
            let err = bad.parse::<ExtractorBackend>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        #[cfg(not(feature = "cuda"))]
        assert!(
            "cuda:0"
                .parse::<ExtractorBackend>()
                .unwrap_err()
                .to_string()
                .contains("`cuda` feature")
        );
    }
}
