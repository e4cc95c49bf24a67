//! In-place edits of a chain the kernel already holds: [`edit_script`]
//! turns the rules a chain has into the rules it should have with as few
//! `-D CHAIN n` / `-I CHAIN n` lines as possible ([`ChainEdit`]), Myers'
//! O((N+M)·D) difference algorithm bounded to a maximum edit distance.
//!
//! Why: the top-level chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`) hold one
//! rule per service. kube-proxy rewrites them on every sync; with
//! iptables-nft 1.8.9 under `--noflush` that costs time quadratic in the
//! number of distinct chains the input names (each rule's own chain and
//! jump target go through a sorted linked list in `nft_cache_level_set`),
//! so adding one service to 50,000 would take many seconds. Editing only
//! the rules that changed keeps a sync proportional to the change.

/// One step of an edit script, applied in order. Positions are 1-based
/// and refer to the chain as the previous steps left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainEdit {
    /// `-D CHAIN at`.
    Delete {
        /// Rule number to delete.
        at: usize,
    },
    /// `-I CHAIN at RULE` (or `-A CHAIN RULE` when `at` is one past the
    /// end), where RULE is `new[rule]`.
    Insert {
        /// Rule number the new rule gets.
        at: usize,
        /// Index of the rule in the wanted list.
        rule: usize,
    },
}

/// The edits turning `old` into `new`: deletions from the end backwards
/// (so earlier numbers stay valid), then insertions in ascending order of
/// their final position (so each lands before a rule already in its final
/// place). `None` when more than `max_d` rules would change.
pub fn edit_script<T: PartialEq>(old: &[T], new: &[T], max_d: usize) -> Option<Vec<ChainEdit>> {
    let mut pre = 0;
    while pre < old.len() && pre < new.len() && old[pre] == new[pre] {
        pre += 1;
    }
    let mut suf = 0;
    while suf < old.len() - pre
        && suf < new.len() - pre
        && old[old.len() - 1 - suf] == new[new.len() - 1 - suf]
    {
        suf += 1;
    }
    let a = &old[pre..old.len() - suf];
    let b = &new[pre..new.len() - suf];
    let (deleted, inserted) = myers(a, b, max_d)?;
    let mut edits = Vec::with_capacity(deleted.len() + inserted.len());
    for &i in deleted.iter().rev() {
        edits.push(ChainEdit::Delete { at: pre + i + 1 });
    }
    for &j in &inserted {
        edits.push(ChainEdit::Insert {
            at: pre + j + 1,
            rule: pre + j,
        });
    }
    Some(edits)
}

/// Myers' greedy algorithm: indices of `a` to delete and of `b` to
/// insert, both ascending, or `None` past `max_d` edits.
fn myers<T: PartialEq>(a: &[T], b: &[T], max_d: usize) -> Option<(Vec<usize>, Vec<usize>)> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let limit = (a.len() + b.len()).min(max_d) as isize;
    let off = limit + 1;
    let mut v = vec![0isize; (2 * limit + 3) as usize];
    // trace[d] = v as it was before step d, on diagonals -d..=d.
    let mut trace: Vec<Vec<isize>> = Vec::new();
    let mut end = None;
    'outer: for d in 0..=limit {
        trace.push(v[(off - d) as usize..=(off + d) as usize].to_vec());
        let mut k = -d;
        while k <= d {
            let i = (off + k) as usize;
            let mut x = if k == -d || (k != d && v[i - 1] < v[i + 1]) {
                v[i + 1]
            } else {
                v[i - 1] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[i] = x;
            if x >= n && y >= m {
                end = Some(d);
                break 'outer;
            }
            k += 2;
        }
    }
    let d_end = end?;
    let (mut deleted, mut inserted) = (Vec::new(), Vec::new());
    let (mut x, mut y) = (n, m);
    for d in (1..=d_end).rev() {
        let snap = &trace[d as usize];
        // snap covers diagonals -d..=d of the state before step d, i.e.
        // the furthest points after d-1 edits.
        let at = |k: isize| snap[(k + d) as usize];
        let k = x - y;
        let down = k == -d || (k != d && at(k - 1) < at(k + 1));
        let pk = if down { k + 1 } else { k - 1 };
        let px = at(pk);
        let py = px - pk;
        if down {
            inserted.push(py as usize);
        } else {
            deleted.push(px as usize);
        }
        x = px;
        y = py;
    }
    deleted.reverse();
    inserted.reverse();
    Some((deleted, inserted))
}

/// Apply `edits` to `old` (what the kernel does with the restore lines):
/// for tests and for checking a script before trusting it.
pub fn apply_edits<T: Clone>(old: &[T], new: &[T], edits: &[ChainEdit]) -> Option<Vec<T>> {
    let mut out = old.to_vec();
    for e in edits {
        match *e {
            ChainEdit::Delete { at } => {
                if at == 0 || at > out.len() {
                    return None;
                }
                out.remove(at - 1);
            }
            ChainEdit::Insert { at, rule } => {
                if at == 0 || at > out.len() + 1 {
                    return None;
                }
                out.insert(at - 1, new.get(rule)?.clone());
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(old: &[u32], new: &[u32]) -> usize {
        let e = edit_script(old, new, 1000).expect("script");
        assert_eq!(
            apply_edits(old, new, &e).as_deref(),
            Some(new),
            "{old:?} -> {new:?}: {e:?}"
        );
        e.len()
    }

    #[test]
    fn scripts_turn_old_into_new_with_few_edits() {
        assert_eq!(check(&[], &[]), 0);
        assert_eq!(check(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(check(&[1, 2, 3], &[1, 9, 2, 3]), 1);
        assert_eq!(check(&[1, 2, 3], &[1, 3]), 1);
        assert_eq!(check(&[1, 2, 3], &[]), 3);
        assert_eq!(check(&[], &[4, 5]), 2);
        assert_eq!(check(&[1, 2, 3, 4, 5], &[0, 2, 3, 5, 6, 7]), 5);
        assert_eq!(check(&[1, 2, 3], &[3, 2, 1]), 4);
        let old: Vec<u32> = (0..5000).collect();
        let mut new = old.clone();
        new.insert(2500, 99_999);
        new.remove(10);
        new.push(77_777);
        assert_eq!(check(&old, &new), 3);
    }

    #[test]
    fn random_scripts_are_exact() {
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        for _ in 0..300 {
            let old: Vec<u32> = (0..next(40)).map(|_| next(12) as u32).collect();
            let new: Vec<u32> = (0..next(40)).map(|_| next(12) as u32).collect();
            check(&old, &new);
        }
    }

    #[test]
    fn too_many_edits_give_up() {
        let old: Vec<u32> = (0..100).collect();
        let new: Vec<u32> = (100..200).collect();
        assert!(edit_script(&old, &new, 50).is_none());
        assert!(edit_script(&old, &new, 200).is_some());
    }
}
