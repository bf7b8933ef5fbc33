#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pulse_ledger::fuzzing::proof(data));
