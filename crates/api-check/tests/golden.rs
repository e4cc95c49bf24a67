//! The public API of each library crate equals its snapshot in
//! `crates/api-check/snapshots/` (see the crate docs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The library crates whose public API others may depend on.
const LIBRARIES: [&str; 6] = [
    "kproxy-exec",
    "kproxy-graph",
    "kproxy-iptables",
    "kproxy-netlink",
    "kproxy-nftables",
    "kproxy-trace",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The public API of `package`, one item per line, sorted.
fn public_api(package: &str) -> String {
    let root = workspace_root();
    let json = rustdoc_json::Builder::default()
        .manifest_path(root.join("Cargo.toml"))
        .package(package)
        // Its own target directory: RUSTC_BOOTSTRAP must not reach the
        // main build's fingerprints.
        .target_dir(root.join("target/api-check"))
        .env("RUSTC_BOOTSTRAP", "1")
        .quiet(true)
        .build()
        .unwrap_or_else(|e| panic!("rustdoc JSON of {package}: {e}"));
    let api = public_api::Builder::from_rustdoc_json(json)
        .omit_blanket_impls(true)
        .omit_auto_trait_impls(true)
        .build()
        .unwrap_or_else(|e| panic!("public API of {package}: {e}"));
    format!("{api}")
}

#[test]
fn public_api_matches_snapshots() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dir = workspace_root().join("crates/api-check/snapshots");
    let mut differ = Vec::new();
    for package in LIBRARIES {
        let api = public_api(package);
        assert!(
            api.lines().count() > 10,
            "{package}: implausibly small public API:\n{api}"
        );
        let path = dir.join(format!("{package}.txt"));
        if update {
            std::fs::write(&path, &api).expect("write snapshot");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != api {
            let (w, a): (BTreeSet<&str>, BTreeSet<&str>) =
                (want.lines().collect(), api.lines().collect());
            let gone: Vec<&str> = w.difference(&a).copied().collect();
            let new: Vec<&str> = a.difference(&w).copied().collect();
            differ.push(format!(
                "{package} ({}):\n  gone:\n    {}\n  new:\n    {}",
                path.display(),
                gone.join("\n    "),
                new.join("\n    ")
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "public API differs from the snapshots; if intended, rerun with UPDATE_GOLDEN=1 \
         and review the diff:\n{}",
        differ.join("\n")
    );
}
