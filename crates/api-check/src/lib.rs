//! kproxy's public-API snapshots (a test-only crate).
//!
//! `tests/golden.rs` builds the rustdoc JSON of every library crate and
//! compares the list of its public items (every type, field, variant,
//! function and trait with its signature, as the `public-api` crate prints
//! them) with `snapshots/<crate>.txt`. A change to a library's public
//! surface therefore shows up in review as a diff of those files. `make
//! api-check` runs it, `make golden` rewrites the snapshots after an
//! intended change. The crate is a workspace of its own, excluded from
//! kproxy's, so the tools' dependencies and features never reach kproxy's
//! builds.
//!
//! Rustdoc JSON is still unstable: the test asks the pinned stable
//! toolchain for it with `RUSTC_BOOTSTRAP=1`, set for that one `cargo
//! rustdoc` run (in its own target directory, so the rest of the build
//! never sees the variable), and `public-api` is pinned to the version
//! that reads the JSON format this toolchain writes. A toolchain bump that
//! changes the format needs the matching `public-api`.
