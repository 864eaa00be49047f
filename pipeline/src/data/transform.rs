//! torchvision-exact test transforms on 8-bit RGB images:
//! `Resize(size)` (Pillow bilinear or bicubic, antialiased, 8-bit fixed point), `CenterCrop(size)`,
//! `ToTensor()` and `Normalize(mean, std)`, composed by [`Preprocess`].

use serde::{Deserialize, Serialize};

use super::decode::RgbImage;
use super::error::DataError;

/// Fractional bits of Pillow's 8-bit resampling coefficients (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Output size of torchvision `Resize(size)` (an `int`) for a `width x height` image:
/// the shorter side becomes `size`, the longer `int(size * long / short)` (truncated,
/// evaluated like Python's `float` division). Returns `(width, height)`.
pub fn resized_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `Resize(size)` on a PIL image: the shorter side to `size` with
/// [`resize_bilinear`]; the image is returned unchanged when it already has that size.
pub fn resize_shorter_side(image: RgbImage, size: usize) -> RgbImage {
    resize_shorter_side_with(image, size, Interpolation::Bilinear)
}

/// [`resize_shorter_side`] with the resampling filter `filter`
/// (`Resize(size, interpolation=...)`).
pub fn resize_shorter_side_with(image: RgbImage, size: usize, filter: Interpolation) -> RgbImage {
    let (w, h) = resized_size(image.width(), image.height(), size);
    if (w, h) == (image.width(), image.height()) {
        image
    } else {
        resize(&image, w, h, filter)
    }
}

/// The resampling filter of `Resize` (torchvision `InterpolationMode`, as Pillow applies it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Pillow `BILINEAR` (triangle filter, support 1): torchvision's default.
    #[default]
    Bilinear,
    /// Pillow `BICUBIC` (Keys cubic with `a = -0.5`, support 2).
    Bicubic,
}

impl Interpolation {
    /// Support of the filter at scale 1 (Pillow's `filter->support`).
    fn support(self) -> f64 {
        match self {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    /// The filter's value at `x` (Pillow `bilinear_filter` / `bicubic_filter`):
    /// bilinear `max(0, 1 - |x|)`; bicubic with `a = -0.5`:
    /// `((a + 2)|x| - (a + 3))x^2 + 1` for `|x| < 1`, `a(|x|^3 - 5|x|^2 + 8|x| - 4)` for
    /// `|x| < 2`, else 0.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }

    /// Whether this is the default ([`Interpolation::Bilinear`]).
    pub fn is_bilinear(&self) -> bool {
        *self == Interpolation::Bilinear
    }

    /// How the cache manifest describes the resize.
    pub fn describe(self) -> &'static str {
        match self {
            Interpolation::Bilinear => {
                "PIL bilinear (antialiased, 8-bit fixed point), shorter side"
            }
            Interpolation::Bicubic => "PIL bicubic (antialiased, 8-bit fixed point), shorter side",
        }
    }
}

/// Fixed-point filter taps of one output pixel along one axis.
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    /// First input index.
    start: usize,
    /// Weights `k_j` in units of `2^-22`, for inputs `start..start + weights.len()`.
    weights: Vec<i32>,
}

/// Pillow's antialiased bilinear coefficients (see [`filter_taps`]).
#[cfg(test)]
fn bilinear_taps(n_in: usize, n_out: usize) -> Vec<Taps> {
    filter_taps(n_in, n_out, Interpolation::Bilinear)
}

/// Pillow's antialiased coefficients for resampling `n_in -> n_out` samples with `filter`
/// (`libImaging/Resample.c`, `precompute_coeffs` + `normalize_coeffs_8bpc`):
/// `scale = n_in / n_out`, `fs = max(scale, 1)`, `support = filter support * fs`; output
/// `i` has `center = (i + 0.5) * scale`, taps `j` in
/// `[max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in))` with
/// `w_j = filter((j - center + 0.5) / fs)`, normalised to sum 1, then
/// `k_j = int(w_j * 2^22 + 0.5)` (`- 0.5` for negative weights: rounding away from 0).
fn filter_taps(n_in: usize, n_out: usize, filter: Interpolation) -> Vec<Taps> {
    let scale = n_in as f64 / n_out as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let inv_scale = 1.0 / filter_scale;
    (0..n_out)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let w: Vec<f64> = (start..end)
                .map(|j| filter.weight((j as f64 - center + 0.5) * inv_scale))
                .collect();
            let total: f64 = w.iter().sum();
            let weights = w
                .iter()
                .map(|&wj| {
                    let wj = if total != 0.0 { wj / total } else { wj };
                    let scaled = wj * f64::from(1u32 << PRECISION_BITS);
                    if scaled < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (0.5 + scaled) as i32
                    }
                })
                .collect();
            Taps { start, weights }
        })
        .collect()
}

