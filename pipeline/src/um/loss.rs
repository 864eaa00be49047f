//! The Unleashing-Mask objective `|beta * CE - UM| + UM` (`utils/custom_loss.py` of
//! `ZFancy/Unleashing-Mask`) on top of the mean cross-entropy of a batch.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use super::UmError;

/// The UM loss `L = |beta * CE - UM| + UM` of the batch-mean cross-entropy `CE`.
///
/// Above the constraint (`beta * CE > UM`) it is `beta * CE` and its gradient is
/// `beta * dCE`; below it, `2 UM - beta * CE` and the gradient flips to `-beta * dCE`
/// (gradient ascent: the model "forgets" the batch until its loss is back at `UM`). At
/// exactly `beta * CE = UM` the gradient is 0 (PyTorch's `abs` has derivative `sign(0) = 0`).
/// `UM = 0` is plain cross-entropy (times `beta`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UmLoss {
    beta: f64,
    constraint: f64,
}

/// One batch's loss tensor (for `backward`) and its parts.
#[derive(Debug, Clone)]
pub struct UmLossOutput {
    /// `|beta * CE - UM| + UM`, shape `[1]`, tracked when the logits are.
    pub loss: Tensor<1>,
    /// The batch-mean cross-entropy `CE`, shape `[1]`.
    pub cross_entropy: Tensor<1>,
}

impl UmLoss {
    /// The loss for `beta` (finite, > 0; the repository's default 1) and the loss
    /// constraint `UM` (finite, >= 0).
    pub fn new(beta: f64, constraint: f64) -> Result<Self, UmError> {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(UmError::config(
                "um.beta",
                format!("must be > 0, got {beta}"),
            ));
        }
        if !(constraint.is_finite() && constraint >= 0.0) {
            return Err(UmError::config(
                "um.constraint",
                format!("must be a finite number >= 0, got {constraint}"),
            ));
        }
        Ok(Self { beta, constraint })
    }

    /// `beta`.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The constraint `UM`.
    pub fn constraint(&self) -> f64 {
        self.constraint
    }

    /// `L(CE) = |beta * CE - UM| + UM`.
    pub fn value(&self, ce: f64) -> f64 {
        (self.beta * ce - self.constraint).abs() + self.constraint
    }

    /// `dL/dCE = beta * sign(beta * CE - UM)` (0 at equality).
    pub fn derivative(&self, ce: f64) -> f64 {
        let d = self.beta * ce - self.constraint;
        if d > 0.0 {
            self.beta
        } else if d < 0.0 {
            -self.beta
        } else {
            0.0
        }
    }

    /// The loss of a batch: `logits` `[N, C]`, `labels` `[N]` (class indices).
    pub fn forward(&self, logits: Tensor<2>, labels: Tensor<1, Int>) -> UmLossOutput {
        let ce = cross_entropy(logits, labels);
        let loss = ce
            .clone()
            .mul_scalar(self.beta)
            .sub_scalar(self.constraint)
            .abs()
            .add_scalar(self.constraint);
        UmLossOutput {
            loss,
            cross_entropy: ce,
        }
    }
}

/// Mean cross-entropy `(1/N) sum_n (logsumexp(z_n) - z_n[y_n])` of `logits` `[N, C]` and
/// `labels` `[N]`, as `torch.nn.CrossEntropyLoss()` (mean reduction), shape `[1]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let n = labels.dims()[0];
    let picked = log_softmax(logits, 1).gather(1, labels.reshape([n, 1]));
    picked.mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// Logits of two samples over three classes and their mean CE, computed by hand:
    /// sample 0: z = (1, 2, 3), y = 2: lse = 3 + ln(1 + e^-1 + e^-2) = 3.40760596, CE 0.40760596;
    /// sample 1: z = (0, 0, 0), y = 0: CE = ln 3 = 1.09861229. Mean 0.75310912.
    fn batch(device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let z = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0], [2, 3]),
            device,
        )
        .require_grad();
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), device);
        (z, y)
    }

    const MEAN_CE: f64 = 0.753_109_12;

    fn values(t: Tensor<2>) -> Vec<f32> {
        crate::model::tensor_values(t)
    }

    #[test]
    fn cross_entropy_matches_the_hand_computed_mean() {
        let device = Device::flex().autodiff();
        let (z, y) = batch(&device);
        let ce = crate::model::tensor_values(cross_entropy(z, y))[0];
        assert!((f64::from(ce) - MEAN_CE).abs() < 1e-6, "{ce}");
    }

    #[test]
    fn scalar_loss_and_derivative() {
        let l = UmLoss::new(1.0, 0.5).unwrap();
        assert_eq!(l.value(0.8), 0.8);
        assert!((l.value(0.2) - 0.8).abs() < 1e-12); // |0.2 - 0.5| + 0.5
        assert_eq!(l.derivative(0.8), 1.0);
        assert_eq!(l.derivative(0.2), -1.0);
        assert_eq!(l.derivative(0.5), 0.0);
        let l2 = UmLoss::new(2.0, 0.5).unwrap();
        assert!((l2.value(0.2) - 0.6).abs() < 1e-12); // |0.4 - 0.5| + 0.5
        assert_eq!(l2.derivative(0.2), -2.0);
        assert!(UmLoss::new(0.0, 0.1).is_err());
        assert!(UmLoss::new(1.0, -0.1).is_err());
        assert!(UmLoss::new(1.0, f64::NAN).is_err());
    }

    /// dCE/dz = (softmax(z) - onehot(y)) / N; the UM loss multiplies it by +1 above the
    /// constraint and by -1 below it.
    #[test]
    fn gradient_is_the_cross_entropy_gradient_with_the_sign_of_ce_minus_um() {
        let device = Device::flex().autodiff();
        // softmax(1,2,3) = (0.09003057, 0.24472847, 0.66524096); softmax(0,0,0) = 1/3.
        let d_ce: [f32; 6] = [
            0.090_030_57 / 2.0,
            0.244_728_47 / 2.0,
            (0.665_240_96 - 1.0) / 2.0,
            (1.0 / 3.0 - 1.0) / 2.0,
            1.0 / 6.0,
            1.0 / 6.0,
        ];
        for (constraint, sign, expected_loss) in [
            (0.0, 1.0f32, MEAN_CE),
            (0.5, 1.0, MEAN_CE),
            // Below the constraint: loss = 2 UM - CE, gradient reversed.
            (1.0, -1.0, 2.0 - MEAN_CE),
        ] {
            let (z, y) = batch(&device);
            let out = UmLoss::new(1.0, constraint).unwrap().forward(z.clone(), y);
            let loss = crate::model::tensor_values(out.loss.clone())[0];
            assert!(
                (f64::from(loss) - expected_loss).abs() < 1e-6,
                "UM {constraint}: loss {loss}"
            );
            let grads = out.loss.backward();
            let g = values(z.grad(&grads).unwrap());
            for (a, e) in g.iter().zip(d_ce) {
                assert!((a - sign * e).abs() < 1e-6, "UM {constraint}: {g:?}");
            }
        }
    }
}
