//! The cluster the events run on: the objects the daemons read, the
//! topology, and the flows the client loops drive.

use super::*;

pub(super) fn node_object() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
           "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
           "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()}]}})
}

pub(super) fn service(name: &str, vip: Ipv4Addr, node_ports: bool) -> Value {
    let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP",
                                "targetPort": TARGET_PORT})];
    if node_ports {
        ports = vec![
            json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": TARGET_PORT,
                   "nodePort": NODE_PORT_TCP}),
            json!({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": TARGET_PORT,
                   "nodePort": NODE_PORT_UDP}),
        ];
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "live"},
           "spec": {"type": if node_ports { "NodePort" } else { "ClusterIP" },
                    "clusterIP": vip.to_string(), "clusterIPs": [vip.to_string()],
                    "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                    "externalTrafficPolicy": "Cluster",
                    "ports": ports}})
}

pub(super) fn slice(service: &str, eps: &[(Ipv4Addr, &str)], udp: bool) -> Value {
    let mut ports = vec![json!({"name": "http", "port": TARGET_PORT, "protocol": "TCP"})];
    if udp {
        ports.push(json!({"name": "dns", "port": TARGET_PORT, "protocol": "UDP"}));
    }
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-live"), "namespace": "live",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "endpoints": eps.iter().map(|(ip, node)| json!({
               "addresses": [ip.to_string()],
               "conditions": {"ready": true, "serving": true, "terminating": false},
               "nodeName": node})).collect::<Vec<_>>(),
           "ports": ports})
}

/// The objects before the outage's changes.
pub(super) fn objects_before() -> Vec<Value> {
    vec![
        node_object(),
        service("web", WEB_VIP, true),
        slice(
            "web",
            &[(WEB_LOCAL, NODE), (WEB_REMOTE, "other-node")],
            true,
        ),
        service("api", API_VIP, false),
        slice(
            "api",
            &[(API_A, "other-node"), (API_GONE, "other-node")],
            false,
        ),
    ]
}

/// The changes made while the API server is away: an endpoint of `api`
/// removed, one added, a new Service `fresh` with its endpoint.
pub(super) fn outage_changes() -> Vec<Value> {
    vec![
        slice(
            "api",
            &[(API_A, "other-node"), (API_NEW, "other-node")],
            false,
        ),
        service("fresh", FRESH_VIP, false),
        slice("fresh", &[(FRESH_EP, "other-node")], false),
    ]
}

/// Whether the kernel's rules hold every outage change (and no longer
/// the removed endpoint).
pub(super) fn has_outage_changes(rules: &str) -> bool {
    let has = |ip: Ipv4Addr| rules.contains(&ip.to_string());
    has(API_NEW) && !has(API_GONE) && has(FRESH_VIP) && has(FRESH_EP)
}

pub(super) fn topology_spec() -> TopologySpec {
    let both = vec![(TARGET_PORT, Proto::Tcp), (TARGET_PORT, Proto::Udp)];
    TopologySpec {
        node_ips: vec![IpAddr::V4(NODE_IP)],
        local_pods: vec![
            (IpAddr::V4(WEB_LOCAL), both.clone()),
            (IpAddr::V4(CLIENT_POD), Vec::new()),
        ],
        remote: [WEB_REMOTE, API_A, API_GONE, API_NEW, FRESH_EP]
            .into_iter()
            .map(|ip| (IpAddr::V4(ip), both.clone()))
            .collect(),
        external: vec![IpAddr::V4(EXTERNAL)],
        ..TopologySpec::default()
    }
}

pub(super) fn target(ip: Ipv4Addr, port: u16, proto: Proto) -> Target {
    Target {
        addr: SocketAddr::new(IpAddr::V4(ip), port),
        proto,
    }
}

/// One client connection loop.
#[derive(Debug, Clone)]
pub struct Flow {
    /// `pod 10.244.0.20 -> ClusterIP 10.96.0.10:80/tcp`.
    pub name: String,
    /// The namespace the client runs in.
    pub ns: String,
    /// Its source address.
    pub bind: IpAddr,
    /// Where it connects.
    pub to: Target,
    /// The endpoints that may answer.
    pub endpoints: BTreeSet<IpAddr>,
}

pub(super) struct Flows {
    pub(super) new: Vec<Flow>,
    pub(super) held: Vec<Flow>,
}

pub(super) fn flows(topo: &Topology) -> Flows {
    let pod = topo.pods[1].1.name().to_string();
    let ext = topo.ext.name().to_string();
    let web: BTreeSet<IpAddr> = [WEB_LOCAL, WEB_REMOTE]
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    let api: BTreeSet<IpAddr> = [API_A, API_GONE, API_NEW]
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    let flow =
        |who: &str, ns: &str, bind: Ipv4Addr, kind: &str, to: Target, eps: &BTreeSet<IpAddr>| {
            Flow {
                name: format!("{who} {bind} -> {kind} {to}"),
                ns: ns.to_string(),
                bind: IpAddr::V4(bind),
                to,
                endpoints: eps.clone(),
            }
        };
    let cip_tcp = target(WEB_VIP, 80, Proto::Tcp);
    let cip_udp = target(WEB_VIP, 53, Proto::Udp);
    let np_tcp = target(NODE_IP, NODE_PORT_TCP, Proto::Tcp);
    let np_udp = target(NODE_IP, NODE_PORT_UDP, Proto::Udp);
    Flows {
        new: vec![
            flow("pod", &pod, CLIENT_POD, "ClusterIP", cip_tcp, &web),
            flow("pod", &pod, CLIENT_POD, "NodePort", np_tcp, &web),
            flow("external", &ext, EXTERNAL, "NodePort", np_tcp, &web),
            flow(
                "pod",
                &pod,
                CLIENT_POD,
                "ClusterIP",
                target(API_VIP, 80, Proto::Tcp),
                &api,
            ),
        ],
        held: vec![
            flow("pod", &pod, CLIENT_POD, "ClusterIP", cip_tcp, &web),
            flow("pod", &pod, CLIENT_POD, "ClusterIP", cip_udp, &web),
            flow("pod", &pod, CLIENT_POD, "NodePort", np_tcp, &web),
            flow("external", &ext, EXTERNAL, "NodePort", np_tcp, &web),
            flow("external", &ext, EXTERNAL, "NodePort", np_udp, &web),
        ],
    }
}
