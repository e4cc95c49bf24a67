//! Ruleset diffs (filled in below).
