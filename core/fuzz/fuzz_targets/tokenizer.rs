#![no_main]
//! libFuzzer entry point; the body is `vgen_fuzz::tokenizer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgen_fuzz::tokenizer(data));
