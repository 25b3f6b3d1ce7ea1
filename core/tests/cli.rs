//! The `vgen` command as a person meets it: bad input is refused before any work with what to change, `--json`
//! is valid JSON lines ending in a result, every output format is written, and Ctrl-C cancels cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn vgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vgen"))
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_input_is_refused_before_work_with_the_fix() {
    let dir = scratch("bad");
    let out = dir.join("a.mp4");
    let out = out.to_str().unwrap();
    for (args, expect) in [
        (vec!["--width", "100"], "use 96 or 112"),
        (vec!["--frames", "18"], "use 17 or 21"),
        (vec!["--model", "nope"], "installed:"),
        (vec!["--device", "cuda:7"], "cuda:7"),
        (vec!["--steps", "0"], "steps 0"),
    ] {
        let r = vgen().args(["generate", "--prompt", "x", "--out", out]).args(&args).output().unwrap();
        assert_eq!(r.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    for (path, expect) in [("/nonexistent-dir/a.mp4", "does not exist"), ("a.avi", ".mp4, .gif")] {
        let r = vgen().args(["generate", "--prompt", "x", "--out", path]).output().unwrap();
        assert_eq!(r.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&r.stderr).contains(expect));
    }
    let r = vgen().args(["generate", "--prompt", "x", "--out", out, "--bogus"]).output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written");
}

#[test]
fn json_mode_streams_events_and_writes_every_format() {
    let dir = scratch("json");
    let outs = ["v.mp4", "v.gif", "v.png", "frames/"].map(|o| dir.join(o).to_string_lossy().into_owned());
    let mut cmd = vgen();
    cmd.args(["generate", "--prompt", "a red circle moving right", "--seed", "3", "--json", "--preview-every", "2"]);
    for o in &outs {
        cmd.args(["--out", o]);
    }
    let r = cmd.output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(r.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("valid JSON")).collect();
    assert_eq!(lines[0]["type"], "queued");
    assert!(lines.iter().any(|l| l["type"] == "progress"));
    assert!(lines.iter().any(|l| l["type"] == "preview"));
    assert_eq!(lines[lines.len() - 2]["type"], "finished");
    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["seed"], 3);
    assert_eq!(result["model"], "shapes-tiny", "the default model is the real one");
    assert_eq!(result["paths"].as_array().unwrap().len(), 4);
    assert!(result["peak_rss_bytes"].as_u64().unwrap() > 0);
    for o in &outs {
        assert!(std::path::Path::new(o.trim_end_matches('/')).exists(), "{o}");
    }
    assert_eq!(std::fs::read_dir(dir.join("frames")).unwrap().count(), 17);
}

#[test]
fn ctrl_c_cancels_cleanly_and_leaves_no_file() {
    let dir = scratch("sigint");
    let out = dir.join("never.mp4");
    let mut child = vgen()
        .args([
            "generate", "--prompt", "slow", "--model", "testcard", "--json", "--steps", "200", "--width", "512",
            "--height", "512", "--frames", "129",
        ])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().contains("\"progress\"") {
            break;
        }
    }
    // SAFETY: kill only sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "the exit code says cancelled");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no partial file");
}

/// The command as a user meets it in their own folder: no `$VGEN_MODELS`, nothing in the user's data folder, run
/// from an unrelated working directory. The default model is still the real one, found in the source tree this
/// binary was built from (`make install` tests the install prefix).
fn elsewhere(name: &str) -> (Command, std::path::PathBuf) {
    let dir = scratch(name);
    let mut cmd = vgen();
    cmd.current_dir(&dir).env_remove("VGEN_MODELS").env("XDG_DATA_HOME", dir.join("no-user-models"));
    (cmd, dir)
}

