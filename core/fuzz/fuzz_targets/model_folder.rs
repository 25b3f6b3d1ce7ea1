#![no_main]
//! libFuzzer entry point; the body is `vgen_fuzz::model_folder`.

libfuzzer_sys::fuzz_target!(init: vgen_fuzz::tolerate_caught_tokenizers_panics(), |data: &[u8]| vgen_fuzz::model_folder(data));
