//! An in-memory variable store, for tests and simulations.

use std::collections::BTreeMap;

use super::{StoreError, VarName, VarStore, Variable, check_name};

/// Variables in a map; counts the writes it performs so tests can assert
/// that unchanged values are not rewritten.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    vars: BTreeMap<VarName, Variable>,
    writes: usize,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many set/delete calls changed something.
    pub fn write_count(&self) -> usize {
        self.writes
    }
}

impl VarStore for MemoryStore {
    fn get(&self, name: &VarName) -> Result<Option<Variable>, StoreError> {
        Ok(self.vars.get(name).cloned())
    }

    fn set(&mut self, name: &VarName, value: &Variable) -> Result<bool, StoreError> {
        check_name(name)?;
        if self.vars.get(name) == Some(value) {
            return Ok(false);
        }
        self.vars.insert(name.clone(), value.clone());
        self.writes += 1;
        Ok(true)
    }

    fn delete(&mut self, name: &VarName) -> Result<bool, StoreError> {
        let existed = self.vars.remove(name).is_some();
        self.writes += usize::from(existed);
        Ok(existed)
    }

    fn list(&self) -> Result<Vec<VarName>, StoreError> {
        Ok(self.vars.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_honours_the_contract() {
        let mut store = MemoryStore::new();
        crate::store::contract::check_store_contract(&mut store);
        // 3 changing sets of Boot0001/Other + one delete.
        assert_eq!(store.write_count(), 4);
    }
}