/// Applies taps to 8-bit samples: `clamp((2^21 + sum_j k_j * p_j) >> 22, 0, 255)`.
#[inline]
fn apply_taps(taps: &Taps, sample: impl Fn(usize) -> u8) -> u8 {
    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
    for (k, &w) in taps.weights.iter().enumerate() {
        acc += i32::from(sample(taps.start + k)) * w;
    }
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow `Image.resize((new_width, new_height), Image.BILINEAR)` of an RGB image:
/// antialiased bilinear in 8-bit fixed point, the horizontal pass first (rounded to 8 bits),
/// then the vertical pass; an axis whose size does not change is not resampled.
pub fn resize_bilinear(image: &RgbImage, new_width: usize, new_height: usize) -> RgbImage {
    resize(image, new_width, new_height, Interpolation::Bilinear)
}

/// Pillow `Image.resize((new_width, new_height), filter)` of an RGB image, as
/// [`resize_bilinear`] with the taps of `filter`.
pub fn resize(
    image: &RgbImage,
    new_width: usize,
    new_height: usize,
    filter: Interpolation,
) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let horizontal = if new_width != w {
        let taps = filter_taps(w, new_width, filter);
        let src = image.pixels();
        let mut out = RgbImage::zeros(new_width, h);
        let dst = out.pixels_mut();
        for y in 0..h {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for (x, t) in taps.iter().enumerate() {
                for c in 0..3 {
                    dst[(y * new_width + x) * 3 + c] = apply_taps(t, |j| row[j * 3 + c]);
                }
            }
        }
        out
    } else {
        image.clone()
    };
    if new_height == h {
        return horizontal;
    }
    let taps = filter_taps(h, new_height, filter);
    let src = horizontal.pixels();
    let mut out = RgbImage::zeros(new_width, new_height);
    let dst = out.pixels_mut();
    let stride = new_width * 3;
    for (y, t) in taps.iter().enumerate() {
        for i in 0..stride {
            dst[y * stride + i] = apply_taps(t, |j| src[j * stride + i]);
        }
    }
    out
}

/// Offset of a centred crop of `crop` out of `n`: `int(round((n - crop) / 2))` with Python's
/// round half to even (`n - crop = 15` gives 8, `13` gives 6).
pub fn center_crop_offset(n: usize, crop: usize) -> usize {
    let d = n - crop;
    let half = d / 2;
    // d / 2 = half + 0.5 exactly when d is odd: round to the even neighbour.
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// torchvision `CenterCrop(size)`: a `size x size` window at
/// ([`center_crop_offset`] of the height, of the width). An image smaller than `size` is
/// first zero-padded by `((size - n) // 2, (size - n + 1) // 2)` on each axis, as
/// torchvision does.
pub fn center_crop(image: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    if w < size || h < size {
        let (pad_w, pad_h) = (size.saturating_sub(w), size.saturating_sub(h));
        let (nw, nh) = (w + pad_w, h + pad_h);
        let (left, top) = (pad_w / 2, pad_h / 2);
        let mut padded = RgbImage::zeros(nw, nh);
        let dst = padded.pixels_mut();
        for y in 0..h {
            let from = &image.pixels()[y * w * 3..(y + 1) * w * 3];
            let at = ((y + top) * nw + left) * 3;
            dst[at..at + w * 3].copy_from_slice(from);
        }
        return center_crop(&padded, size);
    }
    let (top, left) = (center_crop_offset(h, size), center_crop_offset(w, size));
    let mut out = RgbImage::zeros(size, size);
    let dst = out.pixels_mut();
    for y in 0..size {
        let at = ((y + top) * w + left) * 3;
        dst[y * size * 3..(y + 1) * size * 3].copy_from_slice(&image.pixels()[at..at + size * 3]);
    }
    out
}

/// Checked test-time preprocessing: `Resize(resize)` (optional), `CenterCrop(crop)`,
/// `ToTensor()`, `Normalize(mean, std)`. Deserialising validates it (see [`Preprocess::new`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PreprocessSpec", into = "PreprocessSpec")]
pub struct Preprocess {
    resize: Option<usize>,
    interpolation: Interpolation,
    crop: usize,
    mean: [f32; 3],
    std: [f32; 3],
}

/// The unchecked serde form of [`Preprocess`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreprocessSpec {
    #[serde(default)]
    resize: Option<usize>,
    #[serde(default, skip_serializing_if = "Interpolation::is_bilinear")]
    interpolation: Interpolation,
    crop: usize,
    mean: [f32; 3],
    std: [f32; 3],
}

