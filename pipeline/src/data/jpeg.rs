//! A minimal safe wrapper over the TurboJPEG 2 decompression API of the system
//! libjpeg-turbo (`libturbojpeg`, found through pkg-config by `turbojpeg-sys`).
//!
//! Why not a higher-level crate: Pillow ignores libjpeg *warnings* (e.g. "Corrupt JPEG data:
//! 2 extraneous bytes before marker 0xc4") and returns the complete image, while TurboJPEG
//! 2.x reports any warning as a failure (-1) after producing that same complete image. To
//! match Pillow, a warning must be told apart from a fatal error (`tjGetErrorCode`), which
//! the `turbojpeg` crate does not expose. The one warning that Pillow does fail on is the
//! end of the data ("Premature end of JPEG file": Pillow's "image file is truncated").

use std::ffi::CStr;
use std::ptr::NonNull;

use turbojpeg_sys as tj;

/// Colour spaces of a JPEG as TurboJPEG reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JpegColorspace {
    /// Three components stored as RGB.
    Rgb,
    /// YCbCr (the usual JFIF colour JPEG).
    YCbCr,
    /// One component (greyscale).
    Gray,
    /// CMYK (Adobe).
    Cmyk,
    /// YCCK (Adobe).
    Ycck,
}

/// Output pixel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JpegPixels {
    /// 3 bytes per pixel, R G B.
    Rgb,
    /// 1 byte per pixel.
    Gray,
}

impl JpegPixels {
    /// Bytes per pixel.
    pub(crate) fn channels(self) -> usize {
        match self {
            JpegPixels::Rgb => 3,
            JpegPixels::Gray => 1,
        }
    }
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JpegHeader {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) colorspace: JpegColorspace,
}

/// A failed call: libjpeg's message, and whether the handle must be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JpegFailure(pub(crate) String);

/// How a TurboJPEG call ended.
enum Outcome {
    Ok,
    /// A libjpeg warning other than truncation: the output is complete (Pillow accepts it).
    Warning(String),
    /// A fatal error, or truncation.
    Failed(String),
}

/// libjpeg's `JWRN_JPEG_EOF` text: the data ended before the image did.
const TRUNCATED: &str = "Premature end of JPEG file";

/// One TurboJPEG decompressor handle. Used by one thread at a time (`Send`, not `Sync`).
pub(crate) struct TurboJpeg {
    handle: NonNull<std::ffi::c_void>,
}

// SAFETY: a TurboJPEG handle holds no thread-local state; it may move between threads as
// long as it is used by one thread at a time, which `&mut self` on every call guarantees.
unsafe impl Send for TurboJpeg {}

impl std::fmt::Debug for TurboJpeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurboJpeg").finish_non_exhaustive()
    }
}

impl Drop for TurboJpeg {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitDecompress and is destroyed exactly once.
        unsafe {
            tj::tjDestroy(self.handle.as_ptr());
        }
    }
}

impl TurboJpeg {
    /// A new decompressor.
    pub(crate) fn new() -> Result<Self, JpegFailure> {
        // SAFETY: plain constructor; a null result is handled.
        let handle = unsafe { tj::tjInitDecompress() };
        NonNull::new(handle)
            .map(|handle| Self { handle })
            .ok_or_else(|| {
                // SAFETY: tjGetErrorStr2 accepts a null handle (global error string).
                JpegFailure(unsafe { message(std::ptr::null_mut()) })
            })
    }

    /// Classifies the return code of the last call on this handle.
    fn outcome(&self, rc: std::ffi::c_int) -> Outcome {
        if rc == 0 {
            return Outcome::Ok;
        }
        // SAFETY: the handle is valid; both calls only read its error state.
        let (msg, code) = unsafe {
            (
                message(self.handle.as_ptr()),
                tj::tjGetErrorCode(self.handle.as_ptr()),
            )
        };
        if code == tj::TJERR_TJERR_WARNING as std::ffi::c_int && !msg.contains(TRUNCATED) {
            Outcome::Warning(msg)
        } else {
            Outcome::Failed(msg)
        }
    }

