//! Counter-based random numbers for training: every draw is a pure function of
//! `(seed, purpose, epoch, ...)` and an element index, so a run resumed from a checkpoint
//! draws exactly what the uninterrupted run drew, whatever the thread count.
//!
//! The mixing function is SplitMix64's finaliser (Steele, Lea, Flood 2014).

/// The SplitMix64 golden-ratio increment.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A key naming one independent stream of random numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey(u64);

/// What a stream is used for (keeps streams of different purposes apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// The `--limit` subset of the training set.
    Subset = 1,
    /// The per-epoch shuffle.
    Shuffle = 2,
    /// RandomCrop offsets and horizontal flips.
    Augment = 3,
    /// Dropout masks.
    Dropout = 4,
    /// Initial UMAP / estimate scores.
    Scores = 5,
}

impl StreamKey {
    /// The root key of a run's `seed`.
    pub fn new(seed: u64) -> Self {
        Self(mix64(seed ^ 0x5053_4f48_5f55_4d00))
    }

    /// The sub-stream of `self` for `purpose`.
    pub fn purpose(self, purpose: Purpose) -> Self {
        self.derive(purpose as u64)
    }

    /// The sub-stream of `self` numbered `n` (an epoch, an iteration, a layer, ...).
    pub fn derive(self, n: u64) -> Self {
        Self(mix64(self.0 ^ mix64(n.wrapping_add(GOLDEN))))
    }

    /// The `i`-th 64-bit draw of this stream.
    pub fn bits(self, i: u64) -> u64 {
        mix64(self.0.wrapping_add(i.wrapping_mul(GOLDEN)))
    }

    /// The `i`-th draw as a uniform `f32` in `[0, 1)` (24 random bits, exact).
    pub fn uniform(self, i: u64) -> f32 {
        (self.bits(i) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// The `i`-th draw as an integer uniform in `0..n` (`n >= 1`; Lemire's multiply-shift,
    /// bias below 2^-32 for the small `n` used here).
    pub fn below(self, i: u64, n: u64) -> u64 {
        ((u128::from(self.bits(i)) * u128::from(n)) >> 64) as u64
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates, draw `k` for position `k`).
    pub fn permutation(self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            let j = self.below(k as u64, k as u64 + 1) as usize;
            p.swap(k, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a = StreamKey::new(1).purpose(Purpose::Dropout).derive(3);
        let b = StreamKey::new(1).purpose(Purpose::Dropout).derive(3);
        let c = StreamKey::new(1).purpose(Purpose::Dropout).derive(4);
        let d = StreamKey::new(2).purpose(Purpose::Dropout).derive(3);
        assert_eq!(a.bits(10), b.bits(10));
        assert_ne!(a.bits(10), c.bits(10));
        assert_ne!(a.bits(10), d.bits(10));
        assert_ne!(a.bits(10), a.bits(11));
    }

    #[test]
    fn uniforms_lie_in_the_unit_interval_with_the_right_mean() {
        let k = StreamKey::new(0);
        let n = 100_000;
        let mut sum = 0.0f64;
        for i in 0..n {
            let u = k.uniform(i);
            assert!((0.0..1.0).contains(&u));
            sum += f64::from(u);
        }
        assert!((sum / n as f64 - 0.5).abs() < 0.01);
        let below: Vec<u64> = (0..1000).map(|i| k.below(i, 9)).collect();
        assert!(below.iter().all(|&v| v < 9));
        assert!((0..9).all(|v| below.contains(&v)));
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = StreamKey::new(5).permutation(1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
        assert!(StreamKey::new(5).permutation(0).is_empty());
    }
}