impl TryFrom<PreprocessSpec> for Preprocess {
    type Error = DataError;
    fn try_from(s: PreprocessSpec) -> Result<Self, DataError> {
        Ok(Preprocess::new(s.resize, s.crop, s.mean, s.std)?.with_interpolation(s.interpolation))
    }
}

impl From<Preprocess> for PreprocessSpec {
    fn from(p: Preprocess) -> Self {
        PreprocessSpec {
            resize: p.resize,
            interpolation: p.interpolation,
            crop: p.crop,
            mean: p.mean,
            std: p.std,
        }
    }
}

impl Preprocess {
    /// The CIFAR test transform of DICE's `ood_eval.py`: `Resize(32)`, `CenterCrop(32)`,
    /// mean `(0.4914, 0.4822, 0.4465)`, std `(0.2023, 0.1994, 0.2010)`.
    pub fn cifar_dice() -> Self {
        Self::new(
            Some(32),
            32,
            [0.4914, 0.4822, 0.4465],
            [0.2023, 0.1994, 0.2010],
        )
        .expect("valid constants")
    }

    /// Checks and builds a preprocessing: `resize` and `crop` at least 1 pixel (and at most
    /// 65,536), `mean` finite, `std` finite and positive.
    pub fn new(
        resize: Option<usize>,
        crop: usize,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Self, DataError> {
        let invalid = |field, reason: String| DataError::InvalidConfig { field, reason };
        if let Some(r) = resize
            && !(1..=65_536).contains(&r)
        {
            return Err(invalid(
                "preprocess.resize",
                format!("{r} is not in 1..=65536"),
            ));
        }
        if !(1..=65_536).contains(&crop) {
            return Err(invalid(
                "preprocess.crop",
                format!("{crop} is not in 1..=65536"),
            ));
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(invalid("preprocess.mean", format!("{m} is not finite")));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(invalid(
                "preprocess.std",
                format!("{s} is not a finite positive number"),
            ));
        }
        Ok(Self {
            resize,
            interpolation: Interpolation::Bilinear,
            crop,
            mean,
            std,
        })
    }

    /// The same transform resizing with `filter` (bilinear unless set).
    pub fn with_interpolation(mut self, filter: Interpolation) -> Self {
        self.interpolation = filter;
        self
    }

    /// Shorter-side resize target, if any.
    pub fn resize(&self) -> Option<usize> {
        self.resize
    }

    /// The resize filter.
    pub fn interpolation(&self) -> Interpolation {
        self.interpolation
    }

    /// Side of the square centre crop (= output height and width).
    pub fn crop(&self) -> usize {
        self.crop
    }

    /// Per-channel mean (RGB).
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// Per-channel standard deviation (RGB).
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// Number of `f32` values of one preprocessed image: `3 * crop * crop`.
    pub fn output_len(&self) -> usize {
        3 * self.crop * self.crop
    }

    /// The 8-bit image after `Resize` and `CenterCrop` (before `ToTensor`): `crop x crop`, HWC.
    pub fn resize_and_crop(&self, image: RgbImage) -> RgbImage {
        let image = match self.resize {
            Some(size) => resize_shorter_side_with(image, size, self.interpolation),
            None => image,
        };
        if image.width() == self.crop && image.height() == self.crop {
            image
        } else {
            center_crop(&image, self.crop)
        }
    }

    /// `ToTensor` + `Normalize` of a `crop x crop` HWC image into `out` (CHW, length
    /// [`Self::output_len`]): `out[c, y, x] = (p / 255 - mean[c]) / std[c]`, in `f32` in that
    /// order (bit-identical to torchvision).
    ///
    /// # Panics
    /// When the image is not `crop x crop` or `out` has the wrong length.
    pub fn normalize_into(&self, image: &RgbImage, out: &mut [f32]) {
        let plane = self.crop * self.crop;
        assert_eq!(
            (image.width(), image.height()),
            (self.crop, self.crop),
            "image must be crop x crop"
        );
        assert_eq!(
            out.len(),
            3 * plane,
            "output must hold 3 x crop x crop values"
        );
        for (c, chan) in out.chunks_exact_mut(plane).enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            for (o, p) in chan
                .iter_mut()
                .zip(image.pixels().iter().skip(c).step_by(3))
            {
                *o = (f32::from(*p) / 255.0 - mean) / std;
            }
        }
    }

