//! VM scenario of issue 15: a delta install over HTTP on real firmware.
//! The guest (X on slot A) installs Y from a host server that honours
//! Range requests: abkit hashes slot A, reuses what it holds and fetches
//! only the rest; the bytes fetched are printed, then Y boots and commits
//! as after any install.

use anyhow::{Context, ensure};

use crate::fixtures::{X, Y};
use crate::http::FileServer;
use crate::scenarios::{Scenario, Suite, expect_healthy, expect_result};

/// `delta-update`: Y installed over X as a delta, then committed.
pub fn delta_update(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "delta-update")?;
    let server = FileServer::start_with_ranges(&suite.fx.bundle_dir)
        .context("starting the Range-capable HTTP server")?;
    let size = std::fs::metadata(suite.fx.bundle(&Y.bundle()))?.len();
    let (b, vars) = s.boot(&format!(
        "install {}; reboot",
        server.guest_url(&Y.bundle())
    ))?;
    expect_healthy(&b, &X, 'A')?;
    expect_result(&b, "install", true)?;
    let done = b
        .report
        .json
        .iter()
        .find(|v| v["event"] == "done")
        .context("no `done` line from the install")?;
    let report = &done["report"];
    ensure!(report["delta"] == true, "not a delta install: {report}");
    let fetched = report["bytes_fetched"].as_u64().unwrap_or(u64::MAX);
    let reused = report["bytes_reused"].as_u64().unwrap_or(0);
    let served = server.served();
    eprintln!(
        "delta-update: fetched {fetched} of the {size}-byte bundle ({:.1}%), reused {reused} bytes; the server sent {served}",
        100.0 * fetched as f64 / size as f64
    );
    ensure!(
        served < size && fetched <= served,
        "the server sent {served} bytes of a {size}-byte bundle (abkit counted {fetched})"
    );
    ensure!(reused > 0, "nothing of slot A was reused");
    vars.expect('A', Some('B'))?;
    let (b, vars) = s.boot("poweroff")?;
    expect_healthy(&b, &Y, 'B')?;
    vars.expect('B', None)?;
    Ok(s)
}
