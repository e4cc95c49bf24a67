//! The scenario format (documented in `proto-tests/README.md`): a
//! [`Scenario`] is a node, proxy options, Kubernetes objects, and
//! [`Step`]s of object changes, each followed by [`Probe`]s.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::HarnessError;
use crate::wire::{Proto, Target};

/// The backends kproxy has, by their `--backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendName {
    /// `iptables-legacy`.
    IptablesLegacy,
    /// `iptables-nft`.
    IptablesNft,
    /// `nftables`.
    Nftables,
}

impl BackendName {
    /// Every backend.
    pub const ALL: [BackendName; 3] = [
        BackendName::IptablesLegacy,
        BackendName::IptablesNft,
        BackendName::Nftables,
    ];

    /// The `--backend` name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendName::IptablesLegacy => "iptables-legacy",
            BackendName::IptablesNft => "iptables-nft",
            BackendName::Nftables => "nftables",
        }
    }

    /// Whether a key of a per-backend map (`iptables` covers both
    /// iptables flavours) names this backend.
    pub fn matches_key(self, key: &str) -> bool {
        key == self.as_str()
            || (key == "iptables"
                && matches!(self, BackendName::IptablesLegacy | BackendName::IptablesNft))
    }

    /// Parse a `--backend` name.
    pub fn parse(s: &str) -> Option<BackendName> {
        BackendName::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (defaults to the file stem).
    #[serde(default)]
    pub name: String,
    /// What the scenario shows (free text).
    #[serde(default)]
    pub description: String,
    /// The node kproxy runs on.
    pub node: NodeSpec,
    /// KubeProxyConfiguration keys (clusterCIDR, nodePortAddresses,
    /// masqueradeAll, ...); `hostnameOverride` is set to the node name.
    #[serde(default)]
    pub proxy: serde_yaml_ng::Mapping,
    /// Kubernetes objects, inline (a list of objects; `kind: List` items
    /// are expanded).
    #[serde(default)]
    pub objects: Vec<Value>,
    /// Kubernetes YAML files, relative to the scenario file, added to `objects`.
    #[serde(default)]
    pub objects_files: Vec<PathBuf>,
    /// Extra arguments for `kproxy run` (flags with no KubeProxyConfiguration
    /// key, e.g. `--service-cidr`).
    #[serde(default)]
    pub kproxy_args: Vec<String>,
    /// The backends this scenario applies to; all when absent.
    #[serde(default)]
    pub backends: Option<Vec<BackendName>>,
    /// Mark the whole scenario as failing for a known reason: a string (every
    /// backend) or a map from backend (`iptables` = both flavours) to reason.
    #[serde(default)]
    pub known_failure: Option<PerBackend<String>>,
    /// The probes run after the first sync.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Later steps: object changes, a new sync, more probes.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Where the file was read from (set by [`Scenario::load`]).
    #[serde(skip)]
    pub path: PathBuf,
}

/// The node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's name (`--node-name`, `hostnameOverride`).
    pub name: String,
    /// Its IPs, primary first per family. Default: the InternalIP addresses
    /// of the Node object of that name. A Node object is added when the
    /// objects have none.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Extra local addresses that are not node IPs in Kubernetes (e.g. an
    /// alternate interface address for nodePortAddresses tests).
    #[serde(default)]
    pub extra_ips: Vec<IpAddr>,
}

/// A step after the first: apply and delete objects, sync again, probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step does (free text).
    #[serde(default)]
    pub name: String,
    /// Objects added, or replacing the object of the same kind, namespace and name.
    #[serde(default)]
    pub apply: Vec<Value>,
    /// Objects removed.
    #[serde(default)]
    pub delete: Vec<ObjectRef>,
    /// Probes after the sync.
    #[serde(default)]
    pub probes: Vec<Probe>,
}

