//! OCI registry scenarios (issue 15): the running test OS installs an update
//! pulled from a real registry (Debian's docker-registry on the host, reached
//! through QEMU's user network as 10.0.2.2), pinned by the digest that
//! `abkit bundle push` printed.

use std::path::Path;
use std::process::Command;

use abkit_oci::testing::{REGISTRY_BIN, TestAuth, TestRegistry};
use anyhow::{Context, ensure};

use crate::fixtures::{X, Y, run};
use crate::scenarios::{Scenario, Suite, expect_healthy, expect_result};

/// X pushes nothing itself: the host pushes Y to the registry, the guest
/// installs `oci://10.0.2.2:PORT/demo/os@sha256:...`, the trial boot of Y
/// is healthy and commits B.
pub fn oci_install(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    ensure!(
        Path::new(REGISTRY_BIN).exists(),
        "{REGISTRY_BIN} is missing: install Debian's docker-registry (`make deps`)"
    );
    let mut s = Scenario::new(suite, "oci-install")?;
    let registry = TestRegistry::start(TestAuth::None);
    let port = registry
        .addr
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .context("the registry's port")?;
    let digest = run(Command::new(&suite.fx.release.abkit)
        .arg("bundle")
        .arg("push")
        .arg(suite.fx.bundle(&Y.bundle()))
        .arg(registry.reference("demo/os:1.1.0"))
        .arg("--insecure-registry"))
    .context("push Y to the registry")?
    .trim()
    .to_owned();
    ensure!(
        digest.starts_with("sha256:"),
        "push printed {digest:?}, not a digest"
    );
    let (b, vars) = s.boot(&format!(
        "install oci://10.0.2.2:{port}/demo/os@{digest} --insecure-registry; reboot"
    ))?;
    expect_healthy(&b, &X, 'A')?;
    expect_result(&b, "install", true)
        .with_context(|| format!("registry log: {}", registry.log()))?;
    vars.expect('A', Some('B'))?;
    let (b, vars) = s.boot("poweroff")?;
    expect_healthy(&b, &Y, 'B')?;
    vars.expect('B', None)?;
    Ok(s)
}
