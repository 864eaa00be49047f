//! Image decoding to 8-bit RGB, pixel-identical to Pillow's `Image.open(path).convert("RGB")`.
//!
//! - JPEG goes through the system libjpeg-turbo (TurboJPEG API) with its default decode
//!   settings: accurate integer IDCT and fancy (smooth) chroma upsampling, the settings
//!   Pillow's `JpegDecode` uses. YCbCr and RGB JPEGs are decoded straight to RGB; greyscale
//!   JPEGs are decoded as grey and the value copied to R, G, B (Pillow's `L -> RGB`).
//!   CMYK/YCCK JPEGs are rejected as [`ImageError::Unsupported`]. As in Pillow, libjpeg
//!   warnings about corrupt data do not fail the decode (the image is complete and equal to
//!   Pillow's), but running out of data ("Premature end of JPEG file") does (Pillow: "image
//!   file is truncated"). A file that is both corrupt and truncated may be judged
//!   differently from Pillow (libjpeg-turbo 2.1 keeps only the first warning's message).
//! - PNG goes through the `png` crate: palettes are expanded, low-bit greyscale is scaled
//!   to 8 bits by bit replication (Pillow's `L;1`/`L;2`/`L;4` unpackers do the same),
//!   alpha is dropped without compositing (Pillow's `RGBA -> RGB`), grey is copied to
//!   R, G, B, and 16-bit RGB(A)/grey-alpha samples keep their most significant byte
//!   (Pillow's `RGB;16B` raw modes). 16-bit greyscale without alpha is opened by Pillow as
//!   `I;16`, whose conversion to RGB saturates: `min(v, 255)`; that is reproduced.
//!
//! The format is sniffed from the content (as Pillow does), not from the file name.

use std::io::Cursor;
use std::path::Path;

use super::error::{DecodeError, ImageError};
use super::jpeg::{JpegColorspace, JpegFailure, JpegPixels, TurboJpeg};

/// An 8-bit RGB image, row-major, interleaved (`HWC`): pixel `(y, x)` channel `c` is
/// `pixels[(y * width + x) * 3 + c]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps `pixels` (`HWC`, RGB); `None` when its length is not `width * height * 3`.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Option<Self> {
        (width.checked_mul(height)?.checked_mul(3)? == pixels.len()).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// An image of `width x height` filled with zeros (black).
    pub fn zeros(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width * height * 3],
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels, `HWC` RGB.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixels, `HWC` RGB, mutable.
    pub fn pixels_mut(&mut self) -> &mut [u8] {
        &mut self.pixels
    }

    /// Consumes the image, returning its `HWC` RGB pixels.
    pub fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }
}

/// The image container formats this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG/JFIF (starts with `FF D8 FF`).
    Jpeg,
    /// PNG (starts with the 8-byte PNG signature).
    Png,
}

impl ImageFormat {
    /// Recognises the format from the first bytes of the file; `None` when it is neither.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageFormat::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else {
            None
        }
    }
}

/// A reusable decoder: holds one TurboJPEG handle, so a worker thread decodes many images
/// without re-initialising libjpeg-turbo. Not shared between threads; make one per thread.
#[derive(Debug, Default)]
pub struct ImageDecoder {
    jpeg: Option<TurboJpeg>,
}

impl ImageDecoder {
    /// A decoder; the TurboJPEG handle is created on the first JPEG.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `bytes` (the content of `path`, which is used only in errors) to 8-bit RGB,
    /// pixel-identical to Pillow's `Image.open(path).convert("RGB")`.
    pub fn decode_rgb(&mut self, bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
        match ImageFormat::sniff(bytes) {
            Some(ImageFormat::Jpeg) => self.decode_jpeg(bytes, path),
            Some(ImageFormat::Png) => decode_png(bytes, path),
            None => Err(ImageError::Unsupported {
                path: path.to_owned(),
                what: format!(
                    "not a JPEG or PNG file (first bytes {:02x?})",
                    &bytes[..bytes.len().min(8)]
                ),
            }),
        }
    }

