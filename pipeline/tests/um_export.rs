//! The exported fine-tuned checkpoint: a safetensors state dict in PyTorch naming that
//! `checkpoint::load_densenet` reads with the same key and shape checks, and whose
//! network (burn eval mode and the fast CPU engine) computes what the training network
//! computes in eval mode — UMAP masks and BatchNorm modes folded in.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use posthoc_pipeline::checkpoint::load_densenet;
use posthoc_pipeline::data::{Preprocess, decode_rgb};
use posthoc_pipeline::extractor::{ExtractorBackend, FeatureExtractor};
use posthoc_pipeline::model::{DenseNetConfig, tensor_values};
use posthoc_pipeline::um::tensors::TensorFile;
use posthoc_pipeline::um::train::export;
use posthoc_pipeline::um::{BatchNormMode, KeepFraction, NetSpec, Pass, UmNet, Variant};
use posthoc_pipeline::{CheckpointError, PipelineError};

fn images() -> Option<Vec<f32>> {
    let root = common::shared_path("data/cifar10/test-lossless-first1000")?;
    let pre = Preprocess::cifar_dice();
    let mut px = vec![0.0f32; 4 * 3072];
    for (i, p) in [
        "cat/0000.png",
        "ship/0000.png",
        "ship/0001.png",
        "airplane/0000.png",
    ]
    .iter()
    .enumerate()
    {
        let path = root.join(p);
        let img = decode_rgb(&std::fs::read(&path).unwrap(), &path).unwrap();
        pre.apply_into(img, &mut px[i * 3072..(i + 1) * 3072]);
    }
    Some(px)
}

#[test]
fn exported_networks_load_and_compute_what_they_trained() {
    let Some(ckpt) =
        common::shared_path("data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar")
    else {
        return;
    };
    let Some(px) = images() else { return };
    let config = DenseNetConfig::densenet_bc_100(10);
    let loaded = load_densenet(&config, &ckpt, &Device::flex()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (variant, bn) in [
        (Variant::Um, BatchNormMode::FrozenAffine),
        (Variant::Umap, BatchNormMode::FrozenAffine),
        (Variant::Umap, BatchNormMode::NonAffine),
    ] {
        let spec = NetSpec {
            variant,
            batch_norm: bn,
            dropout: 0.3,
            keep: KeepFraction::new(0.8).unwrap(),
        };
        let net = UmNet::from_densenet(&loaded.model, &loaded.plan, spec, 3).unwrap();
        let x =
            Tensor::<4>::from_data(TensorData::new(px.clone(), [4, 3, 32, 32]), &Device::flex());
        let want = tensor_values(net.forward(x.clone(), Pass::Eval).logits);

        let path = dir.path().join(format!("{variant}-{bn}.safetensors"));
        export(&net, &path, &serde_json::json!({})).unwrap();
        let file = TensorFile::read(&path).unwrap();
        assert_eq!(
            file.tensors.len(),
            497,
            "state dict without counters or scores"
        );
        assert!(file.tensors.contains_key("block1.layer.0.bn1.weight"));
        if variant == Variant::Umap {
            // int(0.2 * 648) = 129 of conv1's weights are zero (none are zero in the checkpoint).
            let zeros = file.tensors["conv1.weight"]
                .1
                .iter()
                .filter(|v| **v == 0.0)
                .count();
            assert_eq!(zeros, 129);
        }
        let gamma = &file.tensors["bn1.weight"].1;
        assert_eq!(
            bn == BatchNormMode::NonAffine,
            gamma.iter().all(|g| *g == 1.0)
        );

        let reloaded = load_densenet(&config, &path, &Device::flex()).unwrap();
        assert_eq!(reloaded.info.tensors_loaded, 497);
        let (_, burn_logits) = reloaded.model.forward(x);
        let burn_logits = tensor_values(burn_logits);
        let engine = FeatureExtractor::new(&config, &path, ExtractorBackend::Cpu { threads: 1 })
            .unwrap()
            .extract(&px, 4)
            .unwrap()
            .logits;
        for (name, got) in [("burn", &burn_logits), ("cpu engine", &engine)] {
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Dropping the checkpoint's gamma/beta ("non-affine") leaves running statistics
            // that no longer fit the activations: logits reach 1e8, so the bound is relative.
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            assert!(
                d <= 1e-4 * scale,
                "{variant} {bn} {name}: max |diff| {d} (scale {scale})"
            );
        }
    }

    // A state dict with a tensor missing fails with the file and the key named.
    let mut broken = TensorFile::read(&dir.path().join("um-frozen-affine.safetensors")).unwrap();
    broken.tensors.remove("trans1.conv1.weight");
    let bad = dir.path().join("broken.safetensors");
    broken.write(&bad).unwrap();
    let err = load_densenet(&config, &bad, &Device::flex()).unwrap_err();
    assert!(
        matches!(
            &err,
            PipelineError::Checkpoint(CheckpointError::StateDictMismatch { missing, .. })
                if missing == &vec!["trans1.conv1.weight".to_string()]
        ),
        "{err}"
    );
    assert!(err.to_string().contains("broken.safetensors"), "{err}");
}
