//! The training images in memory, with the repository's train-time augmentation
//! (`data/cifar.py`: `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`)
//! followed by the config's `Normalize` (the model's input normalisation), all drawn from
//! counter-based streams so an epoch's batches depend only on the seed and the epoch.

use std::sync::Arc;

use rayon::prelude::*;

use super::UmError;
use super::rng::{Purpose, StreamKey};
use crate::data::{ImageDecoder, ImageSet, Preprocess, RgbImage};

/// Which images of the set train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    /// Every image.
    All,
    /// `n` images drawn uniformly without replacement (the first `n` of a seeded
    /// permutation of the set), fixed for the whole run. The tar shards are sorted by
    /// class, so "the first n images" would be one or two classes.
    Random {
        /// Number of images.
        n: usize,
        /// Seed of the draw.
        seed: u64,
    },
}

impl Subset {
    /// The sorted dataset indices this subset selects from a set of `len` images.
    pub fn indices(self, len: usize) -> Vec<usize> {
        match self {
            Subset::All => (0..len).collect(),
            Subset::Random { n, seed } if n < len => {
                let mut picked: Vec<usize> = StreamKey::new(seed)
                    .purpose(Purpose::Subset)
                    .permutation(len)
                    .into_iter()
                    .take(n)
                    .collect();
                picked.sort_unstable();
                picked
            }
            Subset::Random { .. } => (0..len).collect(),
        }
    }
}

/// Decoded training images (`size x size` RGB, HWC `u8`) with their labels.
#[derive(Debug, Clone)]
pub struct TrainImages {
    size: usize,
    pixels: Vec<u8>,
    labels: Vec<i32>,
    indices: Vec<u64>,
}

/// `RandomCrop(size, padding = 4)` then `RandomHorizontalFlip()`; the draws of one
/// sample: crop top `i` and left `j` uniform in `0..=2 * padding`, flip with probability
/// 1/2 (torchvision: `torch.randint(0, h - th + 1)`, `torch.rand(1) < 0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropFlip {
    /// Row offset into the zero-padded image.
    pub top: usize,
    /// Column offset into the zero-padded image.
    pub left: usize,
    /// Mirror left-right.
    pub flip: bool,
}

/// Zero padding of `RandomCrop(32, padding=4)`.
pub const CROP_PADDING: usize = 4;

impl CropFlip {
    /// The draws of sample `index` in the stream `epoch` (see [`TrainImages::epoch_stream`]).
    pub fn draw(epoch: StreamKey, index: u64) -> Self {
        let k = epoch.derive(index);
        let span = 2 * CROP_PADDING as u64 + 1;
        Self {
            top: k.below(0, span) as usize,
            left: k.below(1, span) as usize,
            flip: k.uniform(2) < 0.5,
        }
    }

    /// Applies the crop (zeros outside the image, as `fill=0`) and the flip to a
    /// `size x size` HWC image.
    pub fn apply(self, pixels: &[u8], size: usize) -> RgbImage {
        let mut out = vec![0u8; size * size * 3];
        for y in 0..size {
            let sy = (y + self.top) as isize - CROP_PADDING as isize;
            if sy < 0 || sy >= size as isize {
                continue;
            }
            for x in 0..size {
                let xo = if self.flip { size - 1 - x } else { x };
                let sx = (xo + self.left) as isize - CROP_PADDING as isize;
                if sx < 0 || sx >= size as isize {
                    continue;
                }
                let src = (sy as usize * size + sx as usize) * 3;
                let dst = (y * size + x) * 3;
                out[dst..dst + 3].copy_from_slice(&pixels[src..src + 3]);
            }
        }
        RgbImage::new(size, size, out).expect("size x size x 3 pixels")
    }
}

