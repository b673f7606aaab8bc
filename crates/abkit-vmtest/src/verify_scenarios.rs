//! The written-data check at commit (issue 14), on a real booted slot:
//! install no longer reads the slot back, mark-good reads it from the media
//! against the signed verity root hash before it commits. The byte flipped
//! here is one the trial boot never reads (padding in the verity
//! superblock: neither the kernel's dm-verity table nor the initrd's
//! superblock reader uses it), so only mark-good's check can find it.

use anyhow::{Context, ensure};

use crate::fixtures::{X, Y};
use crate::root_scenarios::{YOnB, flip_byte, install_y_on_b};
use crate::scenarios::{Scenario, Suite, expect_healthy, expect_os, expect_result, status};

/// X on A installs Y; a byte of Y's verity superblock changes on the disk;
/// Y's trial boots, but its mark-good refuses with `written-data-mismatch`
/// and commits nothing; the next boot is X on A, committed.
pub fn written_data_check(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "written-data-check")?;
    let YOnB {
        order,
        sys,
        b_start,
    } = install_y_on_b(&mut s)?;
    let disk = s.machine.disk.clone();
    // A padding byte of the superblock (82..88, after the salt size): no
    // reader of the root uses it, so the trial boots; mark-good compares
    // the whole superblock with the one the signed parameters give.
    let at = sys.hash_offset + 84;
    flip_byte(&disk, b_start + at)?;

    // Y boots (its root verifies), its mark-good refuses.
    let (b, vars) = s.boot("status; poweroff")?;
    expect_os(&b, &Y, 'B')?;
    expect_result(&b, "mark-good", false)?;
    let log = b.log.display().to_string();
    let text = std::fs::read_to_string(&b.log).context("read the boot log")?;
    ensure!(
        text.contains("written-data-mismatch") && text.contains(&format!("from byte {at}")),
        "mark-good did not name the damaged byte {at} (log {log})"
    );
    vars.expect('A', None).context("after the refused commit")?;
    vars.expect_order(&order)?;
    let st = status(&b)?;
    ensure!(
        st["committed_slot"] == "A"
            && st["slots"]["B"]["state"] == "empty"
            && st["slots"]["B"]["written_check"] == "failed",
        "status after the refused commit: {st}"
    );

    // The next boot is X on A, healthy and committed.
    let (b, vars) = s.boot("poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    vars.expect('A', None)?;
    Ok(s)
}
