//! The incremental transaction builder: from the last applied table to the
//! next one, the minimal operations in an order the kernel accepts.
//!
//! Order within one transaction:
//! 1. add new chains (empty), so map elements and rules can jump to them;
//! 2. add new sets and maps;
//! 3. delete elements that are gone or whose value changed;
//! 4. flush chains whose rules changed, and chains that are gone;
//! 5. add the rules of new and changed chains;
//! 6. add new and changed elements (a changed element is delete + add);
//! 7. delete sets that are gone (their users were flushed in step 4).
//!
//! Chains that are gone are only flushed: a chain that a map element
//! referenced cannot be deleted in the transaction that removes the
//! element ("flush now, delete later", as upstream's `staleChains` in
//! pkg/proxy/nftables/proxier.go). [`Plan::stale_chains`]
//! lists them; the backend deletes them in a separate transaction at the
//! start of a later sync ([`delete_stale`]).

use crate::ir::{Element, Family, Op, Table, Transaction};

/// The result of diffing two tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The transaction.
    pub tx: Transaction,
    /// Chains flushed because they are gone; delete them later.
    pub stale_chains: Vec<String>,
    /// Chains (re-)added by this plan: no longer stale.
    pub added_chains: Vec<String>,
}

/// Why two tables cannot be diffed; the caller does a full sync instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    /// The tables are of different families or names.
    #[error("tables differ in family or name")]
    DifferentTables,
    /// A base chain's hook or priority changed (only a full sync changes those).
    #[error("base chain {0} changed its hook")]
    BaseChainChanged(String),
    /// A set's declaration changed (type, flags, timeout, comment): it
    /// must be recreated, which a full sync does.
    #[error("set {0} changed its declaration")]
    SetChanged(String),
}

/// The operations that turn `old` into `new`.
pub fn diff_tables(old: &Table, new: &Table) -> Result<Plan, DiffError> {
    if old.family != new.family || old.name != new.name {
        return Err(DiffError::DifferentTables);
    }
    let (f, t) = (new.fam(), new.name.as_str());
    let mut plan = Plan::default();
    let tx = &mut plan.tx;

    // Validate first, so a refused diff emits nothing.
    for (name, nc) in &new.chains {
        if let Some(oc) = old.chains.get(name)
            && oc.hook != nc.hook
        {
            return Err(DiffError::BaseChainChanged(name.clone()));
        }
    }
    for (name, ns) in &new.sets {
        if let Some(os) = old.sets.get(name)
            && !os.same_decl(ns)
        {
            return Err(DiffError::SetChanged(name.clone()));
        }
    }
    for (name, oc) in &old.chains {
        if oc.hook.is_some() && !new.chains.contains_key(name) {
            return Err(DiffError::BaseChainChanged(name.clone()));
        }
    }

    // 1. New chains.
    for (name, nc) in &new.chains {
        if !old.chains.contains_key(name) {
            tx.push(
                f,
                t,
                Op::AddChain {
                    name: name.clone(),
                    hook: nc.hook.clone(),
                },
            );
            plan.added_chains.push(name.clone());
        }
    }
    // 2. New sets.
    for (name, ns) in &new.sets {
        if !old.sets.contains_key(name) {
            tx.push(f, t, Op::AddSet(ns.decl_only()));
        }
    }
    // 3. Element deletions (in sets that stay).
    for (name, os) in &old.sets {
        let Some(ns) = new.sets.get(name) else {
            continue;
        };
        let gone = os
            .elements
            .iter()
            .filter(|(k, e)| ns.elements.get(*k) != Some(*e))
            .map(|(k, _)| k.clone());
        tx.delete_elements(f, t, name, gone.collect::<Vec<_>>());
    }
    // 4. Flushes.
    let mut changed = Vec::new();
    for (name, oc) in &old.chains {
        match new.chains.get(name) {
            None => {
                tx.push(f, t, Op::FlushChain(name.clone()));
                plan.stale_chains.push(name.clone());
            }
            Some(nc) if nc.rules != oc.rules => {
                tx.push(f, t, Op::FlushChain(name.clone()));
                changed.push(name.clone());
            }
            Some(_) => {}
        }
    }
    // 5. Rules of new and changed chains.
    for (name, nc) in &new.chains {
        if !old.chains.contains_key(name) || changed.contains(name) {
            for r in &nc.rules {
                tx.push(
                    f,
                    t,
                    Op::AddRule {
                        chain: name.clone(),
                        rule: r.clone(),
                    },
                );
            }
        }
    }
    // 6. Element additions: data maps before verdict maps, as in a full load.
    let mut data = Vec::new();
    let mut verdict = Vec::new();
    for (name, ns) in &new.sets {
        let os = old.sets.get(name);
        let added: Vec<(String, Element)> = ns
            .elements
            .iter()
            .filter(|(k, e)| os.and_then(|o| o.elements.get(*k)) != Some(*e))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        if added.is_empty() {
            continue;
        }
        if matches!(&ns.set_type, crate::ir::SetType::Type(ty) if ty.ends_with(": verdict")) {
            verdict.push((name.clone(), added));
        } else {
            data.push((name.clone(), added));
        }
    }
    for (name, els) in data.into_iter().chain(verdict) {
        tx.add_elements(f, t, &name, els);
    }
    // 7. Sets that are gone.
    for (name, os) in &old.sets {
        if !new.sets.contains_key(name) {
            tx.push(
                f,
                t,
                Op::DeleteSet {
                    name: name.clone(),
                    map: os.map,
                },
            );
        }
    }
    Ok(plan)
}

