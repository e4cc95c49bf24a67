//! Getting a step's rules into the node namespace: `kproxy run --once`,
//! rendered rules loaded with `nft -f`/`iptables-restore`, or a fixed
//! script.

use super::*;

/// Apply the objects of one step in the node namespace (see [`Applier`]).
pub fn sync(
    s: &Scenario,
    topo: &Topology,
    objs: &[serde_yaml_ng::Value],
    backend: BackendName,
    cfg: &RunConfig,
) -> Result<(), String> {
    match &cfg.applier {
        Applier::Daemon { .. } => Err("the daemon applier is driven by run_scenario".into()),
        Applier::Nft { script } => topo
            .node
            .exec_input(&["nft", "-f", "-"], Some(script))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Applier::Render { bin } => {
            let src = topo.dir.join("objects");
            std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
            std::fs::write(src.join("objects.yaml"), objects_yaml(objs))
                .map_err(|e| e.to_string())?;
            let config = topo.dir.join("config.yaml");
            std::fs::write(&config, s.config_yaml()).map_err(|e| e.to_string())?;
            let mut c = Command::new(bin);
            c.env("NO_COLOR", "1")
                .args([
                    "render",
                    "--backend",
                    backend.as_str(),
                    "--node-name",
                    &s.node.name,
                ])
                .arg("--config")
                .arg(&config)
                .args(&s.kproxy_args)
                .arg(src.join("objects.yaml"));
            let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{c:?}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            load_rendered(topo, backend, &text, &cfg.proto_bin)
        }
        Applier::Kproxy { bin } => {
            let src = topo.dir.join("objects");
            std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
            std::fs::write(src.join("objects.yaml"), objects_yaml(objs))
                .map_err(|e| e.to_string())?;
            let config = topo.dir.join("config.yaml");
            std::fs::write(&config, s.config_yaml()).map_err(|e| e.to_string())?;
            let mut c = topo.node.command(bin);
            c.env("NO_COLOR", "1")
                .env("XTABLES_LOCKFILE", topo.xtables_lock())
                .args(["run", "--once", "--backend", backend.as_str(), "--source"])
                .arg(&src)
                .arg("--config")
                .arg(&config)
                .args(["--node-name", &s.node.name])
                .args(&s.kproxy_args);
            run_bounded(c, Duration::from_secs(60))
        }
    }
}

/// Load `kproxy render` output into the node namespace.
pub(crate) fn load_rendered(
    topo: &Topology,
    backend: BackendName,
    text: &str,
    proto_bin: &Path,
) -> Result<(), String> {
    let err = |e: crate::HarnessError| e.to_string();
    if backend == BackendName::Nftables {
        return topo
            .node
            .exec_input(&["nft", "-f", "-"], Some(text))
            .map(|_| ())
            .map_err(err);
    }
    let flavour = if backend == BackendName::IptablesLegacy {
        "legacy"
    } else {
        "nft"
    };
    let bin = proto_bin.to_string_lossy();
    topo.node
        .exec(&[&bin, "sysctl", "net.ipv4.conf.all.route_localnet=1"])
        .map_err(err)?;
    // The render counts into kube-proxy's nfacct counters, which must
    // exist before `-m nfacct` loads (kube-proxy creates them at start).
    if !kproxy_iptables::nfacct::ensure_counters(Some(topo.node.name())) {
        return Err("cannot create the nfacct counters the render matches".into());
    }
    // Sections start with "# IPv4: ..." / "# IPv6: ...".
    let mut sections: Vec<(bool, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("# IPv4") {
            sections.push((false, String::new()));
        } else if line.starts_with("# IPv6") {
            sections.push((true, String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    for (v6, body) in sections {
        let tool = format!(
            "{}-{flavour}-restore",
            if v6 { "ip6tables" } else { "iptables" }
        );
        let lock = format!("XTABLES_LOCKFILE={}", topo.xtables_lock().display());
        topo.node
            .exec_input(&["env", &lock, &tool, "--noflush"], Some(&body))
            .map_err(err)?;
    }
    Ok(())
}

/// Run a command with a deadline; stdout/stderr in the error.
pub(super) fn run_bounded(mut c: Command, limit: Duration) -> Result<(), String> {
    let what = format!("{c:?}");
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: no exit within {}s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