#[test]
fn the_default_model_is_found_from_any_folder() {
    let (mut cmd, _dir) = elsewhere("models");
    let r = cmd.args(["models", "--json"]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.stdout).unwrap();
    let default: Vec<&serde_json::Value> = list.iter().filter(|m| m["default"] == true).collect();
    assert_eq!(default.len(), 1, "{list:?}");
    assert_eq!(default[0]["name"], "shapes-tiny");
    let source_tree = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-tiny");
    assert_eq!(
        std::path::Path::new(default[0]["folder"].as_str().unwrap()).canonicalize().unwrap(),
        source_tree.canonicalize().unwrap()
    );
    for test_model in ["testcard", "noop", "faulty"] {
        let m = list.iter().find(|m| m["name"] == test_model).unwrap();
        assert_eq!((m["test_model"].as_bool(), m["default"].as_bool()), (Some(true), Some(false)), "{test_model}");
    }

    let (mut cmd, dir) = elsewhere("generate");
    let r = cmd
        .args(["generate", "--prompt", "a red circle moving right", "--seed", "1", "--json", "--out", "clip.gif"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8(r.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!((last["model"].as_str(), last["frames"].as_u64()), (Some("shapes-tiny"), Some(17)));
    assert!(dir.join("clip.gif").is_file(), "written relative to the working directory");
}

#[test]
fn the_text_listing_says_where_it_looked() {
    let (mut cmd, dir) = elsewhere("listing");
    let r = cmd.env("VGEN_MODELS", dir.join("mine")).arg("models").output().unwrap();
    let out = String::from_utf8(r.stdout).unwrap();
    assert!(out.lines().any(|l| l.starts_with("shapes-tiny") && l.ends_with("(default)")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("testcard") && l.ends_with("(test model)")), "{out}");
    let searched = out.lines().find(|l| l.starts_with("searched: ")).expect(&out);
    let mine = format!("{} ($VGEN_MODELS)", dir.join("mine").display());
    let user = format!("{} (user data)", dir.join("no-user-models/vgen/models").display());
    assert!(searched.find(&mine).unwrap() < searched.find(&user).unwrap(), "{searched}");
    assert!(searched.contains("(install prefix)") && searched.ends_with("(source tree)"), "{searched}");
}

#[test]
fn quantize_writes_a_model_folder_the_command_then_generates_with() {
    let dir = scratch("quantize");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-tiny");
    let out = dir.join("q8");
    let r = vgen().args(["quantize", "--format", "q8_0", "--json"]).arg(&shipped).arg(&out).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["quantized"]["Q8_0"], 60, "{report}");
    assert!(out.join("transformer/diffusion_pytorch_model.gguf").is_file());
    let clip = dir.join("clip/");
    let r = vgen()
        .args(["generate", "--prompt", "a red circle moving right", "--steps", "4", "--frames", "5", "--model"])
        .arg(&out)
        .arg("--out")
        .arg(&clip)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read_dir(&clip).unwrap().count(), 5, "five frames");
    // A format it does not write, and an existing folder, are refused before any work.
    let r = vgen().args(["quantize", "--format", "q5_1"]).arg(&shipped).arg(dir.join("x")).output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("expected fp8, q8_0 or q4_k"));
    let r = vgen().args(["quantize", "--format", "fp8"]).arg(&shipped).arg(&out).output().unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("exists"));
    assert!(!dir.join("x").exists());
}

#[test]
fn lora_flags_apply_adapters_and_a_missing_one_is_refused() {
    let dir = scratch("lora");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan");
    let model = dir.join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    for entry in ["model_index.json", "scheduler", "text_encoder", "tokenizer", "transformer", "vae"] {
        let from = shipped.join("tiny-wan").join(entry);
        let status = Command::new("cp").arg("-r").arg(&from).arg(&model).status().unwrap();
        assert!(status.success());
    }
    std::fs::write(
        model.join("vgen.json"),
        r#"{"name": "tiny", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 5, "steps": 2}"#,
    )
    .unwrap();
    let lora = shipped.join("loras/peft.safetensors");
    let generate = |extra: &[String], out: &str| {
        vgen()
            .args(["generate", "--prompt", "a cat", "--seed", "2", "--model"])
            .arg(&model)
            .args(extra)
            .arg("--out")
            .arg(dir.join(out))
            .output()
            .unwrap()
    };
    let r = generate(&[], "base/");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = generate(&["--lora".into(), format!("{}:0.5", lora.display())], "styled/");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let frame = |d: &str| std::fs::read(dir.join(d).join("frame_00000.png")).unwrap();
    assert_ne!(frame("base"), frame("styled"), "the adapter changes the video");
    let r = generate(&["--lora".into(), "no-such-adapter:0.5".into()], "x/");
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no adapter \"no-such-adapter\""),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn segments_make_one_storyboard_video_and_the_result_lists_them() {
    let dir = scratch("segments");
    let frames = dir.join("frames/").to_string_lossy().into_owned();
    let r = vgen()
        .args(["generate", "--model", "testcard", "--width", "32", "--height", "32", "--steps", "2", "--json"])
        .args(["--segment", "red: the first part:5", "--segment", "green:4", "--segment", "blue"])
        .args(["--out", &frames])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(r.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("valid JSON")).collect();
    assert_eq!(lines.iter().filter(|l| l["type"] == "quality").count(), 3);
    let result = lines.last().unwrap();
    let parts: Vec<(String, u64, u64)> = result["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["prompt"].as_str().unwrap().to_string(),
                s["start_frame"].as_u64().unwrap(),
                s["frames"].as_u64().unwrap(),
            )
        })
        .collect();
    let expect = [("red: the first part", 0, 5), ("green", 5, 4), ("blue", 9, 16)];
    assert_eq!(parts, expect.map(|(p, s, f)| (p.to_string(), s, f)), "a prompt may hold colons; FRAMES is the last");
    assert_eq!(result["frames"], 25);
    assert_eq!(std::fs::read_dir(&frames).unwrap().count(), 25);

    for (args, expect) in [
        (vec!["--segment", "a", "--segment", "b:3"], "segments[1] frames 3"),
        (vec!["--segment", "a", "--prompt", "b"], "cannot be used with"),
        (vec!["--segment", "a:99999999999"], "too many"),
    ] {
        let r = vgen().args(["generate", "--model", "testcard", "--out", &frames]).args(&args).output().unwrap();
        assert_eq!(r.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}
