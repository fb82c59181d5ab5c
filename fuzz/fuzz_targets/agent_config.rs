//! libFuzzer entry for [`harvest_fuzz::agent_config`]; run it with `scripts/fuzz agent_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harvest_fuzz::agent_config(data));
