//! Helpers shared by the crate's unit tests.

/// A seeded xorshift64 sequence: cheap, reproducible pseudo-random numbers for fuzz loops
/// and random layouts (the seed must not be 0).
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
