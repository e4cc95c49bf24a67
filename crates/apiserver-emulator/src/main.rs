//! `kproxy-apiserver-emulator`: serve Services, EndpointSlices, Nodes and
//! ServiceCIDRs from Kubernetes YAML files as a (minimal) Kubernetes API
//! server, so that `kproxy run --source kube` can be tried without a
//! cluster. The files are re-read when they change, and the API follows:
//! objects added, changed and removed become watch events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kproxy_apiserver_emulator::{Emulator, EmulatorError, files};

/// Serve Kubernetes objects from YAML files as an API server (HTTP, no
/// authentication; for tests and demos only).
#[derive(Debug, Parser)]
#[command(name = "kproxy-apiserver-emulator", version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// How often to check the files for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    reload_ms: u64,
    /// Refuse streaming lists (`sendInitialEvents`), as an API server
    /// with the `WatchList` feature gate off does; clients list in pages.
    #[arg(long)]
    no_watch_list: bool,
    /// Kubernetes YAML/JSON files or directories (Services, EndpointSlices,
    /// Nodes and ServiceCIDRs are served; other kinds are skipped).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// A line on stdout; a closed stdout (the reader went away) must not stop
/// the server, so write errors are ignored (println! would panic).
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A line on stderr, as [`say`].
fn complain(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "kproxy-apiserver-emulator: {line}"
    );
}

/// What was last reported, so that a reload every second does not repeat it.
#[derive(Default)]
struct Reported {
    skipped: Vec<String>,
    error: Option<String>,
}

impl Reported {
    fn skipped(&mut self, skipped: Vec<String>) {
        if skipped != self.skipped {
            for s in &skipped {
                complain(&format!("skipped {s} (kind not served)"));
            }
            self.skipped = skipped;
        }
    }

    fn error(&mut self, e: Option<String>) {
        if let Some(e) = &e
            && self.error.as_ref() != Some(e)
        {
            complain(&format!("{e}; keeping the previous objects"));
        }
        self.error = e;
    }
}

async fn run(args: Args) -> Result<(), EmulatorError> {
    let mut reported = Reported::default();
    let (objects, skipped) = files::load_files(&args.files)?;
    reported.skipped(skipped);
    let (emu, addr) = Emulator::start_on(args.listen).await?;
    emu.replace_all(&objects)?;
    emu.set_watch_list(!args.no_watch_list);
    if let Some(path) = &args.kubeconfig {
        emu.write_kubeconfig(path)?;
    }
    say(&format!(
        "serving {} objects on http://{addr}",
        objects.len()
    ));
    let mut last = objects;
    // The first check one period from now: an interval's first tick is at
    // once, and re-reading large files then would hold up the requests
    // of a client that starts right away (the server shares this thread).
    let period = Duration::from_millis(args.reload_ms.max(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        // A file caught half-written does not parse: keep the last good
        // state and try again at the next tick.
        let (objects, skipped) = match files::load_files(&args.files) {
            Ok(loaded) => loaded,
            Err(e) => {
                reported.error(Some(e.to_string()));
                continue;
            }
        };
        reported.skipped(skipped);
        if objects == last {
            reported.error(None);
            continue;
        }
        match emu.replace_all(&objects) {
            Ok(()) => {
                reported.error(None);
                say(&format!(
                    "reloaded: {} objects, resourceVersion {}",
                    objects.len(),
                    emu.resource_version()
                ));
                last = objects;
            }
            Err(e) => reported.error(Some(e.to_string())),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            complain(&e.to_string());
            ExitCode::FAILURE
        }
    }
}
