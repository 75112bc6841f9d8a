//! Seed derivation: every random choice of a run comes from one `u64` seed.
//! Each consumer (the fault injector, client `i`'s incarnation `n`, turmoil's
//! network) gets its own stream, derived by name, so adding a draw in one
//! place does not shift the choices made in another.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator used everywhere in the simulator.
pub type SimRng = ChaCha8Rng;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for the stream `name`/`index`/`sub` of run `seed`.
pub fn derive(seed: u64, name: &str, index: u64, sub: u64) -> u64 {
    // FNV-1a over the name: stable across platforms and compiler versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(splitmix64(splitmix64(seed ^ h) ^ index) ^ sub)
}

/// A generator for the stream `name`/`index`/`sub` of run `seed`.
pub fn stream(seed: u64, name: &str, index: u64, sub: u64) -> SimRng {
    SimRng::seed_from_u64(derive(seed, name, index, sub))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_stable_and_distinct() {
        assert_eq!(derive(1, "client", 0, 0), derive(1, "client", 0, 0));
        assert_ne!(derive(1, "client", 0, 0), derive(1, "client", 1, 0));
        assert_ne!(derive(1, "client", 0, 0), derive(1, "client", 0, 1));
        assert_ne!(derive(1, "client", 0, 0), derive(2, "client", 0, 0));
        assert_ne!(derive(1, "client", 0, 0), derive(1, "faults", 0, 0));
        let a: u64 = stream(7, "x", 0, 0).random();
        let b: u64 = stream(7, "x", 0, 0).random();
        assert_eq!(a, b);
    }
}