/// The separate transaction that deletes chains flushed by an earlier one.
pub fn delete_stale<'a>(
    table: &str,
    chains: impl IntoIterator<Item = &'a (Family, String)>,
) -> Transaction {
    let mut tx = Transaction::new();
    for (f, c) in chains {
        tx.push(*f, table, Op::DeleteChain(c.clone()));
    }
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Chain, Rule, Set, SetType};
    use std::collections::BTreeMap;

    fn table(chains: &[(&str, &[&str])], elems: &[(&str, &str)]) -> Table {
        let mut t = Table::new(Family::Ip, "kproxy", None);
        for (n, rules) in chains {
            t.chains.insert(
                n.to_string(),
                Chain::new(*n, rules.iter().map(|r| Rule::new(*r)).collect()),
            );
        }
        let mut s = Set {
            name: "m".into(),
            map: true,
            set_type: SetType::Type("inet_service : verdict".into()),
            flags: vec![],
            timeout: None,
            size: None,
            comment: None,
            elements: BTreeMap::new(),
        };
        for (k, v) in elems {
            s.elements.insert(
                k.to_string(),
                Element {
                    value: Some(v.to_string()),
                    comment: None,
                },
            );
        }
        t.sets.insert("m".into(), s);
        t
    }

    #[test]
    fn orders_operations_for_the_kernel() {
        let old = table(
            &[("a", &["accept"]), ("b", &["drop"])],
            &[("80", "goto a"), ("81", "goto b")],
        );
        let new = table(
            &[("a", &["drop"]), ("c", &["accept"])],
            &[("80", "goto c"), ("82", "goto a")],
        );
        let plan = diff_tables(&old, &new).unwrap();
        assert_eq!(
            plan.tx.render(),
            "add chain ip kproxy c\n\
             delete element ip kproxy m { 80, 81 }\n\
             flush chain ip kproxy a\n\
             flush chain ip kproxy b\n\
             add rule ip kproxy a drop\n\
             add rule ip kproxy c accept\n\
             add element ip kproxy m { 80 : goto c, 82 : goto a }\n"
        );
        assert_eq!(plan.stale_chains, vec!["b".to_string()]);
        assert_eq!(plan.added_chains, vec!["c".to_string()]);
    }

    #[test]
    fn identical_tables_need_nothing() {
        let t = table(&[("a", &["accept"])], &[("80", "goto a")]);
        assert!(diff_tables(&t, &t).unwrap().tx.is_empty());
    }
}
