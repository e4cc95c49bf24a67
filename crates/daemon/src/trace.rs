//! Logging: tracing-subscriber, level from `KPROXY_LOG` then `RUST_LOG`
//! (default `info`), text or JSON lines on standard error.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Install the global subscriber. Calling it twice is harmless (the second
/// call is ignored), which keeps tests simple.
pub fn init(format: LogFormat) {
    let filter = std::env::var("KPROXY_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "info".to_string());
    let mut filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("kproxy: ignoring invalid log filter {filter:?}: {e}");
        EnvFilter::new("info")
    });
    // kube-runtime's watcher warns about every 403 itself; the kube source
    // logs each watcher error once, at a level that knows a just-started
    // API server's transient 403s. A filter that names kube_runtime wins.
    if !filter.to_string().contains("kube_runtime")
        && let Ok(quiet) = "kube_runtime::watcher=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