    /// The whole transform: [`Self::resize_and_crop`] then [`Self::normalize_into`].
    pub fn apply_into(&self, image: RgbImage, out: &mut [f32]) {
        let cropped = self.resize_and_crop(image);
        self.normalize_into(&cropped, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> RgbImage {
        let px = (0..w * h * 3).map(|i| (i * 37 % 256) as u8).collect();
        RgbImage::new(w, h, px).unwrap()
    }

    #[test]
    fn resized_size_truncates_the_long_side() {
        assert_eq!(resized_size(640, 427, 32), (47, 32)); // 32 * 640 / 427 = 47.96
        assert_eq!(resized_size(465, 640, 32), (32, 44)); // 44.04
        assert_eq!(resized_size(600, 300, 32), (64, 32));
        assert_eq!(resized_size(28, 28, 32), (32, 32));
        assert_eq!(resized_size(32, 32, 32), (32, 32));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        assert_eq!(center_crop_offset(47, 32), 8); // 7.5 -> 8
        assert_eq!(center_crop_offset(45, 32), 6); // 6.5 -> 6
        assert_eq!(center_crop_offset(40, 32), 4);
        assert_eq!(center_crop_offset(44, 32), 6);
        assert_eq!(center_crop_offset(64, 32), 16);
        assert_eq!(center_crop_offset(33, 32), 0); // 0.5 -> 0
        assert_eq!(center_crop_offset(32, 32), 0);
    }

    #[test]
    fn taps_are_normalised_and_identity_at_scale_one() {
        for (n_in, n_out) in [(64, 32), (28, 32), (640, 47), (503, 32), (3, 7)] {
            for t in bilinear_taps(n_in, n_out) {
                let sum: i32 = t.weights.iter().sum();
                // each weight rounds by at most 0.5 unit
                assert!(
                    (sum - (1 << 22)).abs() <= t.weights.len() as i32,
                    "{n_in}->{n_out}"
                );
                assert!(t.start + t.weights.len() <= n_in);
            }
        }
        for (i, t) in bilinear_taps(5, 5).iter().enumerate() {
            assert_eq!(t.start, i);
            assert_eq!(t.weights[0], 1 << 22);
            assert!(t.weights[1..].iter().all(|&w| w == 0));
        }
    }

    #[test]
    fn halving_averages_pairs_with_rounding() {
        // 2x downscale: fs = 2, centre (i + 0.5) * 2; taps 2i-1..2i+3 have weights
        // 1/8, 3/8, 3/8, 1/8 (clipped and renormalised at the borders).
        let taps = bilinear_taps(8, 4);
        assert_eq!(taps[1].start, 1);
        assert_eq!(taps[1].weights, vec![1 << 19, 3 << 19, 3 << 19, 1 << 19]);
        // left border: taps 0..3 with weights 3/7, 3/7, 1/7
        assert_eq!(taps[0].start, 0);
        assert_eq!(taps[0].weights.len(), 3);
        let img = RgbImage::new(
            8,
            1,
            [0u8, 8, 16, 24, 32, 40, 48, 56]
                .iter()
                .flat_map(|&v| [v, v, v])
                .collect(),
        )
        .unwrap();
        let out = resize_bilinear(&img, 4, 1);
        // output 1: (8 + 3*16 + 3*24 + 32) / 8 = 20
        assert_eq!(out.pixels()[3], 20);
    }

    #[test]
    fn bicubic_weights_follow_pillows_filter() {
        let f = Interpolation::Bicubic;
        assert_eq!(f.weight(0.0), 1.0);
        assert_eq!(f.weight(1.0), 0.0);
        assert_eq!(f.weight(2.0), 0.0);
        assert_eq!(f.weight(-0.5), 0.5625); // 1.5 * 0.125 - 2.5 * 0.25 + 1
        assert_eq!(f.weight(1.5), -0.0625); // -0.5 * (3.375 - 11.25 + 12 - 4)
        // 2x downscale: support 4, the outer taps are negative and round away from zero.
        let taps = filter_taps(16, 8, f);
        assert_eq!(taps[3].weights.len(), 8);
        assert!(taps[3].weights[0] < 0 && taps[3].weights[7] < 0);
        let sum: i32 = taps[3].weights.iter().sum();
        assert!((sum - (1 << 22)).abs() <= 8);
        // An upscaled constant image stays constant; a step overshoots and is clamped.
        let img = RgbImage::new(5, 1, vec![77; 15]).unwrap();
        assert!(resize(&img, 13, 1, f).pixels().iter().all(|&v| v == 77));
        let step = RgbImage::new(
            4,
            1,
            [0u8, 0, 255, 255].iter().flat_map(|&v| [v, v, v]).collect(),
        )
        .unwrap();
        let up = resize(&step, 16, 1, f);
        assert!(up.pixels().contains(&0) && up.pixels().contains(&255));
    }

    #[test]
    fn resize_of_a_constant_image_is_constant() {
        let img = RgbImage::new(37, 23, vec![201; 37 * 23 * 3]).unwrap();
        let out = resize_bilinear(&img, 11, 64);
        assert!(out.pixels().iter().all(|&v| v == 201));
        assert_eq!((out.width(), out.height()), (11, 64));
    }

    #[test]
    fn center_crop_takes_the_window_and_pads_small_images() {
        let img = ramp(47, 32);
        let out = center_crop(&img, 32);
        assert_eq!(&out.pixels()[..3], &img.pixels()[8 * 3..8 * 3 + 3]);
        let small = RgbImage::new(1, 1, vec![9, 9, 9]).unwrap();
        let padded = center_crop(&small, 4);
        // padding left/top = 3 // 2 = 1, so the pixel lands at (1, 1)
        assert_eq!(&padded.pixels()[(4 + 1) * 3..(4 + 1) * 3 + 3], &[9, 9, 9]);
        assert_eq!(padded.pixels().iter().filter(|&&v| v != 0).count(), 3);
    }

    #[test]
    fn normalize_is_divide_subtract_divide_in_f32() {
        let p = Preprocess::new(None, 1, [0.5, 0.25, 0.0], [0.5, 2.0, 1.0]).unwrap();
        let img = RgbImage::new(1, 1, vec![255, 0, 51]).unwrap();
        let mut out = [0f32; 3];
        p.normalize_into(&img, &mut out);
        assert_eq!(out, [1.0, -0.125, 51f32 / 255.0]);
    }

    #[test]
    fn preprocess_is_validated_when_deserialised() {
        let ok: Preprocess = serde_json::from_str(
            r#"{"resize":32,"crop":32,"mean":[0.4914,0.4822,0.4465],"std":[0.2023,0.1994,0.2010]}"#,
        )
        .unwrap();
        assert_eq!(ok, Preprocess::cifar_dice());
        let bad = serde_json::from_str::<Preprocess>(r#"{"crop":32,"mean":[0,0,0],"std":[1,0,1]}"#)
            .unwrap_err();
        assert!(bad.to_string().contains("preprocess.std"), "{bad}");
        assert!(Preprocess::new(Some(0), 32, [0.0; 3], [1.0; 3]).is_err());
        assert!(Preprocess::new(None, 0, [0.0; 3], [1.0; 3]).is_err());
        assert!(Preprocess::new(None, 8, [f32::NAN, 0.0, 0.0], [1.0; 3]).is_err());
        let bicubic: Preprocess = serde_json::from_str(
            r#"{"resize":256,"interpolation":"bicubic","crop":224,"mean":[0,0,0],"std":[1,1,1]}"#,
        )
        .unwrap();
        assert_eq!(bicubic.interpolation(), Interpolation::Bicubic);
        // The default is not written, so existing serialisations do not change.
        assert!(
            !serde_json::to_string(&ok)
                .unwrap()
                .contains("interpolation")
        );
    }
}
