//! An rpath to libtorch for the server and its tests, as every vgen binary has, so no one sets LD_LIBRARY_PATH.
fn main() {
    let lib = std::env::var("DEP_VGEN_CORE_LIBTORCH_LIB").expect("vgen-core did not report its libtorch folder");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
}
