//! libFuzzer entry for [`harvest_fuzz::plugin_message`]; run it with `scripts/fuzz plugin_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harvest_fuzz::plugin_message(data));
