//! Power cuts on demand, for crash-consistency tests.
//!
//! A [`PowerCut`] counts every mutation the engine makes (a variable set or
//! delete, an ESP file write, rename or remove, a slot write or flush).
//! Armed at mutation `k`, it fails that mutation and every one after it, as
//! if the machine lost power just before it: the first `k - 1` mutations are
//! all that reached the disk.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use abkit_efi::{StoreError, VarName, VarStore, Variable};

use crate::machine::{EspFiles, SlotDevice};
use crate::{Result, UpdateError};

/// Shared counter of mutations (shared with the slot writer thread).
#[derive(Debug, Default)]
pub struct PowerCut {
    count: AtomicUsize,
    /// 0: never.
    cut_at: AtomicUsize,
}

impl PowerCut {
    /// Counts only; never cuts.
    pub fn counter() -> Arc<PowerCut> {
        Arc::new(PowerCut::default())
    }

    /// Cuts the power at mutation `k` (1-based).
    pub fn at(k: usize) -> Arc<PowerCut> {
        let p = PowerCut::default();
        p.cut_at.store(k.max(1), Ordering::SeqCst);
        Arc::new(p)
    }

    /// Mutations attempted so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether the power is off.
    pub fn is_cut(&self) -> bool {
        let k = self.cut_at.load(Ordering::SeqCst);
        k != 0 && self.count() >= k
    }

    fn tick(&self) -> std::result::Result<(), usize> {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        match self.cut_at.load(Ordering::SeqCst) {
            k if k != 0 && n >= k => Err(k),
            _ => Ok(()),
        }
    }
}

fn store_cut(k: usize) -> StoreError {
    StoreError::Io {
        path: "power".into(),
        source: io::Error::other(format!("power cut at mutation {k}")),
    }
}

/// What decides whether a variable write that changes something may
/// happen: a power cut, a full NVRAM.
pub trait VarGate {
    /// Before a write that changes `name`.
    fn set(&self, name: &VarName, value: &Variable) -> std::result::Result<(), StoreError>;
    /// Before deleting a variable that exists.
    fn delete(&self) -> std::result::Result<(), StoreError>;
}

/// A variable store whose changing writes and deletes pass `gate` first;
/// reads, and writes that change nothing, go straight through.
pub struct GatedVars<G> {
    pub inner: Box<dyn VarStore>,
    pub gate: G,
}

impl<G: VarGate> VarStore for GatedVars<G> {
    fn get(&self, name: &VarName) -> std::result::Result<Option<Variable>, StoreError> {
        self.inner.get(name)
    }
    fn set(&mut self, name: &VarName, value: &Variable) -> std::result::Result<bool, StoreError> {
        if self.inner.get(name)?.as_ref() == Some(value) {
            return Ok(false);
        }
        self.gate.set(name, value)?;
        self.inner.set(name, value)
    }
    fn delete(&mut self, name: &VarName) -> std::result::Result<bool, StoreError> {
        if self.inner.get(name)?.is_none() {
            return Ok(false);
        }
        self.gate.delete()?;
        self.inner.delete(name)
    }
    fn list(&self) -> std::result::Result<Vec<VarName>, StoreError> {
        self.inner.list()
    }
}

/// A variable store that loses power on cue.
pub type FaultyVars = GatedVars<Arc<PowerCut>>;

impl VarGate for Arc<PowerCut> {
    fn set(&self, _: &VarName, _: &Variable) -> std::result::Result<(), StoreError> {
        self.tick().map_err(store_cut)
    }
    fn delete(&self) -> std::result::Result<(), StoreError> {
        self.tick().map_err(store_cut)
    }
}

/// ESP files that lose power on cue.
pub struct FaultyEsp {
    pub inner: Box<dyn EspFiles>,
    pub power: Arc<PowerCut>,
}

impl FaultyEsp {
    fn tick(&self) -> Result<()> {
        self.power.tick().map_err(UpdateError::InjectedFault)
    }
}

impl EspFiles for FaultyEsp {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        self.inner.read(path)
    }
    fn write(&mut self, path: &str, source: &mut dyn Read) -> Result<u64> {
        self.tick()?;
        self.inner.write(path, source)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.tick()?;
        self.inner.rename(from, to)
    }
    fn remove(&mut self, path: &str) -> Result<bool> {
        if self.inner.read(path)?.is_none() {
            return Ok(false);
        }
        self.tick()?;
        self.inner.remove(path)
    }
    fn size(&mut self, path: &str) -> Result<Option<u64>> {
        self.inner.size(path)
    }
    fn free_bytes(&mut self) -> Result<u64> {
        self.inner.free_bytes()
    }
}

/// A slot device that loses power on cue.
pub struct FaultySlot<'a> {
    pub inner: Box<dyn SlotDevice + 'a>,
    pub power: Arc<PowerCut>,
}

impl SlotDevice for FaultySlot<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.power
            .tick()
            .map_err(|k| io::Error::other(format!("power cut at mutation {k}")))?;
        self.inner.write_at(offset, buf)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.power
            .tick()
            .map_err(|k| io::Error::other(format!("power cut at mutation {k}")))?;
        self.inner.flush()
    }
    fn drop_cache(&mut self) {
        self.inner.drop_cache()
    }
    fn start_writeback(&mut self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len)
    }
    fn settle(&mut self, offset: u64, len: u64) {
        self.inner.settle(offset, len)
    }
    fn retire(&mut self, offset: u64, len: u64) {
        self.inner.retire(offset, len)
    }
}

/// A variable store whose NVRAM fills up: after `writes_left` variable
/// writes that change something, every further write fails with
/// [`StoreError::Full`], as a full store does when even compaction finds no
/// room. Deleting always works (it frees space). Shared, so a test can
/// free space again ([`NvramSpace::set`]) on the store it gave a machine.
pub type NvramFull = GatedVars<Arc<NvramSpace>>;

/// How many more variable writes fit; shared by [`NvramFull`] stores.
#[derive(Debug, Default)]
pub struct NvramSpace {
    writes_left: AtomicUsize,
    written: AtomicUsize,
    refused: AtomicUsize,
}

impl NvramSpace {
    /// Room for `writes` more variable writes.
    pub fn new(writes: usize) -> Arc<NvramSpace> {
        let space = NvramSpace::default();
        space.set(writes);
        Arc::new(space)
    }

    /// Room for `writes` more variable writes from now on.
    pub fn set(&self, writes: usize) {
        self.writes_left.store(writes, Ordering::SeqCst);
    }

    /// Writes that went through so far.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    /// Writes refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    fn take(&self) -> bool {
        let took = self
            .writes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let counter = if took { &self.written } else { &self.refused };
        counter.fetch_add(1, Ordering::SeqCst);
        took
    }
}

impl NvramFull {
    pub fn new(inner: Box<dyn VarStore>, space: Arc<NvramSpace>) -> NvramFull {
        GatedVars { inner, gate: space }
    }
}

impl VarGate for Arc<NvramSpace> {
    fn set(&self, name: &VarName, value: &Variable) -> std::result::Result<(), StoreError> {
        if self.take() {
            return Ok(());
        }
        Err(StoreError::Full {
            name: name.to_string(),
            needed: value.data.len(),
            free: 0,
        })
    }
    /// Deleting always works (it frees space).
    fn delete(&self) -> std::result::Result<(), StoreError> {
        Ok(())
    }
}
