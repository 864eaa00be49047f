//! Backend-agnostic inference for the precompute driver: normalised images in, penultimate
//! features and logits out.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::{CheckpointInfo, LoadedDenseNet, load_densenet};
use crate::error::PipelineError;
use crate::model::{CpuDenseNet, DenseNet, DenseNetConfig, DenseNetPlan, tensor_values};

/// Where the network runs.
#[derive(Debug, Clone)]
pub enum ExtractorBackend {
    /// The fused CPU engine ([`CpuDenseNet`]) on `threads` threads; 0 means one per
    /// available core. The default, and the fastest CPU path.
    Cpu {
        /// Worker threads (0: all available cores).
        threads: usize,
    },
    /// burn tensor operations on a burn device: `Device::flex()` (CPU), or a libtorch / CUDA
    /// device when the crate is built with the `tch` / `cuda` feature.
    Burn(Device),
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
    Burn {
        model: Box<DenseNet>,
        device: Device,
    },
}

/// A loaded DenseNet that maps batches of normalised `3 x 32 x 32` images to features and
/// logits, on the CPU engine or a burn device.
#[derive(Debug)]
pub struct FeatureExtractor {
    engine: Engine,
    plan: DenseNetPlan,
    info: CheckpointInfo,
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
}

/// Images per step of one CPU thread (measured best on DenseNet-BC-100: see
/// `examples/forward_speed.rs`).
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
        let device = match &backend {
            ExtractorBackend::Cpu { .. } => Device::flex(),
            ExtractorBackend::Burn(device) => device.clone(),
        };
        let loaded = load_densenet(config, checkpoint, &device)?;
        Ok(Self::from_loaded(loaded, backend))
    }

    /// Wraps an already loaded network. For [`ExtractorBackend::Burn`] the model must live
    /// on that device already.
    pub fn from_loaded(loaded: LoadedDenseNet, backend: ExtractorBackend) -> Self {
        let LoadedDenseNet { model, plan, info } = loaded;
        let (head_weight, head_bias) = model.head_weights();
        let engine = match backend {
            ExtractorBackend::Cpu { threads } => {
                let threads = if threads == 0 {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                } else {
                    threads
                };
                Engine::Cpu {
                    net: Box::new(CpuDenseNet::from_model(&model, &plan)),
                    threads,
                }
            }
            ExtractorBackend::Burn(device) => Engine::Burn {
                model: Box::new(model),
                device,
            },
        };
        Self {
            engine,
            plan,
            info,
            head_weight,
            head_bias,
        }
    }

    /// Dimension `m` of the features.
    pub fn feature_dim(&self) -> usize {
        self.plan.feature_dim
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.plan.config.num_classes
    }

    /// The checked model configuration.
    pub fn plan(&self) -> &DenseNetPlan {
        &self.plan
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
    /// (`n x 3 x 32 x 32` values).
    ///
    /// On the CPU engine every image is computed on its own, so a row's result does not
    /// depend on the batch it comes in or on the thread count.
    pub fn extract(&self, inputs: &[f32], n: usize) -> Result<Extracted, PipelineError> {
        let [c, h, w] = Self::INPUT_SHAPE;
        let expected = n * c * h * w;
        if inputs.len() != expected {
            return Err(PipelineError::InputShape {
                found: inputs.len(),
                expected,
                n,
                shape: Self::INPUT_SHAPE,
            });
        }
        let (features, logits) = match &self.engine {
            Engine::Cpu { net, threads } => net.forward(inputs, n, h, w, *threads, CPU_GROUP),
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
