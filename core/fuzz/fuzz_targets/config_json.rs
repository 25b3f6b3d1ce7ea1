#![no_main]
//! libFuzzer entry point; the body is `vgen_fuzz::config_json`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgen_fuzz::config_json(data));
