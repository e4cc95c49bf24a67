//! Typed warnings for input that intake skipped.

use std::fmt;

/// The kind of Kubernetes object a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A Service.
    Service,
    /// An EndpointSlice.
    EndpointSlice,
    /// A Node.
    Node,
    /// A `networking.k8s.io/v1` ServiceCIDR.
    ServiceCidr,
    /// A document in an input file that is not one of the above.
    Document,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::ServiceCidr => "ServiceCIDR",
            ObjectKind::Document => "document",
        })
    }
}

/// Something in the input that was skipped, and why. The rest of the graph
/// is unaffected. The daemon logs and counts these.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Warning {
    /// The object's kind.
    pub kind: ObjectKind,
    /// `namespace/name` (or just `name` for cluster-scoped objects).
    pub object: String,
    /// The field path (`spec.clusterIPs[1]`).
    pub field: String,
    /// What was wrong and what was done about it.
    pub reason: String,
}

impl Warning {
    pub(crate) fn new(
        kind: ObjectKind,
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Warning {
            kind,
            object: object.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {}",
            self.kind, self.object, self.field, self.reason
        )
    }
}
