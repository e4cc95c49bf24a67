//! Randomness for the property and equivalence tests: seeded generators,
//! and proptest strategies that drive the same generators with shrinking.

use std::convert::Infallible;

use proptest::prelude::*;

/// The generator of kproxy's randomised tests, which the test generators
/// draw from (through [`Draw`]): either seeded (xoshiro256++ from `rand`,
/// a named algorithm whose output for a seed does not change with the
/// platform; make one with [`seeded`]) or a recorded list of draws from
/// proptest ([`draws`]), which proptest shrinks.
#[derive(Debug, Clone)]
pub enum TestRng {
    /// Seeded: the same seed gives the same cases on every machine.
    Seeded(rand::rngs::Xoshiro256PlusPlus),
    /// The draws proptest chose, in order; 0 once they run out. Shrinking
    /// the list (fewer, smaller draws) makes every draw the generators
    /// make smaller: fewer Services, ports and endpoints, the first of
    /// each list of choices.
    Draws(Draws),
}

/// A [`TestRng`] from a seed: the same seed gives the same cases on every
/// machine, so a failure that names its seed is reproducible.
pub fn seeded(seed: u64) -> TestRng {
    use rand::SeedableRng as _;
    TestRng::Seeded(rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed))
}

/// Recorded draws (see [`TestRng::Draws`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draws {
    words: Vec<u64>,
    next: usize,
}

impl Draws {
    fn word(&mut self) -> u64 {
        let w = self.words.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        w
    }
}

/// A proptest strategy of [`TestRng`]s that make up to `max` draws each
/// before the rest are 0: the test generators, handed one, build a random
/// case that proptest can shrink. A property `fn p(r in draws(4096))`
/// calls the same generator as a seed loop did with `seeded(seed)`.
pub fn draws(max: usize) -> impl Strategy<Value = TestRng> {
    proptest::collection::vec(any::<u64>(), 0..=max)
        .prop_map(|words| TestRng::Draws(Draws { words, next: 0 }))
}

/// `count` values of [`draws`]`(max)` from proptest's deterministic
/// runner, the same on every run: for checks over many generated cases
/// that no single case decides (that the generator is exercised at all).
pub fn sample_draws(count: usize, max: usize) -> Vec<TestRng> {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = draws(max);
    (0..count)
        .filter_map(|_| strategy.new_tree(&mut runner).ok())
        .map(|t| t.current())
        .collect()
}

/// The configuration of a property test: `default` cases, or
/// `KPROXY_PROPTEST_CASES` when set (for longer runs); failures are
/// recorded under the crate's `proptest-regressions/` and run first next
/// time.
pub fn proptest_config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("KPROXY_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        ..ProptestConfig::default()
    }
}

/// Run the property `test` on `cases` values of `strategy` (or
/// `KPROXY_PROPTEST_CASES`), as `proptest!` does but inside a test that
/// sets up what every case shares (a network namespace, say) once.
/// `source_file` is the test's `file!()`: failures are recorded next to
/// it and run first next time. Panics with the shrunk failing case.
pub fn check_property<S>(
    source_file: &'static str,
    cases: u32,
    strategy: &S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let mut config = proptest_config(cases);
    config.source_file = Some(source_file);
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(e) = runner.run(strategy, test) {
        panic!("{e}\n{runner}");
    }
}

impl rand::TryRng for TestRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(match self {
            TestRng::Seeded(r) => rand::Rng::next_u32(r),
            // The low half: a shrunk (small) word is a small draw.
            TestRng::Draws(d) => d.word() as u32,
        })
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(match self {
            TestRng::Seeded(r) => rand::Rng::next_u64(r),
            TestRng::Draws(d) => d.word(),
        })
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        match self {
            TestRng::Seeded(r) => rand::Rng::fill_bytes(r, dst),
            TestRng::Draws(d) => {
                for chunk in dst.chunks_mut(8) {
                    chunk.copy_from_slice(&d.word().to_le_bytes()[..chunk.len()]);
                }
            }
        }
        Ok(())
    }
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

    #[test]
    fn recorded_draws_replay_and_shrink_toward_the_smallest() {
        use proptest::strategy::ValueTree as _;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let mut tree = draws(64).new_tree(&mut runner).unwrap();
        let pick = |mut r: TestRng| (0..32).map(|_| r.below(1000)).collect::<Vec<_>>();
        let first = pick(tree.current());
        // The same recorded draws give the same values.
        assert_eq!(pick(tree.current()), first);
        // Shrinking as far as it goes leaves only zeros (and no draws).
        while tree.simplify() {}
        assert_eq!(pick(tree.current()), vec![0; 32]);
        assert_ne!(first, vec![0; 32]);
        // Past the recorded draws every draw is the smallest.
        let mut r = TestRng::Draws(Draws {
            words: vec![u64::MAX],
            next: 0,
        });
        assert_eq!((r.below(10), r.below(10), r.index(7)), (9, 0, 0));
    }
}
