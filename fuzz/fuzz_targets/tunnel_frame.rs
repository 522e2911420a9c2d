//! See `punchgate::fuzzing::tunnel_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| punchgate::fuzzing::tunnel_frame(data));
