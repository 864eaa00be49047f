//! The repository's optimiser and learning-rate policy, written out so that every step is
//! PyTorch's: `torch.optim.SGD` (momentum, dampening 0, no Nesterov, L2 weight decay) and
//! `cosine_lr` of `utils/schedulers.py`, stepped once per epoch.

use std::collections::BTreeMap;

use super::UmError;

/// `cosine_lr` of the repository: at the start of epoch `e` (0-based) the learning rate is
/// `base * (e + 1) / warmup` during `warmup` epochs, then
/// `0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup))) * base`, constant within the
/// epoch (`main.py` calls the policy once per epoch with `iteration=None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    base_lr: f64,
    epochs: usize,
    warmup: usize,
}

impl CosineSchedule {
    /// Checks `base_lr > 0`, `epochs >= 1` and `warmup < epochs`.
    pub fn new(base_lr: f64, epochs: usize, warmup: usize) -> Result<Self, UmError> {
        if !(base_lr.is_finite() && base_lr > 0.0) {
            return Err(UmError::config(
                "um.lr",
                format!("must be > 0, got {base_lr}"),
            ));
        }
        if epochs == 0 {
            return Err(UmError::config("um.epochs", "must be at least 1".into()));
        }
        if warmup >= epochs {
            return Err(UmError::config(
                "um.warmup_epochs",
                format!("must be below epochs ({epochs}), got {warmup}"),
            ));
        }
        Ok(Self {
            base_lr,
            epochs,
            warmup,
        })
    }

    /// Total epochs of the schedule.
    pub fn epochs(&self) -> usize {
        self.epochs
    }

    /// The learning rate of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize) -> f64 {
        if epoch < self.warmup {
            self.base_lr * (epoch + 1) as f64 / self.warmup as f64
        } else {
            let e = (epoch - self.warmup) as f64;
            let es = (self.epochs - self.warmup) as f64;
            0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * self.base_lr
        }
    }
}

/// `torch.optim.SGD(momentum = mu, weight_decay = wd, dampening = 0, nesterov = False)`,
/// per parameter in f32 as PyTorch's CPU kernels compute it:
/// `d = g + wd * w`; `buf = d` on the first step, else `buf = mu * buf + d`;
/// `w = w - lr * buf`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    momentum: f64,
    weight_decay: f64,
}

/// Momentum buffers by parameter name (PyTorch key); a parameter without a buffer has not
/// been stepped yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SgdState {
    /// `buf` of every stepped parameter.
    pub momentum: BTreeMap<String, Vec<f32>>,
}

