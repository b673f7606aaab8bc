//! What `abkit image inspect` and `image build --bundle` report, with each
//! slot's record (what the engine wrote on the ESP) beside what abkit-disk
//! sees in the slot. Serialize for `--json`, Display for the text form.

use std::fmt;

use abkit_disk::{DiskImage, DiskReport, Slot, SlotContent};
use serde::Serialize;

use crate::EspFiles;
use crate::factory::BundleBuildReport;
use crate::offline::ImageEsp;
use crate::record::{SlotRecord, read_record, record_path};

/// A slot as `image inspect` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    #[serde(flatten)]
    pub content: SlotContent,
    /// What the slot's record on the ESP says; `None` where there is no
    /// record file (a slot written from raw files, or never written).
    pub record: Option<SlotRecord>,
}

/// A disk with each slot's content and record.
pub type ImageReport = DiskReport<SlotReport>;

/// The records of both slots, A then B: `None` where the ESP has no record
/// file.
pub fn slot_records(disk: &DiskImage) -> crate::Result<[Option<SlotRecord>; 2]> {
    let mut esp = ImageEsp(disk.esp()?);
    let mut records = [None, None];
    for (i, slot) in [Slot::A, Slot::B].into_iter().enumerate() {
        if esp.read(record_path(slot))?.is_some() {
            records[i] = Some(read_record(&mut esp, slot)?);
        }
    }
    Ok(records)
}

/// `report` with each slot's record from `records` (A then B).
pub fn with_records(report: DiskReport, records: [Option<SlotRecord>; 2]) -> ImageReport {
    report.map_slots(|content| SlotReport {
        record: records[usize::from(content.slot == Slot::B)].clone(),
        content,
    })
}

/// One line about what a slot's record says.
pub struct RecordLine<'a>(pub Slot, pub &'a SlotRecord);

impl fmt::Display for RecordLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RecordLine(slot, r) = self;
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        write!(
            f,
            "slot {} record: {} {} {}, bundle manifest sha256 {}",
            slot.letter(),
            r.state,
            dash(&r.compatible),
            r.version
                .as_ref()
                .map_or_else(|| "-".into(), |v| v.to_string()),
            dash(&r.bundle_sha256)
        )
    }
}

impl fmt::Display for SlotReport {
    /// The slot's line, then its record's line if it has one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.content)?;
        if let Some(record) = &self.record {
            write!(f, "\n{}", RecordLine(self.content.slot, record))?;
        }
        Ok(())
    }
}

impl fmt::Display for BundleBuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.disk)?;
        writeln!(f, "{}", RecordLine(Slot::A, &self.slot_a))?;
        writeln!(f, "bundle signed by {}", self.signer)
    }
}
