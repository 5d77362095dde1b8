//! Reproducible stratified train/test splitting.

use std::collections::BTreeMap;

use crate::rng::SeededRng;
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// Stratified split, reproducible for a seed; every class with >= 2 rows has at least one row on
/// each side.
///
/// Returns `(train, test)` row indices, each sorted ascending. Each class contributes
/// `round(n_class * test_fraction)` rows to the test side (clamped as above), so class
/// proportions match on both sides and small classes are still evaluated. A class with a single
/// row goes to training, where it can at least be learned. A non-finite `test_fraction` counts
/// as 0 and values are clamped to `[0, 1]`.
pub fn stratified_split(
    labels: &[usize],
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let fraction = if test_fraction.is_finite() {
        test_fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (index, &label) in labels.iter().enumerate() {
        by_class.entry(label).or_default().push(index);
    }
    // One generator walked through the classes in label order keeps the result a pure function
    // of (labels, fraction, seed).
    let mut rng = SeededRng::seed_from_u64(seed);
    let mut train = Vec::with_capacity(labels.len());
    let mut test = Vec::new();
    for members in by_class.values_mut() {
        members.shuffle(&mut rng);
        let n = members.len();
        let n_test = if n < 2 {
            0
        } else {
            ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
        };
        test.extend_from_slice(&members[..n_test]);
        train.extend_from_slice(&members[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<usize> {
        // 100 of class 0, 50 of class 1, 10 of class 2, 2 of class 3, 1 of class 4, interleaved.
        let mut l = Vec::new();
        l.extend(std::iter::repeat_n(0, 100));
        l.extend(std::iter::repeat_n(1, 50));
        l.extend(std::iter::repeat_n(2, 10));
        l.extend(std::iter::repeat_n(3, 2));
        l.push(4);
        l.reverse();
        l
    }

    fn count(labels: &[usize], idx: &[usize], class: usize) -> usize {
        idx.iter().filter(|&&i| labels[i] == class).count()
    }

    #[test]
    fn keeps_class_proportions_and_covers_every_row_once() {
        let l = labels();
        let (train, test) = stratified_split(&l, 0.2, 7);
        assert_eq!(count(&l, &test, 0), 20);
        assert_eq!(count(&l, &test, 1), 10);
        assert_eq!(count(&l, &test, 2), 2);
        assert_eq!(count(&l, &test, 3), 1);
        assert_eq!(count(&l, &train, 3), 1);
        assert_eq!(count(&l, &test, 4), 0);
        assert_eq!(count(&l, &train, 4), 1);
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
    }

    #[test]
    fn is_deterministic_per_seed_and_varies_across_seeds() {
        let l = labels();
        assert_eq!(stratified_split(&l, 0.3, 42), stratified_split(&l, 0.3, 42));
        assert_ne!(stratified_split(&l, 0.3, 42), stratified_split(&l, 0.3, 43));
    }

    #[test]
    fn extreme_fractions_still_leave_both_sides_populated() {
        let l = labels();
        for fraction in [0.0, 1.0, f64::NAN, -3.0] {
            let (train, test) = stratified_split(&l, fraction, 1);
            for class in 0..4 {
                assert!(count(&l, &train, class) >= 1, "{fraction} {class}");
                assert!(count(&l, &test, class) >= 1, "{fraction} {class}");
            }
        }
        assert_eq!(stratified_split(&[], 0.2, 1), (vec![], vec![]));
    }
}