/// Names one object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// `Service`, `EndpointSlice` or `Node`.
    pub kind: String,
    /// Namespace (empty for Nodes).
    #[serde(default)]
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Either one value for every backend or a map keyed by backend name
/// (`iptables-legacy`, `iptables-nft`, `nftables`, or `iptables` for both
/// iptables flavours).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBackend<T> {
    /// One value for every backend.
    All(T),
    /// Per backend; a backend without an entry has no value.
    By(BTreeMap<String, T>),
}

impl<T> PerBackend<T> {
    /// The value for `b`: the exact name wins over `iptables`.
    pub fn get(&self, b: BackendName) -> Option<&T> {
        match self {
            PerBackend::All(v) => Some(v),
            PerBackend::By(m) => m
                .get(b.as_str())
                .or_else(|| m.iter().find(|(k, _)| b.matches_key(k)).map(|(_, v)| v)),
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            PerBackend::All(_) => vec![],
            PerBackend::By(m) => m.keys().map(String::as_str).collect(),
        }
    }
}

/// One probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// `node`, `node:<ip>` (bound to a node address), `pod:<ip>` or `external:<ip>`.
    pub from: String,
    /// `<ip>:<port>/<proto>`.
    pub to: String,
    /// Connections (fresh source port each); default depends on `expect`.
    #[serde(default)]
    pub count: Option<u32>,
    /// What must happen.
    pub expect: PerBackend<Expect>,
    /// Bind this source port (every attempt reuses it, so UDP attempts share
    /// one conntrack entry across steps: stale-flow clean-up is tested).
    #[serde(default)]
    pub source_port: Option<u16>,
    /// Every connection must reach the same endpoint (session affinity).
    #[serde(default)]
    pub sticky: bool,
    /// Only on these backends (`iptables` = both flavours).
    #[serde(default)]
    pub backends: Option<Vec<String>>,
    /// Only when rules are applied this way: `run` (kproxy run --once),
    /// `daemon` (a long-running kproxy run), `render`. Health-check node
    /// ports, for one, exist only while the daemon runs.
    #[serde(default)]
    pub modes: Option<Vec<String>>,
    /// A known failure: the probe is run and reported, but does not fail the run.
    #[serde(default)]
    pub known_failure: Option<PerBackend<String>>,
    /// Free text shown in the report.
    #[serde(default)]
    pub note: String,
}

/// An expected outcome.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    /// `reject`, `drop` or `no-match`.
    Simple(SimpleExpect),
    /// Answered by these endpoints.
    Endpoints(EndpointsExpect),
    /// An HTTP answer with this status (`GET /`; health-check node ports).
    Http(HttpExpect),
}

/// An HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpExpect {
    /// The status code every attempt must get.
    pub http: u16,
    /// Text the first body line must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
}

/// Outcomes without endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimpleExpect {
    /// Connection refused / ICMP unreachable.
    Reject,
    /// No answer at all.
    Drop,
    /// The sink answered: the proxy did not touch the packet.
    NoMatch,
}

/// Answered by endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsExpect {
    /// Every answer comes from one of these `ip:port`; with enough
    /// connections every one of them answers.
    pub endpoints: Vec<SocketAddr>,
    /// Whether the endpoint sees a source other than the client's own
    /// address (masqueraded); unchecked when absent.
    #[serde(default)]
    pub masquerade: Option<bool>,
}

/// Where a probe comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The node itself; source address chosen by the kernel.
    Node,
    /// The node, bound to one of its addresses.
    NodeAddr(IpAddr),
    /// A pod (a local or remote endpoint, or a client pod on this node).
    Pod(IpAddr),
    /// A client outside the cluster, on the node's external link.
    External(IpAddr),
}

impl Source {
    /// Parse `node`, `node:<ip>`, `pod:<ip>`, `external:<ip>`.
    pub fn parse(s: &str) -> Result<Source, String> {
        if s == "node" {
            return Ok(Source::Node);
        }
        let (kind, ip) = s.split_once(':').ok_or_else(|| {
            format!("from {s:?}: want node, node:<ip>, pod:<ip> or external:<ip>")
        })?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|e| format!("from {s:?}: bad address {ip:?}: {e}"))?;
        match kind {
            "node" => Ok(Source::NodeAddr(ip)),
            "pod" => Ok(Source::Pod(ip)),
            "external" => Ok(Source::External(ip)),
            _ => Err(format!(
                "from {s:?}: unknown source kind {kind:?} (node, pod or external)"
            )),
        }
    }
}

