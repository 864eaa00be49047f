//! The UM / UMAP training loop (`main.py` + `trainers/default.py` of the repository):
//! per epoch, the cosine learning rate, a seeded shuffle of the training images, and for
//! every batch of `batch_size` a training-mode forward pass, the UM loss, backward, an SGD
//! step of the trained tensors and PyTorch's running-statistics update.
//!
//! State is checkpointed atomically (every epoch, optionally every `checkpoint_every`
//! iterations) to `<out>/state.safetensors`: parameters, momentum buffers, the position
//! (epoch, iteration), the seed and the config. Every random draw is a function of the
//! seed and the position, so a resumed run computes exactly what the uninterrupted run
//! would have. The per-iteration log goes to `<out>/loss.csv` (truncated to the checkpoint
//! on resume); the final network is exported to `<out>/model.safetensors`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::UmError;
use super::data::TrainImages;
use super::loss::UmLoss;
use super::net::{NetSpec, ParamEntry, Pass, UmNet};
use super::optim::{CosineSchedule, Sgd, SgdState};
use super::rng::{Purpose, StreamKey};
use super::tensors::{TensorFile, write_atomic};
use crate::data::Preprocess;
use crate::model::tensor_values;

/// File name of the latest training state in the run folder.
pub const STATE_FILE: &str = "state.safetensors";
/// File name of the exported network in the run folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the per-iteration log in the run folder.
pub const LOSS_FILE: &str = "loss.csv";
/// The `format` metadata of training-state files.
pub const STATE_FORMAT: &str = "posthoc-um-train-state/1";
/// Prefix of parameter tensors in a state file.
const PARAM_PREFIX: &str = "param.";
/// Prefix of momentum buffers in a state file.
const MOMENTUM_PREFIX: &str = "momentum.";

/// Checked hyperparameters of one training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    /// Network structure (variant, BatchNorm, dropout, kept fraction).
    pub net: NetSpec,
    /// The UM loss.
    pub loss: UmLoss,
    /// Learning-rate policy (its `epochs` is the run's length).
    pub schedule: CosineSchedule,
    /// The optimiser.
    pub sgd: Sgd,
    /// Images per batch (the last batch of an epoch may be smaller, `drop_last=False`).
    pub batch_size: usize,
    /// Seed of every draw (shuffle, augmentation, dropout, UMAP scores).
    pub seed: u64,
    /// Train-time augmentation on/off.
    pub augment: bool,
    /// Also checkpoint every this many iterations inside an epoch (0: epoch ends only).
    pub checkpoint_every: usize,
}

/// What a state file records besides tensors (stored as JSON metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatePosition {
    /// Current epoch (0-based); with `iteration == 0` the epoch has not started.
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub iteration: usize,
    /// Optimiser steps done in total.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// Fingerprint of the settings and data the state belongs to (resume refuses others).
    pub fingerprint: String,
}

/// A training run's inputs.
pub struct TrainRun<'a> {
    /// Settings.
    pub settings: TrainSettings,
    /// The training images.
    pub images: &'a TrainImages,
    /// Input normalisation.
    pub preprocess: Preprocess,
    /// Run folder (state, log, export).
    pub out: PathBuf,
    /// An autodiff device (`Device::flex().autodiff()`).
    pub device: Device,
    /// Show a progress bar.
    pub progress: bool,
    /// Free-form description of the run written into the state and the export (config).
    pub description: serde_json::Value,
    /// Set to stop after the next iteration (after checkpointing it).
    pub stop: Option<&'a AtomicBool>,
}

/// Result of [`TrainRun::run`].
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Epochs done in total.
    pub epochs: usize,
    /// Optimiser steps done in this invocation.
    pub steps: u64,
    /// Images per second of this invocation's training iterations.
    pub images_per_second: f64,
    /// Mean loss of the last epoch trained in this invocation (None if none).
    pub last_epoch_loss: Option<f64>,
    /// Training accuracy of that epoch.
    pub last_epoch_accuracy: Option<f64>,
    /// Where the network was exported.
    pub model: PathBuf,
}

/// One row of `loss.csv`.
#[derive(Debug, Clone, Copy)]
struct LogRow {
    epoch: usize,
    iteration: usize,
    step: u64,
    lr: f64,
    loss: f64,
    ce: f64,
    accuracy: f64,
    images: usize,
    images_per_second: f64,
}

const LOG_HEADER: &str =
    "epoch,iteration,step,lr,loss,cross_entropy,accuracy,images,images_per_second";

