//! The tunnel's ciphers alone on one core, as a reference: the most an encrypted tunnel can
//! carry here. aws-lc, as rustls uses it, on 16 KiB records (TLS's largest).

use std::time::Instant;

use aws_lc_rs::aead::{
    AES_128_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
};
use serde::Serialize;

/// One cipher's speed on one core.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CipherSpeed {
    pub(crate) name: &'static str,
    pub(crate) seal_gbps: f64,
    pub(crate) open_gbps: f64,
}

/// The suites Punchgate's TLS may negotiate, the one it prefers on this CPU first.
pub(crate) fn ciphers(bytes: usize) -> Vec<CipherSpeed> {
    let mut all = vec![
        speed("AES-128-GCM", &AES_128_GCM, bytes),
        speed("ChaCha20-Poly1305", &CHACHA20_POLY1305, bytes),
    ];
    if !punchgate::net::tls::has_aes_instructions() {
        all.reverse();
    }
    all
}

/// Seals then opens `bytes` in 16 KiB records.
fn speed(name: &'static str, algorithm: &'static Algorithm, bytes: usize) -> CipherSpeed {
    const RECORD: usize = 16 << 10;
    let key = LessSafeKey::new(
        UnboundKey::new(algorithm, &vec![7u8; algorithm.key_len()]).expect("key length"),
    );
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
    let seal_gbps = gbits(records * RECORD, started);
    // Open the last 16 sealed records over and over (each with the nonce it was sealed with).
    let sealed: Vec<(usize, Vec<u8>)> = (records.saturating_sub(16)..records)
        .map(|i| (i, buffers[i % 16].clone()))
        .collect();
    // Opening consumes the record, so each is copied into one scratch buffer first (a 16 KiB
    // memcpy, small beside the cipher; rustls copies each record too).
    let mut scratch = Vec::with_capacity(RECORD + 16);
    let started = Instant::now();
    for i in 0..records {
        let (n, record) = &sealed[i % sealed.len()];
        scratch.clear();
        scratch.extend_from_slice(record);
        key.open_in_place(nonce(*n), Aad::empty(), &mut scratch)
            .expect("open");
    }
    let open_gbps = gbits(records * RECORD, started);
    CipherSpeed {
        name,
        seal_gbps,
        open_gbps,
    }
}

fn gbits(bytes: usize, started: Instant) -> f64 {
    bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9
}
