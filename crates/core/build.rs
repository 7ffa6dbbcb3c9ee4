//! Bakes libtorch's library folder into the rpath of this package's binaries, tests and benches,
//! so that they run without `LD_LIBRARY_PATH`. torch-sys declares `links = "tch"` and exports the
//! folder to the build scripts of crates that depend on it directly, as `DEP_TCH_LIBTORCH_LIB`.
//! Every package that links libtorch into an executable uses this same script.
//!
//! It also remembers where scripts/env.sh found ONNX Runtime's shared library (`CXR_ONNXRUNTIME`),
//! which the ONNX backend loads at run time (crates/core/src/models/onnx.rs).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=CXR_ONNXRUNTIME");
    if let Ok(path) = std::env::var("CXR_ONNXRUNTIME") {
        println!("cargo:rustc-env=CXR_ONNXRUNTIME_AT_BUILD={path}");
    }
}