/// One endpoint address the topology must host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHost {
    /// The address.
    pub ip: IpAddr,
    /// On this node (nodeName equals the node's name).
    pub local: bool,
    /// Ports to serve.
    pub ports: Vec<(u16, Proto)>,
}

impl Scenario {
    /// Read and check a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, HarnessError> {
        let text = std::fs::read_to_string(path).map_err(|e| HarnessError::Scenario {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut s: Scenario =
            serde_yaml_ng::from_str(&text).map_err(|e| HarnessError::Scenario {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        s.path = path.to_path_buf();
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map(|x| x.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let files = std::mem::take(&mut s.objects_files);
        for f in &files {
            let p = base.join(f);
            let t = std::fs::read_to_string(&p).map_err(|e| HarnessError::Scenario {
                path: path.to_path_buf(),
                message: format!("objects_files: {}: {e}", p.display()),
            })?;
            for doc in serde_yaml_ng::Deserializer::from_str(&t) {
                let v = Value::deserialize(doc).map_err(|e| HarnessError::Scenario {
                    path: path.to_path_buf(),
                    message: format!("objects_files: {}: {e}", p.display()),
                })?;
                s.objects.push(v);
            }
        }
        s.objects = expand_lists(std::mem::take(&mut s.objects));
        for st in &mut s.steps {
            st.apply = expand_lists(std::mem::take(&mut st.apply));
        }
        s.objects_files = files;
        s.check().map_err(|message| HarnessError::Scenario {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        if self.node.name.is_empty() {
            return Err("node.name is empty".into());
        }
        for o in self
            .objects
            .iter()
            .chain(self.steps.iter().flat_map(|s| &s.apply))
        {
            object_key(o).ok_or_else(|| {
                format!(
                    "object without kind or metadata.name: {}",
                    serde_yaml_ng::to_string(o).unwrap_or_default()
                )
            })?;
        }
        if self.node_ips().is_empty() {
            return Err(format!(
                "node {:?} has no IPs: set node.ips or add a Node object with InternalIP addresses",
                self.node.name
            ));
        }
        let mut all = self.probes.iter().map(|p| (0, p)).collect::<Vec<_>>();
        for (i, s) in self.steps.iter().enumerate() {
            all.extend(s.probes.iter().map(|p| (i + 1, p)));
        }
        for (step, p) in all {
            let at = format!("step {step}, probe from {} to {}", p.from, p.to);
            Source::parse(&p.from).map_err(|e| format!("{at}: {e}"))?;
            p.to.parse::<Target>()
                .map_err(|e| format!("{at}: to: {e}"))?;
            for k in p
                .expect
                .keys()
                .into_iter()
                .chain(p.known_failure.iter().flat_map(|k| k.keys()))
                .chain(p.backends.iter().flatten().map(String::as_str))
            {
                if k != "iptables" && BackendName::parse(k).is_none() {
                    return Err(format!(
                        "{at}: unknown backend {k:?} (iptables-legacy, iptables-nft, nftables or iptables)"
                    ));
                }
            }
            for m in p.modes.iter().flatten() {
                if !["run", "daemon", "render"].contains(&m.as_str()) {
                    return Err(format!("{at}: unknown mode {m:?} (run, daemon or render)"));
                }
            }
            if let PerBackend::By(m) = &p.expect
                && m.is_empty()
            {
                return Err(format!("{at}: expect is an empty map"));
            }
        }
        Ok(())
    }

    /// The backends the scenario runs on.
    pub fn backends(&self) -> Vec<BackendName> {
        self.backends
            .clone()
            .unwrap_or_else(|| BackendName::ALL.to_vec())
    }

    /// The node's IPs: `node.ips`, else the InternalIPs of its Node object.
    pub fn node_ips(&self) -> Vec<IpAddr> {
        if !self.node.ips.is_empty() {
            return self.node.ips.clone();
        }
        let mut ips = Vec::new();
        for o in &self.objects {
            if o["kind"].as_str() == Some("Node")
                && o["metadata"]["name"].as_str() == Some(self.node.name.as_str())
                && let Some(addrs) = o["status"]["addresses"].as_sequence()
            {
                for a in addrs {
                    if a["type"].as_str() == Some("InternalIP")
                        && let Some(ip) = a["address"].as_str().and_then(|s| s.parse().ok())
                    {
                        ips.push(ip);
                    }
                }
            }
        }
        ips
    }

    /// The objects in force at each step (step 0 = `objects`).
    pub fn objects_per_step(&self) -> Vec<Vec<Value>> {
        let mut cur = self.objects.clone();
        if !cur.iter().any(|o| {
            o["kind"].as_str() == Some("Node")
                && o["metadata"]["name"].as_str() == Some(&self.node.name)
        }) {
            cur.push(self.node_object());
        }
        let mut out = vec![cur.clone()];
        for s in &self.steps {
            for d in &s.delete {
                cur.retain(|o| object_key(o).as_ref() != Some(d));
            }
            for a in &s.apply {
                let k = object_key(a);
                if let Some(i) = cur.iter().position(|o| object_key(o) == k) {
                    cur[i] = a.clone();
                } else {
                    cur.push(a.clone());
                }
            }
            out.push(cur.clone());
        }
        out
    }

    fn node_object(&self) -> Value {
        let addrs: Vec<String> = self
            .node_ips()
            .iter()
            .map(|ip| format!("{{address: \"{ip}\", type: InternalIP}}"))
            .collect();
        let text = format!(
            "{{apiVersion: v1, kind: Node, metadata: {{name: {n:?}, labels: {{kubernetes.io/hostname: {n:?}}}}}, status: {{addresses: [{a}]}}}}",
            n = self.node.name,
            a = addrs.join(", ")
        );
        serde_yaml_ng::from_str(&text).unwrap_or(Value::Null)
    }

    /// Every endpoint address of every step, with the ports it must serve.
    pub fn endpoint_hosts(&self) -> Vec<EndpointHost> {
        let mut hosts: BTreeMap<IpAddr, EndpointHost> = BTreeMap::new();
        for objs in self.objects_per_step() {
            for o in objs
                .iter()
                .filter(|o| o["kind"].as_str() == Some("EndpointSlice"))
            {
                let mut ports = Vec::new();
                for p in o["ports"].as_sequence().into_iter().flatten() {
                    let Some(port) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                        continue;
                    };
                    let proto = p["protocol"]
                        .as_str()
                        .unwrap_or("TCP")
                        .parse()
                        .unwrap_or(Proto::Tcp);
                    ports.push((port, proto));
                }
                for e in o["endpoints"].as_sequence().into_iter().flatten() {
                    let local = e["nodeName"].as_str() == Some(self.node.name.as_str());
                    for a in e["addresses"].as_sequence().into_iter().flatten() {
                        let Some(ip) = a.as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                            continue;
                        };
                        let h = hosts.entry(ip).or_insert(EndpointHost {
                            ip,
                            local,
                            ports: Vec::new(),
                        });
                        for p in &ports {
                            if !h.ports.contains(p) {
                                h.ports.push(*p);
                            }
                        }
                    }
                }
            }
        }
        hosts.into_values().collect()
    }

    /// Every probe with its step number.
    pub fn all_probes(&self) -> Vec<(usize, &Probe)> {
        let mut v: Vec<(usize, &Probe)> = self.probes.iter().map(|p| (0, p)).collect();
        for (i, s) in self.steps.iter().enumerate() {
            v.extend(s.probes.iter().map(|p| (i + 1, p)));
        }
        v
    }

    /// The KubeProxyConfiguration file for this scenario.
    pub fn config_yaml(&self) -> String {
        let mut m = serde_yaml_ng::Mapping::new();
        m.insert(
            "apiVersion".into(),
            "kubeproxy.config.k8s.io/v1alpha1".into(),
        );
        m.insert("kind".into(), "KubeProxyConfiguration".into());
        m.insert("hostnameOverride".into(), self.node.name.clone().into());
        for (k, v) in &self.proxy {
            m.insert(k.clone(), v.clone());
        }
        serde_yaml_ng::to_string(&Value::Mapping(m)).unwrap_or_default()
    }
}

/// `kind: List` items flattened; nulls (empty documents) dropped.
fn expand_lists(objs: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for o in objs {
        if o.is_null() {
            continue;
        }
        if o["kind"].as_str() == Some("List") {
            out.extend(expand_lists(
                o["items"].as_sequence().cloned().unwrap_or_default(),
            ));
        } else {
            out.push(o);
        }
    }
    out
}

/// The kind, namespace and name of an object.
pub fn object_key(o: &Value) -> Option<ObjectRef> {
    Some(ObjectRef {
        kind: o["kind"].as_str()?.to_string(),
        namespace: o["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        name: o["metadata"]["name"].as_str()?.to_string(),
    })
}

/// The objects as one `kind: List` YAML document.
pub fn objects_yaml(objs: &[Value]) -> String {
    let mut m = serde_yaml_ng::Mapping::new();
    m.insert("apiVersion".into(), "v1".into());
    m.insert("kind".into(), "List".into());
    m.insert("items".into(), Value::Sequence(objs.to_vec()));
    serde_yaml_ng::to_string(&Value::Mapping(m)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Scenario, String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "kproxy-proto-scenario-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&p, text).unwrap();
        let r = Scenario::load(&p).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&p);
        r
    }

    const HEAD: &str = "node: {name: n1, ips: [192.168.0.2]}\n";

    #[test]
    fn good_scenario_loads_with_steps() {
        let s = load(&format!(
            "{HEAD}objects:\n- {{apiVersion: v1, kind: Service, metadata: {{name: a, namespace: x}}}}\n\
             probes:\n- {{from: node, to: 10.0.0.1:80/tcp, expect: drop}}\n\
             steps:\n- delete: [{{kind: Service, namespace: x, name: a}}]\n  \
             probes: [{{from: pod:10.0.0.2, to: '[fd00::1]:53/udp', expect: {{nftables: reject, iptables: no-match}}}}]\n"
        ))
        .unwrap();
        assert_eq!(s.all_probes().len(), 2);
        let per_step = s.objects_per_step();
        // A Node object is added; the Service is gone in step 1.
        assert_eq!(per_step[0].len(), 2);
        assert_eq!(per_step[1].len(), 1);
        let e = s.steps[0].probes[0].expect.get(BackendName::IptablesNft);
        assert_eq!(e, Some(&Expect::Simple(SimpleExpect::NoMatch)));
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        let cases = [
            (
                "probes: [{from: nod, to: 10.0.0.1:80/tcp, expect: drop}]",
                "from \"nod\"",
            ),
            (
                "probes: [{from: node, to: 10.0.0.1:80, expect: drop}]",
                "to:",
            ),
            (
                "probes: [{from: node, to: 10.0.0.1:80/icmp, expect: drop}]",
                "unknown protocol",
            ),
            (
                "probes: [{from: node, to: 10.0.0.1:80/tcp, expect: {nft: drop}}]",
                "unknown backend \"nft\"",
            ),
            (
                "probes: [{from: node, to: 10.0.0.1:80/tcp, expect: drop, modes: [once]}]",
                "unknown mode",
            ),
            (
                "probes: [{from: node, to: 10.0.0.1:80/tcp, expect: drop, colour: red}]",
                "colour",
            ),
        ];
        for (body, want) in cases {
            let err = load(&format!("{HEAD}{body}\n")).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
            assert!(err.contains("scenario "), "{err}");
        }
        let err = load("node: {name: n1}\n").unwrap_err();
        assert!(err.contains("no IPs"), "{err}");
    }
}
