//! The one random generator training draws from.
//!
//! Every seeded draw in training (initial weights, splits, folds, shuffles, dropout masks,
//! reference samples, random search) comes from ChaCha12 as `rand_chacha` implements it, named
//! here rather than through `rand::rngs::SeededRng`: `SeededRng` is ChaCha12 today (so this changed no
//! seeded model), but `rand` reserves the right to change its algorithm in any release, and a
//! fixed seed must give the same model after an upgrade. The test below pins its output.

/// The generator of every seeded training draw.
pub(crate) type SeededRng = rand_chacha::ChaCha12Rng;

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
