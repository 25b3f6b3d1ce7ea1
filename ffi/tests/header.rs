//! `include/vgen.h` is generated from this crate by cbindgen and committed. This test regenerates it and fails on
//! any difference, so the header can never drift from the library. `VGEN_BLESS=1 cargo test -p vgen-ffi --test
//! header` (or `make header`) rewrites it.

use std::path::Path;

#[test]
fn committed_header_matches_the_library() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not parse ffi/src")
        .write(&mut generated);
    let path = crate_dir.join("../include/vgen.h");
    if std::env::var_os("VGEN_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/vgen.h");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/vgen.h is out of date with ffi/src: run `make header` and commit the result"
    );
}
