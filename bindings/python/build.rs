//! The extension finds libtorch in the `torch` wheel installed beside it (`site-packages/torch/lib`), never a
//! second copy: `vgen/__init__.py` imports torch first, and this rpath covers hosts that load `_vgen` directly.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
}