impl TrainImages {
    /// Reads and decodes the `subset` of `set` (on all cores), resized and centre-cropped
    /// by `preprocess` (a no-op for 32x32 CIFAR images).
    pub fn load(
        set: Arc<dyn ImageSet>,
        subset: Subset,
        preprocess: &Preprocess,
    ) -> Result<Self, UmError> {
        let size = preprocess.crop();
        let picked = subset.indices(set.len() as usize);
        let decoded: Vec<(RgbImage, i32)> = picked
            .par_iter()
            .map_init(ImageDecoder::new, |decoder, &i| {
                let i = i as u64;
                let bytes = set.read(i).map_err(crate::data::DataError::from)?;
                let image = decoder
                    .decode_rgb(&bytes, &set.full_path(i))
                    .map_err(crate::data::DataError::from)?;
                Ok((preprocess.resize_and_crop(image), set.label(i)))
            })
            .collect::<Result<_, crate::data::DataError>>()?;
        let mut pixels = Vec::with_capacity(decoded.len() * size * size * 3);
        let mut labels = Vec::with_capacity(decoded.len());
        for (image, label) in decoded {
            pixels.extend_from_slice(image.pixels());
            labels.push(label);
        }
        Ok(Self {
            size,
            pixels,
            labels,
            indices: picked.into_iter().map(|i| i as u64).collect(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Dataset indices of the images (sorted).
    pub fn dataset_indices(&self) -> &[u64] {
        &self.indices
    }

    /// Labels, in image order.
    pub fn labels(&self) -> &[i32] {
        &self.labels
    }

    /// The augmentation stream of `epoch` for `seed`.
    pub fn epoch_stream(seed: u64, epoch: usize) -> StreamKey {
        StreamKey::new(seed)
            .purpose(Purpose::Augment)
            .derive(epoch as u64)
    }

    /// The order of the images in `epoch` (`shuffle=True`): a seeded permutation.
    pub fn epoch_order(&self, seed: u64, epoch: usize) -> Vec<usize> {
        StreamKey::new(seed)
            .purpose(Purpose::Shuffle)
            .derive(epoch as u64)
            .permutation(self.len())
    }

    /// Normalised NCHW `f32` pixels and labels of the images at `positions`, augmented
    /// with the draws of `augment` (keyed by dataset index) when given.
    pub fn batch(
        &self,
        positions: &[usize],
        augment: Option<StreamKey>,
        preprocess: &Preprocess,
    ) -> (Vec<f32>, Vec<i64>) {
        let s = self.size;
        let per = 3 * s * s;
        let mut data = vec![0.0f32; positions.len() * per];
        data.par_chunks_mut(per)
            .zip(positions.par_iter())
            .for_each(|(out, &p)| {
                let pixels = &self.pixels[p * per..(p + 1) * per];
                let image = match augment {
                    Some(stream) => CropFlip::draw(stream, self.indices[p]).apply(pixels, s),
                    None => RgbImage::new(s, s, pixels.to_vec()).expect("stored image"),
                };
                preprocess.normalize_into(&image, out);
            });
        let labels = positions
            .iter()
            .map(|&p| i64::from(self.labels[p]))
            .collect();
        (data, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(size: usize) -> Vec<u8> {
        (0..size * size * 3).map(|i| (i % 251) as u8 + 1).collect()
    }

    #[test]
    fn centre_crop_without_flip_is_the_identity() {
        let px = image(8);
        let id = CropFlip {
            top: CROP_PADDING,
            left: CROP_PADDING,
            flip: false,
        };
        assert_eq!(id.apply(&px, 8).pixels(), &px[..]);
    }

    #[test]
    fn crop_shifts_with_zero_fill_and_flip_mirrors() {
        let s = 8;
        let px = image(s);
        // top 0, left 0: the image moves down-right by 4, zeros above and left.
        let c = CropFlip {
            top: 0,
            left: 0,
            flip: false,
        }
        .apply(&px, s);
        let at = |img: &RgbImage, y: usize, x: usize| img.pixels()[(y * s + x) * 3];
        assert_eq!(at(&c, 3, 5), 0);
        assert_eq!(at(&c, 5, 3), 0);
        assert_eq!(at(&c, 4, 4), px[0]);
        assert_eq!(at(&c, 7, 7), px[(3 * s + 3) * 3]);
        // Flip after the centre crop mirrors the columns.
        let f = CropFlip {
            top: 4,
            left: 4,
            flip: true,
        }
        .apply(&px, s);
        for y in 0..s {
            for x in 0..s {
                assert_eq!(at(&f, y, x), px[(y * s + (s - 1 - x)) * 3]);
            }
        }
    }

    #[test]
    fn draws_cover_the_range_and_are_reproducible() {
        let e = TrainImages::epoch_stream(3, 1);
        let draws: Vec<CropFlip> = (0..2000).map(|i| CropFlip::draw(e, i)).collect();
        assert!(draws.iter().all(|d| d.top <= 8 && d.left <= 8));
        assert!((0..=8).all(|v| draws.iter().any(|d| d.top == v)));
        let flips = draws.iter().filter(|d| d.flip).count();
        assert!((900..1100).contains(&flips), "{flips}");
        assert_eq!(CropFlip::draw(e, 7), draws[7]);
        assert_ne!(
            (0..50)
                .map(|i| CropFlip::draw(TrainImages::epoch_stream(3, 2), i))
                .collect::<Vec<_>>(),
            draws[..50].to_vec()
        );
    }

    #[test]
    fn random_subset_is_sorted_distinct_and_seeded() {
        let a = Subset::Random { n: 100, seed: 1 }.indices(50_000);
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a, Subset::Random { n: 100, seed: 1 }.indices(50_000));
        assert_ne!(a, Subset::Random { n: 100, seed: 2 }.indices(50_000));
        // Spread over the set, not the first classes only.
        assert!(a.iter().any(|&i| i > 40_000) && a.iter().any(|&i| i < 10_000));
        assert_eq!(
            Subset::Random { n: 10, seed: 1 }.indices(5),
            vec![0, 1, 2, 3, 4]
        );
    }
}