    /// Reads the header. `Ok((header, Some(warning)))` when libjpeg warned but the header is
    /// complete.
    pub(crate) fn header(
        &mut self,
        jpeg: &[u8],
    ) -> Result<(JpegHeader, Option<String>), JpegFailure> {
        let (mut w, mut h, mut subsamp, mut cs) = (0, 0, 0, 0);
        // SAFETY: `jpeg` is a valid slice of `len` bytes; the out-pointers are valid locals.
        let rc = unsafe {
            tj::tjDecompressHeader3(
                self.handle.as_ptr(),
                jpeg.as_ptr(),
                jpeg.len() as std::ffi::c_ulong,
                &mut w,
                &mut h,
                &mut subsamp,
                &mut cs,
            )
        };
        let warning = match self.outcome(rc) {
            Outcome::Ok => None,
            Outcome::Warning(m) => Some(m),
            Outcome::Failed(m) => return Err(JpegFailure(m)),
        };
        let colorspace = match cs as u32 {
            tj::TJCS_TJCS_RGB => JpegColorspace::Rgb,
            tj::TJCS_TJCS_YCbCr => JpegColorspace::YCbCr,
            tj::TJCS_TJCS_GRAY => JpegColorspace::Gray,
            tj::TJCS_TJCS_CMYK => JpegColorspace::Cmyk,
            tj::TJCS_TJCS_YCCK => JpegColorspace::Ycck,
            other => return Err(JpegFailure(format!("unknown JPEG colour space {other}"))),
        };
        if w <= 0 || h <= 0 {
            return Err(JpegFailure(format!("JPEG header gives a {w} x {h} image")));
        }
        let header = JpegHeader {
            width: w as usize,
            height: h as usize,
            colorspace,
        };
        Ok((header, warning))
    }

    /// Decodes the whole image at its own size into `out` (`width * height * channels`
    /// bytes) with the default flags: accurate integer IDCT, fancy upsampling, top-down.
    /// `Ok(Some(warning))` when libjpeg warned (the image is still complete).
    ///
    /// # Panics
    /// When `out` has the wrong size or a dimension does not fit a C `int`.
    pub(crate) fn decompress(
        &mut self,
        jpeg: &[u8],
        header: &JpegHeader,
        pixels: JpegPixels,
        out: &mut [u8],
    ) -> Result<Option<String>, JpegFailure> {
        let pitch = header.width * pixels.channels();
        assert_eq!(out.len(), pitch * header.height, "output buffer size");
        let as_int = |v: usize| std::ffi::c_int::try_from(v).expect("JPEG size fits a C int");
        let format = match pixels {
            JpegPixels::Rgb => tj::TJPF_TJPF_RGB,
            JpegPixels::Gray => tj::TJPF_TJPF_GRAY,
        };
        // SAFETY: `out` holds exactly pitch * height bytes and width/height are the image's
        // own (non-zero) size, so TurboJPEG writes at most pitch * height bytes.
        let rc = unsafe {
            tj::tjDecompress2(
                self.handle.as_ptr(),
                jpeg.as_ptr(),
                jpeg.len() as std::ffi::c_ulong,
                out.as_mut_ptr(),
                as_int(header.width),
                as_int(pitch),
                as_int(header.height),
                format as std::ffi::c_int,
                0,
            )
        };
        match self.outcome(rc) {
            Outcome::Ok => Ok(None),
            Outcome::Warning(m) => Ok(Some(m)),
            Outcome::Failed(m) => Err(JpegFailure(m)),
        }
    }
}

/// The error message of `handle` (or the global one for null).
///
/// # Safety
/// `handle` is null or a live TurboJPEG handle.
unsafe fn message(handle: tj::tjhandle) -> String {
    // SAFETY: tjGetErrorStr2 returns a NUL-terminated string owned by the handle/library.
    let ptr = unsafe { tj::tjGetErrorStr2(handle) };
    if ptr.is_null() {
        return "unknown TurboJPEG error".into();
    }
    // SAFETY: non-null, NUL-terminated, valid until the next call on the handle.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}
