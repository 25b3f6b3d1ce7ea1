#![no_main]
//! libFuzzer entry point; the body is `vgen_fuzz::server_bodies`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgen_fuzz::server_bodies(data));
