//! Building transactions: operations, whole tables, element adds and
//! deletes, bounded splits.

use super::{ELEMENTS_PER_STATEMENT, Element, Family, Op, Set, SetType, Table, Transaction};

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Transaction::default()
    }

    /// Append one operation.
    pub fn push(&mut self, family: Family, table: &str, op: Op) {
        self.ops.push((family, table.to_string(), op));
    }

    /// No operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Append every operation of `other`.
    pub fn extend(&mut self, other: Transaction) {
        self.ops.extend(other.ops);
    }

    /// `add table` for `table` (with its comment).
    fn add_table(&mut self, table: &Table) {
        let op = Op::AddTable {
            comment: table.comment.clone(),
        };
        self.push(table.fam(), &table.name, op);
    }

    /// The operations that replace whatever table of this name exists with
    /// `table` (atomically, as one transaction): add (so the delete cannot
    /// fail), delete, then recreate chains, sets, rules and elements.
    pub fn replace_table(table: &Table) -> Transaction {
        let mut tx = Transaction::new();
        tx.add_table(table);
        tx.push(table.fam(), &table.name, Op::DeleteTable);
        tx.extend(Transaction::create_table(table));
        tx
    }

    /// The operations that create `table` from nothing. Chains come first
    /// (map elements jump to them), then sets, rules and elements; the
    /// verdict maps' elements come last so a service is only routed once
    /// its endpoints are in place (this matters when the load is split
    /// into several transactions).
    pub fn create_table(table: &Table) -> Transaction {
        let mut tx = Transaction::new();
        let (f, n) = (table.fam(), table.name.as_str());
        tx.add_table(table);
        for c in table.chains.values() {
            tx.push(
                f,
                n,
                Op::AddChain {
                    name: c.name.clone(),
                    hook: c.hook.clone(),
                },
            );
        }
        for s in table.sets.values() {
            tx.push(f, n, Op::AddSet(s.decl_only()));
        }
        for c in table.chains.values() {
            for r in &c.rules {
                tx.push(
                    f,
                    n,
                    Op::AddRule {
                        chain: c.name.clone(),
                        rule: r.clone(),
                    },
                );
            }
        }
        let verdict_last =
            |s: &&Set| matches!(&s.set_type, SetType::Type(t) if t.ends_with(": verdict"));
        let (verdict, data): (Vec<&Set>, Vec<&Set>) = table.sets.values().partition(verdict_last);
        for s in data.into_iter().chain(verdict) {
            tx.add_elements(
                f,
                n,
                &s.name,
                s.elements.iter().map(|(k, e)| (k.clone(), e.clone())),
            );
        }
        tx
    }

    /// `add element` statements for `elements`, [`ELEMENTS_PER_STATEMENT`]
    /// per statement.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: impl IntoIterator<Item = (String, Element)>,
    ) {
        self.push_batches(family, table, elements, |elements| Op::AddElements {
            set: set.to_string(),
            elements,
        });
    }

    /// `delete element` statements for `keys`.
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        keys: impl IntoIterator<Item = String>,
    ) {
        self.push_batches(family, table, keys, |keys| Op::DeleteElements {
            set: set.to_string(),
            keys,
        });
    }

    /// `items` in statements of at most [`ELEMENTS_PER_STATEMENT`], each
    /// made by `op`.
    fn push_batches<T>(
        &mut self,
        family: Family,
        table: &str,
        items: impl IntoIterator<Item = T>,
        op: impl Fn(Vec<T>) -> Op,
    ) {
        let mut batch = Vec::new();
        for item in items {
            batch.push(item);
            if batch.len() == ELEMENTS_PER_STATEMENT {
                self.push(family, table, op(std::mem::take(&mut batch)));
            }
        }
        if !batch.is_empty() {
            self.push(family, table, op(batch));
        }
    }

    /// Split into transactions of at most `max_elements` elements each
    /// (operations are never reordered; a statement is never split).
    pub fn split(self, max_elements: usize) -> Vec<Transaction> {
        let mut out = Vec::new();
        let mut cur = Transaction::new();
        let mut n = 0usize;
        for (f, t, op) in self.ops {
            let weight = match &op {
                Op::AddElements { elements, .. } => elements.len(),
                Op::DeleteElements { keys, .. } => keys.len(),
                _ => 1,
            };
            if n + weight > max_elements && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
            n += weight;
            cur.ops.push((f, t, op));
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Number of element additions and deletions plus other statements:
    /// what the kernel has to process.
    pub fn weight(&self) -> usize {
        self.ops
            .iter()
            .map(|(_, _, op)| match op {
                Op::AddElements { elements, .. } => elements.len(),
                Op::DeleteElements { keys, .. } => keys.len(),
                _ => 1,
            })
            .sum()
    }
}
