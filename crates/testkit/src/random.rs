//! Seeded randomness for the property and equivalence tests.

/// The seeded generator of kproxy's randomised tests: xoshiro256++ from
/// `rand`, a named algorithm whose output for a seed does not change with
/// the platform. Make one with [`seeded`].
pub type TestRng = rand::rngs::Xoshiro256PlusPlus;

/// A [`TestRng`] from a seed: the same seed gives the same cases on every
/// machine, so a failure that names its seed is reproducible.
pub fn seeded(seed: u64) -> TestRng {
    use rand::SeedableRng as _;
    TestRng::seed_from_u64(seed)
}

/// The draws the test generators make, in their words, on top of `rand`
/// (any `rand::Rng`, e.g. [`TestRng`]).
pub trait Draw: rand::RngExt {
    /// An index in `0..n` (0 when `n` is 0).
    fn index(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { self.random_range(0..n) }
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.random_range(0..n) }
    }

    /// True with the given chance, in percent (100 and over: always).
    fn chance(&mut self, percent: u32) -> bool {
        self.random_ratio(percent.min(100), 100)
    }

    /// True with probability `p` (0.0 to 1.0).
    fn with_probability(&mut self, p: f64) -> bool {
        self.random_bool(p.clamp(0.0, 1.0))
    }

    /// One of `items`, which must not be empty.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        use rand::seq::IndexedRandom as _;
        items.choose(self).expect("pick from an empty slice")
    }
}

impl<R: rand::Rng + ?Sized> Draw for R {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_reproducible_and_draws_stay_in_range() {
        let (mut a, mut b) = (seeded(7), seeded(7));
        let xs: Vec<usize> = (0..50).map(|_| a.index(5)).collect();
        let ys: Vec<usize> = (0..50).map(|_| b.index(5)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 5));
        let mut seen = [false; 5];
        for x in xs {
            seen[x] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
        let mut c = seeded(8);
        assert_ne!(
            (0..8).map(|_| c.below(1 << 40)).collect::<Vec<_>>(),
            (0..8).map(|_| b.below(1 << 40)).collect::<Vec<_>>()
        );
        assert_eq!((a.index(0), a.below(0)), (0, 0));
        assert!(!a.chance(0) && a.chance(100) && a.chance(250));
        assert!(!a.with_probability(0.0) && a.with_probability(1.0));
        assert_eq!(*a.pick(&[42]), 42);
        let hits = (0..10_000).filter(|_| a.chance(25)).count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
    }
}
