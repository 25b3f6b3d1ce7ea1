//! What the C ABI's tests share: the core fixtures' tiny models, copied into a models folder of a test's own.

use std::path::{Path, PathBuf};

/// Copies `core/tests/fixtures/wan/{fixture}` into `to`, file by file.
pub fn copy_fixture(fixture: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/wan").join(fixture);
    for entry in walk(&from) {
        let target = to.join(entry.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
