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

/// The fixtures' tiny Wan with `expand_timesteps` (a TI2V model, which takes an image), named `tiny-ti2v`, in `to`:
/// 32×32, `num_frames` frames and 2 steps by default.
#[allow(dead_code)] // not every test binary that shares this module makes one
pub fn tiny_ti2v(to: &Path, num_frames: u32) {
    copy_fixture("tiny-wan", to);
    let index = to.join("model_index.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    json["expand_timesteps"] = true.into();
    std::fs::write(&index, json.to_string()).unwrap();
    let serving = format!(
        r#"{{"name": "tiny-ti2v", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": {num_frames}, "steps": 2}}"#
    );
    std::fs::write(to.join("vgen.json"), serving).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
