//! The in-memory backend: an ordered map per namespace and an undo journal for
//! transactions. For tests and benchmarks; nothing survives the process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use cove_wire::{GroupId, Seq};

use crate::{Kv, KvPair, Namespace, StoreError, query_words, search_words};

type Key = (Namespace, Vec<u8>);

#[derive(Default)]
struct Inner {
    /// One ordered map per namespace (lookups by `&[u8]` without allocating).
    map: BTreeMap<Namespace, BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Old values of keys written in the open transaction, oldest first.
    journal: Option<Vec<(Key, Option<Vec<u8>>)>>,
}

/// A [`crate::Store`] in memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A separate store holding a copy of everything committed in this one (fixtures that
    /// restart from one state, e.g. `cove_core::fuzzing`). Refused inside a transaction.
    pub fn snapshot(&self) -> Result<MemoryStore, StoreError> {
        let inner = self.lock()?;
        if inner.journal.is_some() {
            return Err(StoreError::Transaction("snapshot inside a transaction"));
        }
        Ok(MemoryStore {
            inner: Mutex::new(Inner {
                map: inner.map.clone(),
                journal: None,
            }),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStore")
    }
}

impl Inner {
    fn set(&mut self, (ns, key): Key, value: Option<Vec<u8>>) {
        let space = self.map.entry(ns).or_default();
        match self.journal.as_mut() {
            Some(j) => {
                let old = match value {
                    Some(v) => space.insert(key.clone(), v),
                    None => space.remove(&key),
                };
                j.push(((ns, key), old));
            }
            None => {
                match value {
                    Some(v) => space.insert(key, v),
                    None => space.remove(&key),
                };
            }
        }
    }
}

impl Kv for MemoryStore {
    fn kv_get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.map.get(&ns).and_then(|m| m.get(key)).cloned())
    }

    fn kv_put(&self, ns: Namespace, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.lock()?.set((ns, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn kv_delete(&self, ns: Namespace, key: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner.map.get(&ns).is_some_and(|m| m.contains_key(key)) {
            inner.set((ns, key.to_vec()), None);
        }
        Ok(())
    }

    fn kv_scan_from(
        &self,
        ns: Namespace,
        prefix: &[u8],
        from: &[u8],
    ) -> Result<Vec<KvPair>, StoreError> {
        let inner = self.lock()?;
        let Some(space) = inner.map.get(&ns) else {
            return Ok(Vec::new());
        };
        let start = if from > prefix { from } else { prefix };
        Ok(space
            .range::<[u8], _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn begin(&self) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner.journal.is_some() {
            return Err(StoreError::Transaction("begin inside a transaction"));
        }
        inner.journal = Some(Vec::new());
        Ok(())
    }

    fn commit(&self) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        match inner.journal.take() {
            Some(_) => Ok(()),
            None => Err(StoreError::Transaction("commit without a transaction")),
        }
    }

    fn rollback(&self) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let Some(journal) = inner.journal.take() else {
            return Err(StoreError::Transaction("rollback without a transaction"));
        };
        for ((ns, key), old) in journal.into_iter().rev() {
            let space = inner.map.entry(ns).or_default();
            match old {
                Some(v) => space.insert(key, v),
                None => space.remove(&key),
            };
        }
        Ok(())
    }

    fn in_transaction(&self) -> bool {
        self.lock().map(|i| i.journal.is_some()).unwrap_or(false)
    }

    // The search index is a namespace like any other (so transactions and snapshots cover
    // it): group ‖ seq → text, matched by scanning. Same words as the SQLite backend (see
    // `search_words`), without its folding of diacritics.

    fn text_index(&self, group: &GroupId, seq: Seq, text: &str) -> Result<(), StoreError> {
        self.kv_put(Namespace::TextIndex, &text_key(group, seq), text.as_bytes())
    }

    fn text_unindex(&self, group: &GroupId, seq: Seq) -> Result<(), StoreError> {
        self.kv_delete(Namespace::TextIndex, &text_key(group, seq))
    }

    fn text_search(
        &self,
        query: &str,
        group: Option<&GroupId>,
        limit: usize,
    ) -> Result<Vec<(GroupId, Seq)>, StoreError> {
        let words = query_words(query)?;
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let prefix: &[u8] = group.map(|g| &g.0[..]).unwrap_or(&[]);
        let mut hits = Vec::new();
        for (key, text) in self.kv_scan(Namespace::TextIndex, prefix)? {
            let (Some(g), Some(s)) = (key.get(..16), key.get(16..24)) else {
                return Err(StoreError::Corrupt("text index key".into()));
            };
            let text = String::from_utf8_lossy(&text);
            let tokens: Vec<String> = search_words(&text).collect();
            if words
                .iter()
                .all(|w| tokens.iter().any(|t| t.starts_with(w.as_str())))
            {
                let g: [u8; 16] = g
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("text index key".into()))?;
                let s: [u8; 8] = s
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("text index key".into()))?;
                hits.push((GroupId(g), Seq(u64::from_be_bytes(s))));
            }
        }
        hits.sort_by_key(|h| std::cmp::Reverse((h.1, h.0)));
        hits.truncate(limit);
        Ok(hits)
    }

    fn scrub(&self) -> Result<(), StoreError> {
        if self.in_transaction() {
            return Err(StoreError::Transaction("scrub inside a transaction"));
        }
        Ok(())
    }
}

fn text_key(group: &GroupId, seq: Seq) -> Vec<u8> {
    let mut k = group.0.to_vec();
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

crate::impl_mls_storage!(MemoryStore);
