//! Gives libvgen.so (and this crate's tests) an rpath to the libtorch it was built against, so a C host needs no
//! `LD_LIBRARY_PATH`. `$ORIGIN` also lets a host ship libtorch's libraries beside libvgen.so.
fn main() {
    let lib = std::env::var("DEP_VGEN_CORE_LIBTORCH_LIB").expect("vgen-core did not report its libtorch folder");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}:$ORIGIN");
}
