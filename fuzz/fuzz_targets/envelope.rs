#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgate_fuzz::envelope(data));
