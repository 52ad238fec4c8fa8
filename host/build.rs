//! Makes the binaries and tests find libtorch without LD_LIBRARY_PATH, and keeps CUDA usable.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // torch-sys links libtorch but sets no rpath: without this the binary fails to start.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // rustc links with --as-needed, which drops libtorch.so and with it libtorch_cuda.so, so
    // CUDA would never register. Keep it when the libtorch in use has CUDA.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