impl Sgd {
    /// Checks `0 <= momentum < 1` and `weight_decay >= 0`.
    pub fn new(momentum: f64, weight_decay: f64) -> Result<Self, UmError> {
        if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
            return Err(UmError::config(
                "um.momentum",
                format!("must lie in [0, 1), got {momentum}"),
            ));
        }
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(UmError::config(
                "um.weight_decay",
                format!("must be >= 0, got {weight_decay}"),
            ));
        }
        Ok(Self {
            momentum,
            weight_decay,
        })
    }

    /// One step of parameter `name`: updates `weights` in place from `grad` at `lr`.
    ///
    /// # Panics
    /// When `grad` (or an existing buffer) does not have the length of `weights`.
    pub fn step(
        &self,
        lr: f64,
        name: &str,
        weights: &mut [f32],
        grad: &[f32],
        state: &mut SgdState,
    ) {
        assert_eq!(weights.len(), grad.len(), "gradient of {name}");
        let (wd, mu, alpha) = (self.weight_decay as f32, self.momentum as f32, -lr as f32);
        let d = grad.iter().zip(weights.iter()).map(|(g, w)| g + wd * w);
        match state.momentum.get_mut(name) {
            Some(buf) => {
                assert_eq!(buf.len(), weights.len(), "momentum buffer of {name}");
                for (b, d) in buf.iter_mut().zip(d) {
                    *b = mu * *b + d;
                }
            }
            None => {
                state.momentum.insert(name.to_string(), d.collect());
            }
        }
        let buf = &state.momentum[name];
        for (w, b) in weights.iter_mut().zip(buf) {
            *w += alpha * b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's cosine_lr values for lr 0.1: `0.5 (1 + cos(pi e / 4)) 0.1` for
    /// e = 0..3, and with 2 warmup epochs of 6: 0.05, 0.1, then the cosine over 4 epochs.
    #[test]
    fn cosine_schedule_matches_the_repository_formula() {
        let check = |s: CosineSchedule, want: &[f64]| {
            for (e, w) in want.iter().enumerate() {
                assert!((s.lr(e) - w).abs() < 1e-15, "epoch {e}: {}", s.lr(e));
            }
        };
        check(
            CosineSchedule::new(0.1, 4, 0).unwrap(),
            &[
                0.1,
                0.085_355_339_059_327_38,
                0.05,
                0.014_644_660_940_672_627,
            ],
        );
        check(
            CosineSchedule::new(0.1, 6, 2).unwrap(),
            &[
                0.05,
                0.1,
                0.1,
                0.085_355_339_059_327_38,
                0.05,
                0.014_644_660_940_672_627,
            ],
        );
        assert!(CosineSchedule::new(0.1, 0, 0).is_err());
        assert!(CosineSchedule::new(0.1, 3, 3).is_err());
        assert!(CosineSchedule::new(-1.0, 3, 0).is_err());
    }

    /// Two SGD steps of `w = (1, -2)` with lr from the cosine schedule above (epochs 0 and
    /// 1), momentum 0.9, weight decay 0.01, gradients (0.5, 0.25) then (-0.1, 0.3):
    /// step 1: d = (0.51, 0.23) = buf, w = (0.949, -2.023);
    /// step 2: d = (-0.1 + 0.00949, 0.3 - 0.02023) = (-0.09051, 0.27977),
    ///         buf = 0.9 (0.51, 0.23) + d = (0.36849, 0.48677),
    ///         w = w - 0.0853553390593 buf = (0.917547405, -2.064548497)
    /// (PyTorch 2.15 `torch.optim.SGD` prints 0.9175474047660828, -2.0645484924316406).
    #[test]
    fn sgd_steps_match_pytorch_on_two_parameters() {
        let schedule = CosineSchedule::new(0.1, 4, 0).unwrap();
        let sgd = Sgd::new(0.9, 0.01).unwrap();
        let mut state = SgdState::default();
        let mut w = [1.0f32, -2.0];
        sgd.step(schedule.lr(0), "w", &mut w, &[0.5, 0.25], &mut state);
        assert!(
            (w[0] - 0.949).abs() < 1e-7 && (w[1] + 2.023).abs() < 1e-7,
            "{w:?}"
        );
        assert_eq!(state.momentum["w"], vec![0.51f32, 0.23]);
        sgd.step(schedule.lr(1), "w", &mut w, &[-0.1, 0.3], &mut state);
        let buf = &state.momentum["w"];
        assert!(
            (buf[0] - 0.36849).abs() < 1e-6 && (buf[1] - 0.48677).abs() < 1e-6,
            "{buf:?}"
        );
        assert!((w[0] - 0.917_547_4).abs() < 1e-6, "{w:?}");
        assert!((w[1] + 2.064_548_5).abs() < 1e-6, "{w:?}");
        // Bit-exact against PyTorch's float32 results (0.9175474047660828, -2.0645484924316406).
        assert_eq!(
            w.map(f64::from),
            [0.917_547_404_766_082_8, -2.064_548_492_431_640_6]
        );
    }

    #[test]
    fn hyperparameters_are_checked() {
        assert!(Sgd::new(1.0, 0.0).is_err());
        assert!(Sgd::new(0.9, -1e-4).is_err());
        assert!(Sgd::new(0.0, 0.0).is_ok());
    }
}