impl TrainRun<'_> {
    /// The settings' fingerprint: hyperparameters, seed and the training set.
    fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let s = &self.settings;
        let text = format!(
            "{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}|{:?}",
            s.net,
            s.loss,
            s.schedule,
            s.sgd,
            s.batch_size,
            s.seed,
            s.augment,
            self.images.dataset_indices().len(),
            self.preprocess,
        );
        let mut h = Sha256::new();
        h.update(text.as_bytes());
        for i in self.images.dataset_indices() {
            h.update(i.to_le_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }

    /// Trains `net` from scratch (`resume = false`, refusing to overwrite an existing
    /// state) or from `<out>/state.safetensors` (`resume = true`), to the end of the
    /// schedule; exports the network; returns what was done.
    pub fn run(&self, net: &mut UmNet, resume: bool) -> Result<TrainReport, UmError> {
        let state_path = self.out.join(STATE_FILE);
        let fingerprint = self.fingerprint();
        let mut opt = SgdState::default();
        let mut pos = StatePosition {
            epoch: 0,
            iteration: 0,
            step: 0,
            seed: self.settings.seed,
            fingerprint: fingerprint.clone(),
        };
        if resume {
            pos = load_state(&state_path, net, &mut opt)?;
            if pos.fingerprint != fingerprint {
                return Err(UmError::Resume {
                    path: state_path,
                    reason: "it was written with other settings or another training subset".into(),
                });
            }
            truncate_log(&self.out.join(LOSS_FILE), pos.step)?;
            tracing::info!(
                epoch = pos.epoch,
                iteration = pos.iteration,
                step = pos.step,
                "resuming"
            );
        } else {
            if state_path.exists() {
                return Err(UmError::Resume {
                    path: state_path,
                    reason: "a run exists in this folder: pass --resume to continue it, or choose another out folder".into(),
                });
            }
            std::fs::create_dir_all(&self.out).map_err(UmError::io(&self.out))?;
            write_atomic(
                &self.out.join(LOSS_FILE),
                format!("{LOG_HEADER}\n").as_bytes(),
            )?;
            self.save(&state_path, net, &opt, &pos)?;
        }

        let s = &self.settings;
        let n = self.images.len();
        if n == 0 {
            return Err(UmError::config("data", "no training image".into()));
        }
        let per_epoch = n.div_ceil(s.batch_size);
        let epochs = s.schedule.epochs();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.out.join(LOSS_FILE))
            .map_err(UmError::io(self.out.join(LOSS_FILE)))?;
        let bar = self.progress_bar(
            (epochs * per_epoch) as u64,
            (pos.epoch * per_epoch + pos.iteration) as u64,
        );
        let started = Instant::now();
        let (mut images_done, mut steps) = (0usize, 0u64);
        let (mut last_loss, mut last_acc) = (None, None);
        let root = StreamKey::new(s.seed);

        while pos.epoch < epochs {
            let epoch = pos.epoch;
            let lr = s.schedule.lr(epoch);
            let order = self.images.epoch_order(s.seed, epoch);
            let augment = s.augment.then(|| TrainImages::epoch_stream(s.seed, epoch));
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            for it in pos.iteration..per_epoch {
                let t0 = Instant::now();
                let positions = &order[it * s.batch_size..((it + 1) * s.batch_size).min(n)];
                let (pixels, labels) = self.images.batch(positions, augment, &self.preprocess);
                let dropout = root
                    .purpose(Purpose::Dropout)
                    .derive(epoch as u64)
                    .derive(it as u64);
                let step = train_step(
                    net,
                    &self.settings,
                    &mut opt,
                    lr,
                    &pixels,
                    &labels,
                    dropout,
                    &self.device,
                );
                let dt = t0.elapsed().as_secs_f64();
                pos.iteration = it + 1;
                pos.step += 1;
                steps += 1;
                images_done += positions.len();
                loss_sum += step.loss * positions.len() as f64;
                correct += step.correct;
                seen += positions.len();
                let row = LogRow {
                    epoch,
                    iteration: it,
                    step: pos.step,
                    lr,
                    loss: step.loss,
                    ce: step.cross_entropy,
                    accuracy: step.correct as f64 / positions.len() as f64,
                    images: positions.len(),
                    images_per_second: positions.len() as f64 / dt,
                };
                write_row(&mut log, &row).map_err(UmError::io(self.out.join(LOSS_FILE)))?;
                // Without a progress bar, about ten progress lines per epoch.
                let log_every = (per_epoch / 10).max(1);
                if bar.is_none() && ((it + 1) % log_every == 0 || it + 1 == per_epoch) {
                    tracing::info!(
                        epoch = epoch + 1,
                        iteration = it + 1,
                        of = per_epoch,
                        loss = format!("{:.4}", loss_sum / seen as f64),
                        accuracy = format!("{:.4}", correct as f64 / seen as f64),
                        images_per_second = format!(
                            "{:.2}",
                            images_done as f64 / started.elapsed().as_secs_f64()
                        ),
                        "training"
                    );
                } else {
                    tracing::debug!(
                        epoch,
                        iteration = it,
                        loss = step.loss,
                        ce = step.cross_entropy,
                        "step"
                    );
                }
                if let Some(bar) = &bar {
                    bar.set_message(format!(
                        "epoch {}/{epochs} loss {:.4} acc {:.1}% {:.1} img/s",
                        epoch + 1,
                        loss_sum / seen as f64,
                        100.0 * correct as f64 / seen as f64,
                        images_done as f64 / started.elapsed().as_secs_f64()
                    ));
                    bar.inc(1);
                }
                let stop = self.stop.is_some_and(|s| s.load(Ordering::SeqCst));
                let periodic = s.checkpoint_every > 0 && (it + 1) % s.checkpoint_every == 0;
                if pos.iteration == per_epoch {
                    pos.epoch += 1;
                    pos.iteration = 0;
                }
                if periodic || stop || pos.iteration == 0 {
                    self.save(&state_path, net, &opt, &pos)?;
                }
                if stop {
                    if let Some(bar) = &bar {
                        bar.abandon();
                    }
                    return Err(UmError::Stopped { epoch: pos.epoch });
                }
            }
            if seen > 0 {
                let (l, a) = (loss_sum / seen as f64, correct as f64 / seen as f64);
                tracing::info!(
                    epoch = epoch + 1,
                    epochs,
                    lr,
                    loss = l,
                    accuracy = a,
                    "epoch done"
                );
                last_loss = Some(l);
                last_acc = Some(a);
            }
        }
        if let Some(bar) = &bar {
            bar.finish();
        }
        let model = self.out.join(MODEL_FILE);
        export(net, &model, &self.description)?;
        Ok(TrainReport {
            epochs: pos.epoch,
            steps,
            images_per_second: images_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
            last_epoch_loss: last_loss,
            last_epoch_accuracy: last_acc,
            model,
        })
    }

    fn progress_bar(&self, total: u64, done: u64) -> Option<ProgressBar> {
        self.progress.then(|| {
            let bar = ProgressBar::new(total).with_position(done);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} it [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar
        })
    }

    fn save(
        &self,
        path: &Path,
        net: &UmNet,
        opt: &SgdState,
        pos: &StatePosition,
    ) -> Result<(), UmError> {
        let mut f = TensorFile::default();
        f.insert_entries(PARAM_PREFIX, net.entries());
        for (k, buf) in &opt.momentum {
            let shape = net
                .entry(k)
                .map(|e| e.shape.clone())
                .unwrap_or_else(|| vec![buf.len()]);
            f.tensors
                .insert(format!("{MOMENTUM_PREFIX}{k}"), (shape, buf.clone()));
        }
        f.metadata.insert("format".into(), STATE_FORMAT.into());
        f.metadata.insert(
            "position".into(),
            serde_json::to_string(pos).expect("position serialises"),
        );
        f.metadata
            .insert("run".into(), self.description.to_string());
        f.write(path)?;
        tracing::debug!(
            epoch = pos.epoch,
            iteration = pos.iteration,
            "checkpoint written"
        );
        Ok(())
    }
}

