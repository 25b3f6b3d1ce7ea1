#![no_main]
//! libFuzzer entry point; the body is `vgen_fuzz::c_api::c_api`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgen_fuzz::c_api::c_api(data));
