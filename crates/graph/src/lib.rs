//! kproxy's service graph: what one node's Service proxy must implement,
//! decided once for every backend.
//!
//! - [`Objects`] reads Services, EndpointSlices and Nodes (as Kubernetes
//!   types or their YAML/JSON text);
//! - [`ServiceGraph::build`] validates and normalises them for one node and
//!   [`ProxyConfig`]: per family ([`FamilyGraph`]), one [`ServicePort`] per
//!   Service port with its [`Endpoint`]s and the [`Decisions`] of endpoint
//!   selection (cluster and local endpoint sets, terminating fallback,
//!   topology, REJECT versus DROP, firewall, masquerading);
//! - [`ServiceGraph::builder`] builds the same graph from service ports
//!   described in code ([`ServicePort::builder`]), for controllers and
//!   tests that have no Kubernetes objects;
//! - [`IncrementalGraph`] keeps the objects indexed by Service and
//!   rebuilds only the Services a change touches, with the same result;
//! - [`ChangeSet::between`] says which service ports changed between two
//!   graphs, from per-service fingerprints, for incremental syncs;
//! - [`backend`] holds the traits every backend implements: a pure
//!   [`Generator`] and [`Render`], a kernel-facing [`Transport`], and the
//!   daemon's [`Backend`] handle.
//!
//! The crate is pure: no async runtime, no Kubernetes client, no processes,
//! no kernel access. Bad input never panics: the offending item is skipped
//! and reported as a [`Warning`].

#![deny(missing_docs)]

pub mod backend;
pub mod builder;
pub mod by_name;
pub mod changes;
pub mod config;
pub mod display;
pub mod incremental;
pub mod intake;
pub mod model;
pub(crate) mod select;
pub mod warning;

pub use backend::{
    ApplyError, Backend, BackendKind, DryRun, DryRunSink, GenError, Generator, Recording, Render,
    SyncStats, TableRules, Transport,
};
pub use builder::{BuildError, ServiceGraphBuilder, ServicePortBuilder};
pub use changes::{ChangeSet, FamilyChanges};
pub use config::{
    DetectLocalMode, KubeProxyConfiguration, NodePortAddress, ProxyConfig, ProxyMode,
};
pub use incremental::IncrementalGraph;
pub use intake::{IntakeError, Objects, input_files, is_input_name};
pub use model::*;
pub use warning::{ObjectKind, Warning};

#[cfg(test)]
mod tests;
