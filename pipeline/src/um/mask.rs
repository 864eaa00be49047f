//! UMAP's subnetwork mask (`GetSubnet` of `utils/conv_type.py` in `ZFancy/Unleashing-Mask`):
//! keep the weights with the largest `|score|`, pass the gradient straight through to the
//! scores.

use burn::tensor::Tensor;

use super::UmError;

/// The fraction of each layer's weights a mask keeps: the repository's `prune_rate` `k`
/// (`0.8` for UMAP, `0.965` in `estimate_loss_cifar10.yaml`; despite its name it is the
/// share kept). Checked to lie in `(0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeepFraction(f64);

impl KeepFraction {
    /// `k` in `(0, 1]`.
    pub fn new(k: f64) -> Result<Self, UmError> {
        if k.is_finite() && k > 0.0 && k <= 1.0 {
            Ok(Self(k))
        } else {
            Err(UmError::config(
                "prune_rate",
                format!("the kept fraction must lie in (0, 1], got {k}"),
            ))
        }
    }

    /// `k`.
    pub fn get(self) -> f64 {
        self.0
    }

    /// How many of `n` weights are zeroed: `j = int((1 - k) * n)`, in f64 and truncated
    /// exactly as the repository's Python computes it.
    pub fn pruned_count(self, n: usize) -> usize {
        ((1.0 - self.0) * n as f64) as usize
    }
}

/// The 0/1 mask of `GetSubnet.forward(|scores|, k)`: sort `|scores|` ascending, set the
/// first `j = int((1 - k) n)` positions to 0 and the rest to 1. Equal `|score|`s are
/// ordered by position (a stable sort; the repository's `sort()` leaves ties unspecified,
/// and random real-valued scores have none).
pub fn subnet_mask(scores: &[f32], keep: KeepFraction) -> Vec<f32> {
    let n = scores.len();
    let j = keep.pruned_count(n);
    let mut mask = vec![1.0f32; n];
    if j == 0 {
        return mask;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].abs().total_cmp(&scores[b].abs()));
    for &i in &order[..j] {
        mask[i] = 0.0;
    }
    mask
}

/// The straight-through mask `m + (|s| - detach(|s|))`: its value is `mask` exactly, and
/// its gradient with respect to the scores `s` is `g * sign(s)`, the gradient that
/// `GetSubnet.backward` (identity) composed with `scores.abs()` gives.
pub fn straight_through(scores: Tensor<1>, mask: Tensor<1>) -> Tensor<1> {
    let magnitude = scores.abs();
    mask + (magnitude.clone() - magnitude.detach())
}

/// `kaiming_uniform_(scores, a = sqrt(5))` bound: `gain * sqrt(3 / fan_in)` with
/// `gain = sqrt(2 / (1 + a^2))`, i.e. `1 / sqrt(fan_in)`.
pub fn kaiming_uniform_bound(fan_in: usize) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn keeps_exactly_the_top_fraction_by_magnitude() {
        // |s| ranks: 0.05 (idx 4) < 0.1 (1) < 0.2 (5) < 0.3 (0) < 0.5 (3) < 0.9 (2) ...
        let s = [0.3f32, -0.1, 0.9, -0.5, 0.05, -0.2, 0.7, -0.8, 0.6, 0.4];
        // keep 0.8: j = int(0.19999999999999996 * 10) = 1 zero.
        let k = KeepFraction::new(0.8).unwrap();
        assert_eq!(k.pruned_count(10), 1);
        assert_eq!(subnet_mask(&s, k), [1., 1., 1., 1., 0., 1., 1., 1., 1., 1.]);
        // keep 0.5: the 5 smallest |s| (idx 4, 1, 5, 0, 9) are zeroed.
        let k = KeepFraction::new(0.5).unwrap();
        assert_eq!(subnet_mask(&s, k), [0., 0., 1., 1., 0., 0., 1., 1., 1., 0.]);
        assert_eq!(subnet_mask(&s, KeepFraction::new(1.0).unwrap()), [1.0; 10]);
        // 0.965 of 1000: int(0.035000000000000031 * 1000) = 35 zeros.
        let k = KeepFraction::new(0.965).unwrap();
        assert_eq!(k.pruned_count(1000), 35);
        let big: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 - 500.0)
            .collect();
        let m = subnet_mask(&big, k);
        assert_eq!(m.iter().filter(|&&v| v == 0.0).count(), 35);
        let kept_min = (0..1000)
            .filter(|&i| m[i] == 1.0)
            .map(|i| big[i].abs())
            .fold(f32::INFINITY, f32::min);
        let dropped_max = (0..1000)
            .filter(|&i| m[i] == 0.0)
            .map(|i| big[i].abs())
            .fold(0.0, f32::max);
        assert!(dropped_max <= kept_min);
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(KeepFraction::new(bad).is_err());
        }
    }

    #[test]
    fn straight_through_value_is_the_mask_and_gradient_reaches_the_scores() {
        let device = Device::flex().autodiff();
        let s = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, -0.2, -0.9], [3]), &device)
            .require_grad();
        let m = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0], [3]), &device);
        let w = Tensor::<1>::from_data(TensorData::new(vec![2.0f32, 3.0, -4.0], [3]), &device);
        let ste = straight_through(s.clone(), m);
        assert_eq!(
            crate::model::tensor_values(ste.clone()),
            vec![1.0, 0.0, 1.0]
        );
        // L = sum(w * m): dL/dm = w, dL/ds = w * sign(s) — also for the masked-out score.
        let grads = (w * ste).sum().backward();
        let g = crate::model::tensor_values(s.grad(&grads).unwrap());
        assert_eq!(g, vec![2.0, -3.0, 4.0]);
    }
}