    /// Decodes a JPEG. After any failure or warning the TurboJPEG handle is replaced:
    /// libjpeg-turbo 2.1 leaves a handle whose header read failed in a state where the next
    /// header read "succeeds" with a 0 x 0 size.
    fn decode_jpeg(&mut self, bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
        let result = self.decode_jpeg_with_handle(bytes, path);
        if !matches!(result, Ok((_, None))) {
            self.jpeg = None;
        }
        let (image, warning) = result?;
        if let Some(w) = warning {
            tracing::debug!(path = %path.display(), warning = %w, "libjpeg warning (decoded as Pillow does)");
        }
        Ok(image)
    }

    fn decode_jpeg_with_handle(
        &mut self,
        bytes: &[u8],
        path: &Path,
    ) -> Result<(RgbImage, Option<String>), ImageError> {
        let decode_err = |JpegFailure(message)| ImageError::Decode {
            path: path.to_owned(),
            source: DecodeError::Jpeg(message),
        };
        let tj = match &mut self.jpeg {
            Some(tj) => tj,
            slot => slot.insert(TurboJpeg::new().map_err(decode_err)?),
        };
        let (header, header_warning) = tj.header(bytes).map_err(decode_err)?;
        let format = match header.colorspace {
            JpegColorspace::YCbCr | JpegColorspace::Rgb => JpegPixels::Rgb,
            JpegColorspace::Gray => JpegPixels::Gray,
            other => {
                return Err(ImageError::Unsupported {
                    path: path.to_owned(),
                    what: format!(
                        "JPEG colour space {other:?} (Pillow opens it as CMYK; only YCbCr, RGB and greyscale JPEGs are decoded)"
                    ),
                });
            }
        };
        let (width, height) = (header.width, header.height);
        let mut pixels = vec![0u8; width * height * format.channels()];
        let warning = tj
            .decompress(bytes, &header, format, &mut pixels)
            .map_err(decode_err)?;
        let pixels = match format {
            JpegPixels::Gray => grey_to_rgb(&pixels),
            JpegPixels::Rgb => pixels,
        };
        let image = RgbImage {
            width,
            height,
            pixels,
        };
        Ok((image, warning.or(header_warning)))
    }
}

/// Decodes `bytes` to RGB with a one-off [`ImageDecoder`] (see [`ImageDecoder::decode_rgb`]).
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
    ImageDecoder::new().decode_rgb(bytes, path)
}

/// Copies each grey value to R, G and B.
fn grey_to_rgb(grey: &[u8]) -> Vec<u8> {
    grey.iter().flat_map(|&v| [v, v, v]).collect()
}

