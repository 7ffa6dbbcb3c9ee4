//! cxr-io: reading chest radiographs. Every input the tool takes, from every surface, becomes a
//! grayscale `f32` image here, or a one-line error naming the file:
//!
//! - [`input`]: the input gate (no FIFOs, no followed links in folders others write into, size
//!   limits while reading);
//! - [`limits`]: the sizes every input is held to; [`budget`]: the process-wide memory budget
//!   for decoded pixels (both leaves: every decoder reads them, they read no decoder);
//! - [`xray`]: the decoded radiograph, [`Xray`], dispatching on the format: PNG and JPEG (8- or
//!   16-bit, strict about truncation) in `raster`, or DICOM;
//! - [`dicom`]: DICOM files, through `dicom::guard` (hostile-file checks before and while
//!   parsing), `dicom::codec` (pixel data) and `dicom::voi` (rescale, VOI, inversion);
//! - [`files`]: which file names are radiographs, and the content hash that names an input;
//! - [`mask`]: lung-mask clean-up after segmentation.
//!
//! No libtorch: nothing here needs a tensor, so the decoding tests and the fuzzer build and run
//! without it (no libtorch set-up, no 1 GB link per test binary), and a tool that only decodes
//! stays small.
//! `cxr-core` re-exports these modules under their old paths (`cxr_core::xray`, ...).

pub mod budget;
pub mod dicom;
mod error;
pub mod files;
pub mod input;
pub mod limits;
pub mod mask;
mod raster;
pub mod xray;

use image::{ImageBuffer, Luma};

pub use error::{Error, Result};
pub use xray::Xray;

/// A grayscale image with `f32` pixels, in [0, 1] for decoded radiographs.
pub type GrayF32 = ImageBuffer<Luma<f32>, Vec<f32>>;
