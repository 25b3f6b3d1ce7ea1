#![no_main]
//! libFuzzer entry point; the body is `vgen_fuzz::tokenizer`.

libfuzzer_sys::fuzz_target!(init: vgen_fuzz::tolerate_caught_tokenizers_panics(), |data: &[u8]| vgen_fuzz::tokenizer(data));
