//! Loading a checkpoint that does not fit the model fails with the keys and shapes named.

mod common;

use burn::tensor::Device;
use posthoc_pipeline::checkpoint::{load_densenet, load_densenet_with_key};
use posthoc_pipeline::model::DenseNetConfig;
use posthoc_pipeline::{CheckpointError, PipelineError};

use common::*;

fn checkpoint_error(e: PipelineError) -> CheckpointError {
    match e {
        PipelineError::Checkpoint(c) => c,
        other => panic!("expected a checkpoint error, got {other}"),
    }
}

/// The error of loading the parity fixture's checkpoint (CIFAR-10 DenseNet-BC-100) into a
/// model of `config`, and its message (printed); `None` when `../shared` is absent.
fn mismatch_with(config: &DenseNetConfig) -> Option<(CheckpointError, String)> {
    let (_, ckpt) = parity_fixture()?;
    let err = checkpoint_error(load_densenet(config, &ckpt, &Device::flex()).unwrap_err());
    let msg = err.to_string();
    println!("{msg}");
    Some((err, msg))
}

#[test]
fn cifar100_checkpoint_into_a_10_class_model_names_the_head_shapes() {
    let Some(ckpt) = cifar100_checkpoint() else {
        return;
    };
    let err =
        load_densenet(&DenseNetConfig::densenet_bc_100(10), &ckpt, &Device::flex()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains("fc.weight (model [10, 342], checkpoint [100, 342])"),
        "{msg}"
    );
    assert!(
        msg.contains("fc.bias (model [10], checkpoint [100])"),
        "{msg}"
    );
    assert!(msg.contains("checkpoint_100.pth.tar"), "{msg}");
    match checkpoint_error(err) {
        CheckpointError::StateDictMismatch {
            missing,
            unexpected,
            shape_mismatches,
            ..
        } => {
            assert!(missing.is_empty() && unexpected.is_empty());
            let keys: Vec<&str> = shape_mismatches.iter().map(|m| m.key.as_str()).collect();
            assert_eq!(keys, ["fc.weight", "fc.bias"]);
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn cifar100_checkpoint_loads_into_a_100_class_model() {
    let Some(ckpt) = cifar100_checkpoint() else {
        return;
    };
    let loaded = load_densenet(
        &DenseNetConfig::densenet_bc_100(100),
        &ckpt,
        &Device::flex(),
    )
    .unwrap();
    assert_eq!(loaded.model.num_classes(), 100);
    assert_eq!(loaded.model.feature_dim(), 342);
    assert_eq!(
        loaded.info.sha256,
        "56cbe261c2612976e11aedcbd60ba00766e8c01c78f96c3f18ff561ead804d47"
    );
}

/// A shallower network (8 layers per block) lacks no key of its own but finds 8 layers
/// per block too many in the checkpoint, and its transitions have other shapes.
#[test]
fn a_shallower_model_names_the_unexpected_layers() {
    let mut config = DenseNetConfig::densenet_bc_100(10);
    config.depth = 52;
    let Some((err, msg)) = mismatch_with(&config) else {
        return;
    };
    match err {
        CheckpointError::StateDictMismatch {
            missing,
            unexpected,
            shape_mismatches,
            ..
        } => {
            assert!(missing.is_empty());
            // layers 8..15 of 3 blocks, 10 tensors each (2 BatchNorms x 4, 2 convolutions)
            assert_eq!(unexpected.len(), 3 * 8 * 10);
            assert!(unexpected.contains(&"block1.layer.8.bn1.weight".to_string()));
            assert!(
                msg.contains(
                    "unexpected key(s): block1.layer.8.bn1.bias, block1.layer.8.bn1.running_mean"
                ),
                "{msg}"
            );
            assert_eq!(shape_mismatches[0].key, "trans1.bn1.weight");
            assert_eq!(shape_mismatches[0].expected, vec![120]);
            assert_eq!(shape_mismatches[0].found, vec![216]);
        }
        other => panic!("unexpected error {other}"),
    }
}

/// Basic (non-bottleneck) layers need 3x3 `conv1` weights and no `bn2`/`conv2`.
#[test]
fn a_basic_layer_model_names_missing_unexpected_and_shapes() {
    let config = DenseNetConfig {
        depth: 52,
        growth_rate: 12,
        reduction: 0.5,
        bottleneck: false,
        num_classes: 10,
        dropout: 0.0,
    };
    // 16 basic layers per block: same layer count as the checkpoint.
    let Some((err, msg)) = mismatch_with(&config) else {
        return;
    };
    match err {
        CheckpointError::StateDictMismatch {
            missing,
            unexpected,
            shape_mismatches,
            ..
        } => {
            assert!(missing.is_empty(), "{missing:?}");
            assert_eq!(unexpected.len(), 3 * 16 * 5);
            assert!(unexpected.contains(&"block2.layer.3.conv2.weight".to_string()));
            assert_eq!(shape_mismatches[0].key, "block1.layer.0.conv1.weight");
            assert_eq!(shape_mismatches[0].expected, vec![12, 24, 3, 3]);
            assert_eq!(shape_mismatches[0].found, vec![48, 24, 1, 1]);
            assert!(
                msg.contains(
                    "block1.layer.0.conv1.weight (model [12, 24, 3, 3], checkpoint [48, 24, 1, 1])"
                ),
                "{msg}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_deeper_model_names_the_missing_layers() {
    let mut config = DenseNetConfig::densenet_bc_100(10);
    config.depth = 106;
    let Some((err, msg)) = mismatch_with(&config) else {
        return;
    };
    assert!(
        msg.contains("missing key(s): block1.layer.16.bn1.weight"),
        "{msg}"
    );
    match err {
        CheckpointError::StateDictMismatch { missing, .. } => assert_eq!(missing.len(), 3 * 10),
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_wrong_state_dict_key_and_a_missing_file_are_named() {
    let Some((fx, ckpt)) = parity_fixture() else {
        return;
    };
    let config = DenseNetConfig::densenet_bc_100(10);
    let err = load_densenet_with_key(&config, &ckpt, Some("model"), &Device::flex()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(
        checkpoint_error(err),
        CheckpointError::Parse { .. }
    ));
    assert!(
        msg.contains("model") && msg.contains("checkpoint_100.pth.tar"),
        "{msg}"
    );

    // Not a torch.save file at all.
    let err = load_densenet(&config, &fx.join("sources.txt"), &Device::flex()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("sources.txt"), "{msg}");

    let err = load_densenet(&config, &fx.join("no-such.pth"), &Device::flex()).unwrap_err();
    assert!(matches!(checkpoint_error(err), CheckpointError::Io { .. }));
}
