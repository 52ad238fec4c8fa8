//! Makes the binaries and tests find libtorch without LD_LIBRARY_PATH, keeps CUDA usable, and
//! compiles the C++ shim that gives Rust libtorch generator objects (csrc/generator.cpp).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // torch-sys links libtorch but sets no rpath: without one the binary fails to start.
    // First `$ORIGIN/libtorch/torch/lib` (the loader expands `$ORIGIN` to the executable's
    // folder), where `scripts/install` copies libtorch beside the installed binary: an
    // installed sdhost then runs on its own copy and survives deleting or rebuilding the
    // clone. A build in the clone has no such folder and falls through to the absolute path
    // of the libtorch it was linked against.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/libtorch/torch/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // rustc links with --as-needed, which drops libtorch.so and with it libtorch_cuda.so, so
    // CUDA would never register. Keep it when the libtorch in use has CUDA.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    emit_libtorch_version(Path::new(&lib_dir));
    compile_generator_shim(Path::new(&lib_dir));
}

/// Tells the crate which libtorch it links (`sdhost bench` prints it beside its tables): the
/// cut folder's `build-version` (scripts/libtorch.py), else the pip package's `version.py`.
fn emit_libtorch_version(lib_dir: &Path) {
    let root = lib_dir.parent().unwrap_or(lib_dir);
    let (build_version, version_py) = (root.join("build-version"), root.join("version.py"));
    // Watch only the file that exists: cargo counts a watched missing file as changed, which
    // reran this script and rebuilt the crate on every build.
    let watched = [build_version.as_path(), version_py.as_path()]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or(root);
    println!("cargo:rerun-if-changed={}", watched.display());
    let version = std::fs::read_to_string(&build_version)
        .ok()
        .map(|text| text.trim().to_owned())
        .or_else(|| {
            std::fs::read_to_string(&version_py)
                .ok()?
                .lines()
                .find_map(|line| {
                    let value = line
                        .strip_prefix("__version__")?
                        .split(['\'', '"'])
                        .nth(1)?;
                    Some(value.to_owned())
                })
        });
    if let Some(version) = version.filter(|v| !v.is_empty()) {
        println!("cargo:rustc-env=SDHOST_LIBTORCH_VERSION={version}");
    }
}

/// Builds csrc/generator.cpp against the libtorch headers the way torch-sys builds its wrapper.
fn compile_generator_shim(lib_dir: &Path) {
    const SOURCE: &str = "csrc/generator.cpp";
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // torch-sys does not pass its include dirs on; they sit beside its lib dir in every layout
    // it supports (LIBTORCH, the pip package), and LIBTORCH_INCLUDE overrides them there too.
    let root = std::env::var_os("LIBTORCH_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| lib_dir.parent().unwrap_or(lib_dir).to_path_buf());
    // The same default as torch-sys: the pip wheels and current libtorch zips use the new ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file(SOURCE)
        .compile("sdhost_generator");
}
