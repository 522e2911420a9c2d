//! See `punchgate::fuzzing::peer_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| punchgate::fuzzing::peer_record(data));
