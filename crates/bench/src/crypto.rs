//! Noise's cipher on one core, as a reference: the most an encrypted tunnel can carry here.

use std::time::Instant;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// Seals then opens `bytes` in 64 KiB records (Noise's largest); returns (seal, open) Gbit/s.
pub(crate) fn chacha20_poly1305(bytes: usize) -> (f64, f64) {
    const RECORD: usize = 65_519;
    let key =
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).expect("32-byte key"));
    let records = bytes.div_ceil(RECORD);
    let mut buffers: Vec<Vec<u8>> = vec![vec![0x5a; RECORD]; 16];
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_le_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let started = Instant::now();
    for i in 0..records {
        let buf = &mut buffers[i % 16];
        buf.truncate(RECORD);
        key.seal_in_place_append_tag(nonce(i), Aad::empty(), buf)
            .expect("seal");
    }
    let seal = gbits(records * RECORD, started);
    // Open the last 16 sealed records over and over (each with the nonce it was sealed with).
    let sealed: Vec<(usize, Vec<u8>)> = (records.saturating_sub(16)..records)
        .map(|i| (i, buffers[i % 16].clone()))
        .collect();
    // Opening consumes the record, so each is copied into one scratch buffer first (a 64 KiB
    // memcpy, small beside the cipher; libp2p-noise copies each frame too).
    let mut scratch = Vec::with_capacity(RECORD + 16);
    let started = Instant::now();
    for i in 0..records {
        let (n, record) = &sealed[i % sealed.len()];
        scratch.clear();
        scratch.extend_from_slice(record);
        key.open_in_place(nonce(*n), Aad::empty(), &mut scratch)
            .expect("open");
    }
    let open = gbits(records * RECORD, started);
    (seal, open)
}

fn gbits(bytes: usize, started: Instant) -> f64 {
    bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9
}
