//! Bakes libtorch's library folder into the rpath of this package's binaries, tests and benches,
//! so that they run without `LD_LIBRARY_PATH`. torch-sys declares `links = "tch"` and exports the
//! folder to the build scripts of crates that depend on it directly, as `DEP_TCH_LIBTORCH_LIB`.
//! Every package that links libtorch into an executable uses this same script.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
