//! cxr-core: chest radiographs in, lung masks, predictions and (with cxr-explainers) explanations
//! out. The folder layout follows the data flow:
//!
//! - [`xray`]: decoding any PNG/JPEG/DICOM ([`dicom`]) into a grayscale `f32` image (bad input
//!   is a clear error), through the [`input`] gate; [`files`]: radiograph file names and content
//!   hashes; these and [`mask`] are re-exported from `cxr-io`, which builds without libtorch;
//!   [`cache`]: results on disk keyed by image, model and parameters;
//! - [`preprocess`]: the one function that turns a radiograph into network input;
//! - [`models`]: the U-Net segmenter and `ResNet` classifier, their traits and backends
//!   (libtorch, TorchScript, ONNX Runtime); [`compute`]: device, backend and threads;
//!   [`host`]: what a program sets for its whole process at start-up (never called in here);
//! - [`mask`]: lung-mask clean-up; [`pipeline`]: all stages with timings;
//! - [`service`]: the one analysis service (classify, explain, draw, cache) every surface uses,
//!   and [`answer`]: its results as every surface answers them;
//!   [`pool`]: worker threads that each own a service, behind one bounded queue;
//! - [`explain`]: the explainer contract, its link-time registry, heatmaps, quality measures;
//! - [`data`], [`metrics`], [`evaluation`], [`train`], [`card`]: manifests, patient split,
//!   measures of a model (per source, held-out sources), training, model cards;
//!   [`audit`]: linear probes that tell whether the features carry the source;
//! - [`trust`]: familiarity score and flags that say when a prediction should not be trusted;
//! - [`watch`], [`queue`]: the drop folder and the review and training queue it fills.

pub mod answer;
pub mod audit;
pub mod cache;
pub mod card;
pub mod compute;
pub mod data;
pub mod device;
pub mod dicom_out;
mod error;
pub mod evaluation;
pub mod explain;
pub mod fsutil;
pub mod host;
pub mod metrics;
pub mod models;
pub mod npy;
pub mod pipeline;
pub mod pool;
pub mod preprocess;
pub mod queue;
pub mod render;
pub mod service;
pub mod shape;
pub mod train;
pub mod trust;
pub mod watch;

// Decoding lives in cxr-io (no libtorch); its modules keep their paths here.
pub use cxr_io::{Error as InputError, dicom, files, input, mask, xray};
pub use error::{CoreError, Result};
pub use tch;
