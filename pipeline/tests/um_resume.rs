//! Kill -9 during training, then resume: the resumed run ends with exactly the weights,
//! running statistics, momentum buffers and loss log of an uninterrupted run with the same
//! seed. Real DICE checkpoint, 8 real CIFAR-10 training images (random subset of the tar
//! shards), batch 4, dropout 0.3, augmentation on, 3 epochs, a checkpoint after every
//! iteration; the interrupted run is a child process killed with SIGKILL mid-run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use posthoc_pipeline::data::{ImageSet, Preprocess, TarShards};
use posthoc_pipeline::model::DenseNetConfig;
use posthoc_pipeline::um::data::{Subset, TrainImages};
use posthoc_pipeline::um::tensors::TensorFile;
use posthoc_pipeline::um::train::{
    LOSS_FILE, MODEL_FILE, STATE_FILE, StatePosition, TrainRun, TrainSettings, cpu_training_device,
    load_pretrained,
};
use posthoc_pipeline::um::{
    BatchNormMode, CosineSchedule, KeepFraction, NetSpec, Sgd, UmLoss, UmNet, Variant,
};

const CHILD_ENV: &str = "POSTHOC_UM_RESUME_CHILD";
const EPOCHS: usize = 3;
const IMAGES: usize = 8;
const BATCH: usize = 4;

fn inputs() -> Option<(PathBuf, Vec<PathBuf>)> {
    let ckpt =
        common::shared_path("data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar")?;
    let shards = (0..5)
        .map(|i| common::shared_path(&format!("data/cifar10/train-0{i}.tar")))
        .collect::<Option<Vec<_>>>()?;
    Some((ckpt, shards))
}

fn settings(variant: Variant) -> TrainSettings {
    TrainSettings {
        net: NetSpec {
            variant,
            batch_norm: BatchNormMode::FrozenAffine,
            dropout: 0.3,
            keep: KeepFraction::new(0.8).unwrap(),
        },
        loss: UmLoss::new(1.0, 0.3).unwrap(),
        schedule: CosineSchedule::new(0.1, EPOCHS, 0).unwrap(),
        sgd: Sgd::new(0.9, 1e-4).unwrap(),
        batch_size: BATCH,
        seed: 11,
        augment: true,
        checkpoint_every: 1,
    }
}

/// Trains (or resumes) in `out` to the end; returns the network.
fn train(out: &Path, resume: bool, variant: Variant) -> UmNet {
    let (ckpt, shards) = inputs().expect("inputs checked by the caller");
    let config = DenseNetConfig::densenet_bc_100(10);
    let loaded = load_pretrained(&config, &ckpt).unwrap();
    let s = settings(variant);
    let mut net = UmNet::from_densenet(&loaded.model, &loaded.plan, s.net, s.seed).unwrap();
    let set: Arc<dyn ImageSet> = Arc::new(TarShards::open(&shards).unwrap());
    let images = TrainImages::load(
        set,
        Subset::Random {
            n: IMAGES,
            seed: 11,
        },
        &Preprocess::cifar_dice(),
    )
    .unwrap();
    let run = TrainRun {
        settings: s,
        images: &images,
        preprocess: Preprocess::cifar_dice(),
        out: out.to_path_buf(),
        device: cpu_training_device(),
        progress: false,
        description: serde_json::json!({"test": "um_resume"}),
        stop: None,
    };
    let report = run.run(&mut net, resume).unwrap();
    assert_eq!(report.epochs, EPOCHS);
    net
}

/// The interrupted run: only does something inside the child process.
#[test]
fn child_training_run() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let variant = if dir.ends_with("umap") {
        Variant::Umap
    } else {
        Variant::Um
    };
    train(Path::new(&dir), false, variant);
}

fn position(state: &Path) -> Option<StatePosition> {
    let f = TensorFile::read(state).ok()?;
    serde_json::from_str(f.metadata.get("position")?).ok()
}

/// The loss log without its timing column.
fn log_rows(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(LOSS_FILE))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

/// Kills the child once a checkpoint at step `kill_step` or later exists (2 = end of
/// epoch 1, 3 = middle of epoch 2).
fn kill_and_resume(variant: Variant, kill_step: u64) {
    if inputs().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join(format!("straight-{variant}"));
    let killed = tmp.path().join(format!("killed-{variant}"));

    // The interrupted run: a child process, SIGKILLed once step `kill_step` is checkpointed.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_training_run",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, &killed)
        .spawn()
        .unwrap();
    let per_epoch = IMAGES.div_ceil(BATCH) as u64;
    let total = per_epoch * EPOCHS as u64;
    let start = Instant::now();
    let at_kill = loop {
        if let Some(p) = position(&killed.join(STATE_FILE))
            && p.step >= kill_step
        {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break p;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child run ended ({status}) before it could be killed");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "child too slow");
        std::thread::sleep(Duration::from_millis(10));
    };
    let resumed_from = position(&killed.join(STATE_FILE)).unwrap();
    println!(
        "{variant}: killed at step {} (state at step {}) of {total}",
        at_kill.step, resumed_from.step
    );
    assert!(
        resumed_from.step < total,
        "the kill came too late to test anything"
    );
    assert!(!killed.join(MODEL_FILE).exists());

    let resumed = train(&killed, true, variant);
    let uninterrupted = train(&straight, false, variant);

    // Exactly the same tensors: parameters, scores, running statistics.
    assert_eq!(resumed.entries().len(), uninterrupted.entries().len());
    for (a, b) in resumed.entries().iter().zip(uninterrupted.entries()) {
        assert_eq!(a.key, b.key);
        assert!(
            a.values
                .iter()
                .zip(&b.values)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{variant}: {} differs after resume",
            a.key
        );
    }
    // The same momentum buffers and position in the final state, the same export.
    let sa = TensorFile::read(&killed.join(STATE_FILE)).unwrap();
    let sb = TensorFile::read(&straight.join(STATE_FILE)).unwrap();
    assert_eq!(sa.tensors, sb.tensors);
    assert_eq!(sa.metadata.get("position"), sb.metadata.get("position"));
    assert_eq!(
        TensorFile::read(&killed.join(MODEL_FILE)).unwrap().tensors,
        TensorFile::read(&straight.join(MODEL_FILE))
            .unwrap()
            .tensors
    );
    // The loss log continues where the checkpoint was (rows after it were dropped).
    assert_eq!(log_rows(&killed), log_rows(&straight));
    assert_eq!(log_rows(&straight).len(), 1 + total as usize);
    // Training changed something, and (UMAP) only scores and running statistics.
    let loaded =
        load_pretrained(&DenseNetConfig::densenet_bc_100(10), &inputs().unwrap().0).unwrap();
    let original = posthoc_pipeline::um::net::densenet_state(&loaded.model);
    let changed: Vec<&str> = uninterrupted
        .entries()
        .iter()
        .filter(|e| original.get(&e.key).is_some_and(|(_, v)| *v != e.values))
        .map(|e| e.key.as_str())
        .collect();
    assert!(
        changed.contains(&"fc.weight") == (variant == Variant::Um),
        "{changed:?}"
    );
    assert!(changed.iter().any(|k| k.ends_with("running_var")));
    if variant == Variant::Umap {
        assert!(
            changed.iter().all(|k| k.contains("running_")),
            "{changed:?}"
        );
    }
}

#[test]
fn um_resume_after_kill_mid_epoch_equals_the_uninterrupted_run() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    kill_and_resume(Variant::Um, 3);
}

#[test]
fn umap_resume_after_kill_between_epochs_equals_the_uninterrupted_run() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    kill_and_resume(Variant::Umap, 2);
}
