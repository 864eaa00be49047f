//! Sums of exponentials, the inner loop of energy and MSP: `sum_j exp(a(z_j))` over a
//! row of logits, vectorised. `exp` is a branch-free polynomial that LLVM turns into
//! AVX-512 / AVX2 code (chosen at run time), accurate to about 1 ulp; the libm `exp`
//! it replaces is a call per value.
//!
//! Range reduction: `x = k ln 2 + r` with `k = round(x / ln 2)`, `|r| <= ln 2 / 2`
//! (Cody-Waite, `ln 2` split in two), `exp(r)` by its Taylor series to degree 13 (the
//! truncation error `|r|^14 / 14!` is below `5e-18`), then `exp(x) = 2^k exp(r)` with
//! `2^k` built from its exponent bits.

/// `1 / ln 2`.
const LOG2_E: f64 = std::f64::consts::LOG2_E;
/// `ln 2` in two parts (fdlibm): `LN2_HI` has 32 trailing zero bits, so `k * LN2_HI` is
/// exact for `|k| < 2^20`.
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
/// `1.5 * 2^52`: adding it rounds to an integer that sits in the low mantissa bits.
const SHIFTER: f64 = 6_755_399_441_055_744.0;
/// Below this `exp(x) < 2^-1021`; such values flush to 0 (they cannot change a sum that
/// holds `exp(0) = 1`, which every sum here does).
const FLUSH_BELOW: f64 = -708.0;
/// `1 / k!` for `k = 0..=13`.
const INV_FACTORIAL: [f64; 14] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

/// `a * b + c`, fused (one rounding) when `FUSED`.
#[inline(always)]
fn madd<const FUSED: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

/// `exp(x)` for `x <= 709` to about 1 ulp, branch-free; results below `2^-1021`
/// (`x < -708`, and `x = -inf`) are 0, NaN stays NaN. `FUSED` uses FMA instructions
/// (only where the caller's target features have them).
#[inline(always)]
pub(crate) fn exp_poly<const FUSED: bool>(x: f64) -> f64 {
    let shifted = madd::<FUSED>(x, LOG2_E, SHIFTER);
    let n = shifted - SHIFTER;
    let r = madd::<FUSED>(-n, LN2_LO, madd::<FUSED>(-n, LN2_HI, x));
    let mut p = INV_FACTORIAL[13];
    for &c in INV_FACTORIAL[..13].iter().rev() {
        p = madd::<FUSED>(p, r, c);
    }
    // `n` sits in the low bits of `shifted`; `2^n` has exponent field `n + 1023`.
    let n_bits = shifted.to_bits().wrapping_sub(SHIFTER.to_bits());
    let scale = f64::from_bits(n_bits.wrapping_add(1023) << 52);
    let y = p * scale;
    if x < FLUSH_BELOW { 0.0 } else { y }
}

/// Values per block: the exponentials of a block go through a stack buffer, so the
/// loop computing them has no reduction in it and LLVM vectorises it whole.
const BLOCK: usize = 64;
/// Partial sums: one AVX-512 register of `f64`.
const PARTIALS: usize = 8;

/// `sum_j exp(arg(z_j))`: exponentials by blocks into a buffer, summed in `PARTIALS`
/// interleaved partial sums added at the end.
#[inline(always)]
fn sum_exp_with<const FUSED: bool>(z: &[f64], arg: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0; PARTIALS];
    let mut e = [0.0; BLOCK];
    for block in z.chunks(BLOCK) {
        let e = &mut e[..block.len()];
        for (e, &v) in e.iter_mut().zip(block) {
            *e = exp_poly::<FUSED>(arg(v));
        }
        for (j, &v) in e.iter().enumerate() {
            acc[j % PARTIALS] += v;
        }
    }
    acc.iter().sum()
}

/// `sum_j exp(arg(z_j))` with the widest vector instructions this CPU has. `arg` must
/// be cheap and inlinable (a shift, a division).
#[inline]
pub(crate) fn sum_exp(z: &[f64], arg: impl Fn(f64) -> f64) -> f64 {
    with_fused_simd!(|FUSED| sum_exp_with::<FUSED>(z, &arg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite positive values.
    fn ulps(a: f64, b: f64) -> u64 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_poly_is_within_one_ulp_of_libm() {
        let mut worst = [0u64; 2];
        // Deterministic points over [-708, 5], dense near 0 where the sums live.
        let n = 200_000;
        for i in 0..=n {
            let u = i as f64 / n as f64;
            for x in [-708.0 * u, -40.0 * u * u, 5.0 * u - 2.5] {
                let want = x.exp();
                worst[0] = worst[0].max(ulps(exp_poly::<true>(x), want));
                worst[1] = worst[1].max(ulps(exp_poly::<false>(x), want));
            }
        }
        assert!(worst[0] <= 1 && worst[1] <= 2, "max ulps {worst:?}");
    }

    #[test]
    fn exp_poly_edges() {
        assert_eq!(exp_poly::<true>(0.0), 1.0);
        assert_eq!(exp_poly::<true>(-708.5), 0.0);
        assert_eq!(exp_poly::<true>(f64::NEG_INFINITY), 0.0);
        assert!(exp_poly::<true>(f64::NAN).is_nan());
        assert!(ulps(exp_poly::<true>(-707.9), (-707.9f64).exp()) <= 1);
        assert!(ulps(exp_poly::<true>(709.0), 709f64.exp()) <= 1);
    }

    #[test]
    fn sums_match_libm_sums() {
        for len in [1, 7, 8, 9, 10, 1000, 1003] {
            let z: Vec<f64> = (0..len)
                .map(|j| ((j * 37 % 101) as f64 - 50.0) * 0.37)
                .collect();
            let zmax = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let want: f64 = z.iter().map(|&v| (v - zmax).exp()).sum();
            let got = sum_exp(&z, |v| v - zmax);
            assert!((got - want).abs() <= 4.0 * f64::EPSILON * want, "{len}");
            let want_t: f64 = z.iter().map(|&v| (v / 3.0 - zmax / 3.0).exp()).sum();
            let got_t = sum_exp(&z, |v| v / 3.0 - zmax / 3.0);
            assert!(
                (got_t - want_t).abs() <= 4.0 * f64::EPSILON * want_t,
                "{len}"
            );
        }
        assert_eq!(sum_exp(&[], |v| v), 0.0);
    }
}
