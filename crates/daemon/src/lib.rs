//! kproxy-daemon: the node daemon and the offline tools behind the
//! `kproxy` binary, as a library (the binary is a thin `main`).
//!
//! Modules: [`cli`] (arguments), [`input`] (YAML input and configuration),
//! [`settings`] (flags over the KubeProxyConfiguration file),
//! [`backends`] (construction and `auto` selection: the one place that
//! names the backends), [`render`] (offline `graph` and `render`),
//! [`daemon`] (`run`), [`source`] (API and file sources), [`reconcile`]
//! (the sync loop), [`hostaddrs`], [`health`], [`hcports`], [`metrics`],
//! [`http`], [`state`], [`conntrack`], [`sysctl`], [`cleanup`], [`trace`],
//! [`cmd_trace`], [`cmd_diff`].

pub mod backends;
pub mod cleanup;
pub mod cli;
pub mod cmd_diff;
pub mod cmd_trace;
pub mod conntrack;
pub mod daemon;
pub mod hcports;
pub mod health;
pub mod hostaddrs;
pub mod http;
pub mod input;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod settings;
pub mod source;
pub mod state;
pub mod sysctl;
pub mod trace;