/// Loads a state file into `net` and `opt`, returning its position.
pub fn load_state(
    path: &Path,
    net: &mut UmNet,
    opt: &mut SgdState,
) -> Result<StatePosition, UmError> {
    let bad = |reason: String| UmError::Resume {
        path: path.to_path_buf(),
        reason,
    };
    if !path.exists() {
        return Err(bad("no such file (nothing to resume)".into()));
    }
    let f = TensorFile::read(path)?;
    if f.metadata.get("format").map(String::as_str) != Some(STATE_FORMAT) {
        return Err(bad(format!(
            "not a training state (format {:?})",
            f.metadata.get("format")
        )));
    }
    let pos: StatePosition = f
        .metadata
        .get("position")
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| bad("no readable position".into()))?;
    net.load_values(&f.with_prefix(PARAM_PREFIX))?;
    opt.momentum = f
        .with_prefix(MOMENTUM_PREFIX)
        .into_iter()
        .map(|(k, (_, v))| (k, v))
        .collect();
    Ok(pos)
}

/// Writes the network's effective state dict (PyTorch keys, UMAP masks applied) to a
/// safetensors file that [`crate::checkpoint::load_densenet`] and
/// `safetensors.torch.load_file` read.
pub fn export(net: &UmNet, path: &Path, description: &serde_json::Value) -> Result<(), UmError> {
    let mut f = TensorFile::default();
    let entries: Vec<ParamEntry> = net.effective_state();
    f.insert_entries("", &entries);
    f.metadata.insert("format".into(), "pt".into());
    f.metadata.insert("producer".into(), "posthoc um".into());
    f.metadata.insert("run".into(), description.to_string());
    f.write(path)
}

