//! The in-memory backend: an ordered map per namespace and an undo journal for
//! transactions. For tests and benchmarks; nothing survives the process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::{Kv, KvPair, Namespace, StoreError};

type Key = (Namespace, Vec<u8>);

#[derive(Default)]
struct Inner {
    map: BTreeMap<Key, Vec<u8>>,
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
    fn set(&mut self, key: Key, value: Option<Vec<u8>>) {
        let old = match value {
            Some(v) => self.map.insert(key.clone(), v),
            None => self.map.remove(&key),
        };
        if let Some(j) = self.journal.as_mut() {
            j.push((key, old));
        }
    }
}

impl Kv for MemoryStore {
    fn kv_get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.map.get(&(ns, key.to_vec())).cloned())
    }

    fn kv_put(&self, ns: Namespace, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.lock()?.set((ns, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn kv_delete(&self, ns: Namespace, key: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner.map.contains_key(&(ns, key.to_vec())) {
            inner.set((ns, key.to_vec()), None);
        }
        Ok(())
    }

    fn kv_scan(&self, ns: Namespace, prefix: &[u8]) -> Result<Vec<KvPair>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .map
            .range((ns, prefix.to_vec())..)
            .take_while(|((n, k), _)| *n == ns && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
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
        for (key, old) in journal.into_iter().rev() {
            match old {
                Some(v) => inner.map.insert(key, v),
                None => inner.map.remove(&key),
            };
        }
        Ok(())
    }

    fn in_transaction(&self) -> bool {
        self.lock().map(|i| i.journal.is_some()).unwrap_or(false)
    }
}

crate::impl_mls_storage!(MemoryStore);
