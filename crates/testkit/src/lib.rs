//! Test support shared by kproxy's crates:
//! - [`fixtures`] and [`load_fixture`]: the Kubernetes YAML fixtures in
//!   `testdata/fixtures/` with their configurations in `testdata/configs/`;
//! - [`assert_golden`]: compare output with a checked-in golden file, or
//!   rewrite it when `UPDATE_GOLDEN=1` (`make golden`);
//! - [`NetNs`]: a network namespace that is deleted on drop, and
//!   [`in_netns`] to run code inside one; [`run_ok`] runs a command that
//!   must succeed;
//! - [`TempDir`]: a scratch directory removed on drop;
//! - [`echo_server`], [`udp_echo_server`], [`probe`], [`udp_probe`]: echo
//!   servers that answer with the address they were reached on, and the
//!   probes that read it;
//! - [`Topology`]: client, node and pod namespaces wired with veth pairs;
//! - [`mixed_cluster_yaml`] and [`mixed_graph`]: a synthetic cluster of
//!   any size, as YAML and as a graph, for the paths only large inputs
//!   take, and [`tcp_port_name`] for one port;
//! - [`seeded`], [`TestRng`] and [`Draw`]: the randomness of the property
//!   and equivalence tests (`rand`), and [`draws`] and [`proptest_config`]
//!   to drive the same generators from [`proptest`], with shrinking.

mod cluster;
mod echo;
mod netns;
mod random;
mod tempdir;
mod topo;

use std::path::{Path, PathBuf};

pub use cluster::{MIXED_NODE, mixed_cluster_yaml, mixed_graph};
pub use echo::{EchoServer, echo_server, probe, probe_many, udp_echo_server, udp_probe};
pub use netns::{NetNs, in_netns, run_ok};
/// Property tests with shrinking.
pub use proptest;
/// Seeded randomness (`rand::SeedableRng`, `rand::RngExt`).
pub use rand;
pub use random::{
    Draw, Draws, TestRng, check_property, draws, proptest_config, sample_draws, seeded,
};
pub use tempdir::TempDir;
pub use topo::Topology;

use kproxy_graph::{
    KubeProxyConfiguration, Objects, Protocol, ProxyConfig, ProxyMode, ServiceGraph,
    ServicePortName,
};

/// The name of the TCP port `port` of the Service `namespace/name`, as
/// the names in kube-proxy's tests are written.
pub fn tcp_port_name(namespace: &str, name: &str, port: &str) -> ServicePortName {
    ServicePortName::new(namespace, name, port, Protocol::Tcp)
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// `testdata/` in the repository.
pub fn testdata() -> PathBuf {
    repo_root().join("testdata")
}

/// The names of every fixture (`testdata/fixtures/<name>.yaml`), sorted.
pub fn fixtures() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(testdata().join("fixtures"))
        .expect("testdata/fixtures")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "yaml").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}

/// The path of a fixture's objects.
pub fn fixture_path(name: &str) -> PathBuf {
    testdata().join("fixtures").join(format!("{name}.yaml"))
}

/// The configuration of a fixture: `testdata/configs/<name>.yaml` (a
/// KubeProxyConfiguration; `hostnameOverride` names the node), or
/// `testdata/configs/default.yaml` when the fixture has none. `mode` is
/// set afterwards, so one fixture serves every backend.
pub fn fixture_config(name: &str, mode: ProxyMode) -> ProxyConfig {
    let own = testdata().join("configs").join(format!("{name}.yaml"));
    let path = if own.exists() {
        own
    } else {
        testdata().join("configs/default.yaml")
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pc = ProxyConfig::default();
    KubeProxyConfiguration::from_yaml(&text)
        .and_then(|c| c.apply_to(&mut pc))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pc.mode = mode;
    pc
}

/// Build a fixture's graph for the given mode.
pub fn load_fixture(name: &str, mode: ProxyMode) -> ServiceGraph {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Named as in the repository, so warnings (and golden files) do not
    // depend on where it is checked out.
    let (objects, warnings) = Objects::from_yaml(&format!("testdata/fixtures/{name}.yaml"), &text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut g = ServiceGraph::build(&objects, &fixture_config(name, mode));
    g.warnings.extend(warnings);
    g.warnings.sort();
    g
}

/// Compare `actual` with the golden file at `path`. With `UPDATE_GOLDEN=1`
/// the file is (re)written instead. On a difference, panics with a
/// line diff and the hint to run `make golden`.
pub fn assert_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("golden directory");
        }
        if std::fs::read_to_string(path).ok().as_deref() != Some(actual) {
            std::fs::write(path, actual).expect("write golden file");
        }
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "golden file {} missing ({e}); run `make golden`",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "output differs from {} (run `make golden` if the change is intended):\n{}",
            path.display(),
            line_diff(&expected, actual)
        );
    }
}

/// A minimal line diff: lines only in `expected` are `-`, only in `actual`
/// are `+`, in order of first difference (bounded to 80 lines).
pub fn line_diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    let (mut i, mut j, mut shown) = (0, 0, 0);
    while (i < e.len() || j < a.len()) && shown < 80 {
        if i < e.len() && j < a.len() && e[i] == a[j] {
            i += 1;
            j += 1;
            continue;
        }
        // Resynchronise on the next line of `actual` that appears later in `expected`.
        if j < a.len()
            && let Some(k) = e[i..].iter().position(|l| *l == a[j])
        {
            for l in &e[i..i + k] {
                out.push_str(&format!("-{l}\n"));
                shown += 1;
            }
            i += k;
            continue;
        }
        if j < a.len() {
            out.push_str(&format!("+{}\n", a[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{}\n", e[i]));
            i += 1;
        }
        shown += 1;
    }
    out
}
