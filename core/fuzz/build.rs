//! An rpath to libtorch for the fuzz binaries and the corpus tests, as every vgen binary has.
fn main() {
    let lib = std::env::var("DEP_VGEN_CORE_LIBTORCH_LIB").expect("vgen-core did not report its libtorch folder");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
}
