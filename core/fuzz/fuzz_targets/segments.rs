#![no_main]
//! libFuzzer entry point; the body is `vgen_fuzz::segments`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgen_fuzz::segments(data));
