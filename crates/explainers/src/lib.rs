//! The explainers that ship with cxr. Each module is one method and registers itself with
//! `cxr_core::register_explainer!`; nothing else in the workspace names them. See
//! `docs/adding-an-explainer.md` for writing a new one.
//!
//! All methods explain the classifier's own 224x224 input; "hiding" a region means setting it to
//! 0, which in the standardised, lung-masked input is the lung's mean intensity (the same value
//! everything outside the lungs already has).

mod cam;
pub mod grad_cam;
pub mod grad_cam_plus_plus;
pub mod integrated_gradients;
pub mod lime;
pub mod occlusion;
pub mod rise;
pub mod superpixels;

/// `docs/adding-an-explainer.md`, read by rustdoc as this crate's documentation so that its
/// example is compiled and linked with every test run (a doctest, `no_run`: it needs no model).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/adding-an-explainer.md")]
pub struct AddingAnExplainerGuide;

/// Call from a binary to make sure the linker keeps this crate (and so its registrations).
pub fn link() {}
