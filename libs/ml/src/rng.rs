//! The one random generator training draws from.
//!
//! Every seeded draw in training (initial weights, splits, folds, shuffles, dropout masks,
//! reference samples, random search) comes from ChaCha12 as `rand_chacha` implements it, named
//! here rather than through `rand::rngs::SeededRng`: `SeededRng` is ChaCha12 today (so this changed no
//! seeded model), but `rand` reserves the right to change its algorithm in any release, and a
//! fixed seed must give the same model after an upgrade. The test below pins its output.

/// The generator of every seeded training draw.
pub(crate) type SeededRng = rand_chacha::ChaCha12Rng;

use rand::RngCore;
use rand_chacha::ChaCha8Rng;

/// Draws for the simulated feeds (reviews, penguins), from ChaCha8 without going through
/// `rand`'s distributions, whose algorithms may change: a seed gives the same feed on every
/// platform and with every version of `rand`.
pub(crate) struct Draw(pub(crate) ChaCha8Rng);

impl Draw {
    /// A uniform share in [0, 1) from the top 53 bits.
    pub(crate) fn share(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform index below `n` (multiply-shift: no modulo bias worth the name for small `n`).
    pub(crate) fn index(&mut self, n: usize) -> usize {
        ((u128::from(self.0.next_u64()) * n as u128) >> 64) as usize
    }

    pub(crate) fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.index(from.len())]
    }
}

impl Draw {
    /// A standard normal draw (Box-Muller on two uniform shares).
    pub(crate) fn normal(&mut self) -> f64 {
        // 1 - share is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.share();
        let v = self.share();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngCore, SeedableRng};

    use super::SeededRng;

    #[test]
    fn a_seed_draws_the_same_values_on_every_build() {
        let mut rng = SeededRng::seed_from_u64(42);
        let raw: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        // Whatever the generator, seed 42 must keep giving these: a change here changes every
        // seeded model Petrel trains.
        let mut again = SeededRng::seed_from_u64(42);
        assert_eq!(raw, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        let uniform: f32 = SeededRng::seed_from_u64(7).random_range(-0.5..0.5);
        assert_eq!(
            (raw, uniform.to_bits()),
            (PINNED_RAW.to_vec(), PINNED_UNIFORM),
            "the seeded generator or rand's uniform sampling changed"
        );
    }

    const PINNED_RAW: [u64; 3] = [
        9_713_269_763_989_775_522,
        10_011_513_049_433_592_189,
        11_740_708_795_755_607_249,
    ];
    const PINNED_UNIFORM: u32 = 3_182_082_096;
}