fn decode_png(bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
    let decode_err = |e: png::DecodingError| ImageError::Decode {
        path: path.to_owned(),
        source: DecodeError::Png(e),
    };
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    let header = decoder.read_header_info().map_err(decode_err)?;
    // Pillow opens 16-bit grey (no alpha) as `I;16`; its RGB conversion is `min(v, 255)`.
    let grey16 = header.bit_depth == png::BitDepth::Sixteen
        && header.color_type == png::ColorType::Grayscale;
    // EXPAND: palette -> RGB(A), grey < 8 bit -> 8 bit, tRNS -> alpha;
    // STRIP_16: keep the most significant byte of 16-bit samples (Pillow's `;16B` modes).
    decoder.set_transformations(if grey16 {
        png::Transformations::IDENTITY
    } else {
        png::Transformations::EXPAND | png::Transformations::STRIP_16
    });
    let mut reader = decoder.read_info().map_err(decode_err)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ImageError::Unsupported {
            path: path.to_owned(),
            what: "PNG too large for memory".into(),
        })?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(decode_err)?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    let line = frame.line_size;
    if grey16 {
        let mut pixels = Vec::with_capacity(width * height * 3);
        for row in buf.chunks_exact(line).take(height) {
            for v in row[..width * 2].chunks_exact(2) {
                let v = u16::from_be_bytes([v[0], v[1]]).min(255) as u8;
                pixels.extend([v, v, v]);
            }
        }
        return Ok(RgbImage {
            width,
            height,
            pixels,
        });
    }
    if frame.bit_depth != png::BitDepth::Eight {
        return Err(ImageError::Unsupported {
            path: path.to_owned(),
            what: format!("PNG output bit depth {:?}", frame.bit_depth),
        });
    }
    let samples = frame.color_type.samples();
    let mut pixels = Vec::with_capacity(width * height * 3);
    for row in buf.chunks_exact(line).take(height) {
        let row = &row[..width * samples];
        match frame.color_type {
            png::ColorType::Rgb => pixels.extend_from_slice(row),
            png::ColorType::Rgba => {
                row.chunks_exact(4)
                    .for_each(|p| pixels.extend_from_slice(&p[..3]));
            }
            png::ColorType::Grayscale => row.iter().for_each(|&v| pixels.extend([v, v, v])),
            png::ColorType::GrayscaleAlpha => {
                row.chunks_exact(2)
                    .for_each(|p| pixels.extend([p[0], p[0], p[0]]));
            }
            png::ColorType::Indexed => {
                return Err(ImageError::Unsupported {
                    path: path.to_owned(),
                    what: "PNG palette was not expanded".into(),
                });
            }
        }
    }
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_png(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, width, height);
            enc.set_color(color);
            enc.set_depth(depth);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(data).unwrap();
        }
        out
    }

    #[test]
    fn png_grey_is_copied_to_rgb() {
        let png = encode_png(
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &[7, 200],
        );
        let img = decode_rgb(&png, Path::new("g.png")).unwrap();
        assert_eq!((img.width(), img.height()), (2, 1));
        assert_eq!(img.pixels(), &[7, 7, 7, 200, 200, 200]);
    }

    #[test]
    fn png_rgba_drops_alpha_without_compositing() {
        let png = encode_png(
            1,
            1,
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            &[10, 20, 30, 0],
        );
        let img = decode_rgb(&png, Path::new("a.png")).unwrap();
        assert_eq!(img.pixels(), &[10, 20, 30]);
    }

    #[test]
    fn png_low_bit_grey_is_scaled_by_replication() {
        // 2-bit grey: values 0..3 -> 0, 85, 170, 255 (Pillow's L;2 unpacker).
        let png = encode_png(
            4,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Two,
            &[0b00_01_10_11],
        );
        let img = decode_rgb(&png, Path::new("l2.png")).unwrap();
        let r: Vec<u8> = img.pixels().iter().step_by(3).copied().collect();
        assert_eq!(r, vec![0, 85, 170, 255]);
    }

    #[test]
    fn png_16bit_rgb_keeps_high_byte_and_16bit_grey_saturates() {
        let png = encode_png(
            1,
            1,
            png::ColorType::Rgb,
            png::BitDepth::Sixteen,
            &[0x12, 0xFF, 0x34, 0x00, 0xAB, 0x80],
        );
        let img = decode_rgb(&png, Path::new("rgb16.png")).unwrap();
        assert_eq!(img.pixels(), &[0x12, 0x34, 0xAB]);
        // Pillow: I;16 -> RGB is min(v, 255) (checked with Pillow 13: 5, 0x1280, 0xFFFF ->
        // 5, 255, 255).
        let png = encode_png(
            3,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &[0, 5, 0x12, 0x80, 0xFF, 0xFF],
        );
        let img = decode_rgb(&png, Path::new("grey16.png")).unwrap();
        assert_eq!(img.pixels(), &[5, 5, 5, 255, 255, 255, 255, 255, 255]);
        // 16-bit grey + alpha: Pillow keeps the high byte (LA;16B).
        let png = encode_png(
            1,
            1,
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Sixteen,
            &[0x12, 0x80, 0x34, 0],
        );
        let img = decode_rgb(&png, Path::new("la16.png")).unwrap();
        assert_eq!(img.pixels(), &[0x12, 0x12, 0x12]);
    }

    #[test]
    fn unknown_format_is_unsupported_and_names_the_file() {
        let err = decode_rgb(b"GIF89a....", Path::new("x/y.gif")).unwrap_err();
        assert!(matches!(err, ImageError::Unsupported { .. }));
        assert!(err.to_string().contains("x/y.gif"), "{err}");
    }

    #[test]
    fn garbage_jpeg_is_a_decode_error_naming_the_file() {
        let err =
            decode_rgb(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0, 1, 2], Path::new("bad.jpg")).unwrap_err();
        assert!(matches!(err, ImageError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("bad.jpg"), "{err}");
    }

    /// An 8x8 greyscale baseline JPEG (a diagonal ramp), 360 bytes.
    const GREY_8X8_JPEG: [u8; 360] = [
        0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00,
        0x01, 0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x08, 0x06, 0x06, 0x07, 0x06,
        0x05, 0x08, 0x07, 0x07, 0x07, 0x09, 0x09, 0x08, 0x0a, 0x0c, 0x14, 0x0d, 0x0c, 0x0b, 0x0b,
        0x0c, 0x19, 0x12, 0x13, 0x0f, 0x14, 0x1d, 0x1a, 0x1f, 0x1e, 0x1d, 0x1a, 0x1c, 0x1c, 0x20,
        0x24, 0x2e, 0x27, 0x20, 0x22, 0x2c, 0x23, 0x1c, 0x1c, 0x28, 0x37, 0x29, 0x2c, 0x30, 0x31,
        0x34, 0x34, 0x34, 0x1f, 0x27, 0x39, 0x3d, 0x38, 0x32, 0x3c, 0x2e, 0x33, 0x34, 0x32, 0xff,
        0xc0, 0x00, 0x0b, 0x08, 0x00, 0x08, 0x00, 0x08, 0x01, 0x01, 0x11, 0x00, 0xff, 0xc4, 0x00,
        0x1f, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
        0xff, 0xc4, 0x00, 0xb5, 0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05, 0x05,
        0x04, 0x04, 0x00, 0x00, 0x01, 0x7d, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21,
        0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08,
        0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a,
        0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
        0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56,
        0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75,
        0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93,
        0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9,
        0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6,
        0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
        0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7,
        0xf8, 0xf9, 0xfa, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3f, 0x00, 0x7f, 0x80,
        0xec, 0x6c, 0xfc, 0x3d, 0xa1, 0x4d, 0xab, 0xdf, 0xfc, 0x96, 0xb6, 0x91, 0x19, 0x5f, 0x04,
        0x02, 0xd8, 0xe8, 0xab, 0x92, 0x01, 0x62, 0x70, 0x00, 0xcf, 0x24, 0x81, 0x5f, 0xff, 0xd9,
    ];

    #[test]
    fn jpeg_corrupt_data_warnings_decode_as_pillow_but_truncation_fails() {
        let good: &[u8] = &GREY_8X8_JPEG;
        let mut decoder = ImageDecoder::new();
        let reference = decoder.decode_rgb(good, Path::new("a.jpg")).unwrap();
        // Two stray bytes before the first DHT marker: libjpeg warns "Corrupt JPEG data: 2
        // extraneous bytes before marker 0xc4"; Pillow ignores it and so do we.
        let dht = good.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
        let corrupt = [&good[..dht], &[0x12, 0x34], &good[dht..]].concat();
        assert_eq!(
            decoder.decode_rgb(&corrupt, Path::new("c.jpg")).unwrap(),
            reference
        );
        // Without the end of the data: "Premature end of JPEG file" (Pillow: truncated).
        let truncated = &good[..good.len() - 3];
        let err = decoder
            .decode_rgb(truncated, Path::new("t.jpg"))
            .unwrap_err();
        assert!(
            err.to_string().contains("Premature end of JPEG file"),
            "{err}"
        );
        assert!(err.to_string().contains("t.jpg"), "{err}");
        assert_eq!(
            decoder.decode_rgb(good, Path::new("a.jpg")).unwrap(),
            reference
        );
    }

    #[test]
    fn a_failed_jpeg_does_not_break_the_next_one() {
        // A baseline 8x8 grey JPEG made for this test (Pillow, quality 75) and its first
        // half, whose header read fails with "missing SOS marker".
        let good: &[u8] = &GREY_8X8_JPEG;
        let bad = &good[..good.len() / 2];
        let mut decoder = ImageDecoder::new();
        let first = decoder.decode_rgb(good, Path::new("a.jpg")).unwrap();
        for seq in ["bg", "bbg"] {
            for c in seq.chars() {
                let decoded =
                    decoder.decode_rgb(if c == 'g' { good } else { bad }, Path::new("x.jpg"));
                if c == 'g' {
                    assert_eq!(decoded.unwrap(), first, "{seq}");
                } else {
                    assert!(decoded.is_err(), "{seq}");
                }
            }
        }
        assert_eq!((first.width(), first.height()), (8, 8));
    }
}