/// Outcome of one optimiser step.
#[derive(Debug, Clone, Copy)]
pub struct StepResult {
    /// The UM loss of the batch.
    pub loss: f64,
    /// The batch-mean cross-entropy.
    pub cross_entropy: f64,
    /// Correct top-1 predictions in the batch.
    pub correct: usize,
}

/// One training iteration on a normalised NCHW batch: forward (training mode), UM loss,
/// backward, SGD step of every trained tensor at `lr`, running-statistics update.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    net: &mut UmNet,
    settings: &TrainSettings,
    opt: &mut SgdState,
    lr: f64,
    pixels: &[f32],
    labels: &[i64],
    dropout: StreamKey,
    device: &Device,
) -> StepResult {
    let n = labels.len();
    let x = Tensor::<4>::from_data(TensorData::new(pixels.to_vec(), [n, 3, 32, 32]), device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [n]), device);
    let out = net.forward(x, Pass::Train { dropout });
    let logits = tensor_values(out.logits.clone());
    let loss = settings.loss.forward(out.logits, y);
    let loss_value = f64::from(tensor_values(loss.loss.clone())[0]);
    let ce_value = f64::from(tensor_values(loss.cross_entropy)[0]);
    let grads = loss.loss.backward();
    let mut updates: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    for (i, leaf) in &out.leaves {
        let g = leaf
            .grad(&grads)
            .map(tensor_values)
            .unwrap_or_else(|| vec![0.0; net.entries()[*i].values.len()]);
        updates.insert(*i, g);
    }
    for (i, g) in updates {
        let key = net.entries()[i].key.clone();
        settings.sgd.step(lr, &key, net.values_mut(i), &g, opt);
    }
    net.update_running_stats(out.batch_stats);
    let classes = logits.len() / n.max(1);
    let correct = logits
        .chunks_exact(classes.max(1))
        .zip(labels)
        .filter(|(z, y)| argmax(z) == **y as usize)
        .count();
    StepResult {
        loss: loss_value,
        cross_entropy: ce_value,
        correct,
    }
}

/// Index of the largest value (the lowest on ties).
fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in z.iter().enumerate() {
        if *v > z[best] {
            best = i;
        }
    }
    best
}

fn write_row(out: &mut impl Write, r: &LogRow) -> std::io::Result<()> {
    writeln!(
        out,
        "{},{},{},{:.9},{:.9},{:.9},{:.6},{},{:.3}",
        r.epoch, r.iteration, r.step, r.lr, r.loss, r.ce, r.accuracy, r.images, r.images_per_second
    )
}

/// Keeps the header and the rows of steps `<= step` of a loss log (a killed run may have
/// logged steps after its last checkpoint).
fn truncate_log(path: &Path, step: u64) -> Result<(), UmError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(UmError::io(path)(e)),
    };
    let mut out = format!("{LOG_HEADER}\n");
    for line in text.lines().skip(1) {
        let row_step = line.split(',').nth(2).and_then(|s| s.parse::<u64>().ok());
        if row_step.is_some_and(|s| s <= step) {
            out.push_str(line);
            out.push('\n');
        }
    }
    write_atomic(path, out.as_bytes())
}

/// The training device of the CLI: burn's `flex` CPU backend with autodiff (call
/// [`reuse_freed_memory`] first in a process that trains at full batch size).
pub fn cpu_training_device() -> Device {
    Device::flex().autodiff()
}

/// Makes glibc's allocator serve every allocation from its heap and never hand freed
/// memory back to the kernel. A training step at batch 256 allocates a few hundred
/// activation and gradient buffers of up to ~400 MB; glibc maps each one above 32 MB
/// freshly (`mmap`) and unmaps it on free, so every step paid ~14 GB of page faults and
/// zeroing (measured: half the step time in the kernel, 3.9 images/s). Keeping the heap
/// makes later steps reuse it (8.2 images/s, same results). No-op off glibc.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the
    // training allocates and is thread-safe in glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1); // never trim (mallopt(3))
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Loads the pretrained network of a run (`[um] pretrained`) on burn's CPU device.
pub fn load_pretrained(
    config: &crate::model::DenseNetConfig,
    path: &Path,
) -> Result<crate::checkpoint::LoadedDenseNet, UmError> {
    Ok(crate::checkpoint::load_densenet(
        config,
        path,
        &Device::flex(),
    )?)
}
