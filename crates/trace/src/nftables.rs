//! nft tracer (filled in below).
use crate::{Node, Packet, Trace, TraceError, Tracer};
/// nft ruleset.
#[derive(Debug, Clone, Default)]
pub struct NftRuleset {}
impl NftRuleset {
    /// Parse.
    pub fn parse(_text: &str) -> Result<Self, TraceError> {
        Err(TraceError::Invalid("todo".into()))
    }
}
impl Tracer for NftRuleset {
    fn trace(&self, _p: &Packet, _n: &Node) -> Result<Trace, TraceError> {
        Err(TraceError::Invalid("todo".into()))
    }
}
