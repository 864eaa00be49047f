//! Image sets and torchvision-exact test preprocessing for the precompute stage.
//!
//! - [`decode`]: JPEG (system libjpeg-turbo, default settings) and PNG to 8-bit RGB,
//!   pixel-identical to Pillow's `Image.open(path).convert("RGB")`.
//! - [`transform`]: `Resize` (Pillow antialiased bilinear, fixed point), `CenterCrop`,
//!   `ToTensor`, `Normalize`, composed and validated by [`Preprocess`].
//! - [`sets`]: [`ImageFolder`] trees and [`TarShards`], indexed in torchvision order.
//! - [`list`]: image lists (`<path> <label>` per line) of files under a root.
//! - [`loader`]: [`Loader`], decoding batches on worker threads, in order, into `NCHW` `f32`.
//!
//! Plain buffers only (no tensor types), so this module does not depend on a backend.

#![warn(missing_docs)]

pub mod decode;
pub mod error;
mod jpeg;
pub mod list;
pub mod loader;
pub mod sets;
pub mod transform;

pub use decode::{ImageDecoder, ImageFormat, RgbImage, decode_rgb};
pub use error::{DataError, DecodeError, ImageError};
pub use loader::{BadImage, Batch, Loader, LoaderOptions, load_batch};
pub use sets::{
    IMG_EXTENSIONS, ImageFolder, ImageSet, ImageSetSpec, Sample, TarShards, has_image_extension,
};
pub use transform::{
    Interpolation, Preprocess, center_crop, center_crop_offset, resize, resize_bilinear,
    resize_shorter_side, resize_shorter_side_with, resized_size,
};
