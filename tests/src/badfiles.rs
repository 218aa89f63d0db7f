//! Bad state files for the readers: mutations of a valid file and plain noise, from
//! a fixed seed so that every run tests the same files.

/// `n` files: even ones are `good` with 1 to 8 bytes changed (mostly in the header,
/// alias table and address table, where they matter), odd ones random bytes of
/// random length.
pub fn mutations(good: &[u8], n: usize, seed: u64) -> Vec<Vec<u8>> {
    // xorshift64: small, deterministic, good enough to spread the changes.
    let mut x = seed.max(1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let mut b: Vec<u8> = if i % 2 == 0 {
                good.to_vec()
            } else {
                (0..(next() % 9000) as usize)
                    .map(|_| next() as u8)
                    .collect()
            };
            if !b.is_empty() {
                for _ in 0..1 + next() % 8 {
                    let hot = 512.min(b.len());
                    // The first three address slots, when the file reaches them.
                    let addresses = dbha_protocol::ADDRESSES_OFFSET as usize;
                    let at = match next() % 4 {
                        0 => (next() as usize) % b.len(),
                        1 if b.len() >= addresses + 768 => addresses + (next() as usize) % 768,
                        _ => (next() as usize) % hot,
                    };
                    b[at] = next() as u8;
                }
            }
            b
        })
        .collect()
}
