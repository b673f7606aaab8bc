//! Push and pull against a real registry (Debian's docker-registry, started
//! per test on 127.0.0.1): by tag and by digest, monolithic and chunked
//! uploads, missing tags, a registry serving tampered manifests and blobs,
//! Basic auth (htpasswd) and Bearer tokens from a token service, with and
//! without credentials.

mod cutting_proxy;
mod token;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use abkit_fetch::{Opener, RetryPolicy, TrustRoots};
use abkit_oci::testing::{TestAuth, TestRegistry};
use abkit_oci::{
    Credentials, OciError, PushOptions, PushReport, Reference, RegistryOptions, open_bundle,
    push_bundle,
};

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        jitter: false,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    }
}

fn insecure() -> RegistryOptions {
    RegistryOptions {
        insecure: true,
        // Never pick up the machine's own docker credentials.
        auth_file: Some(empty_auth_file()),
        policy: policy(),
        ..RegistryOptions::default()
    }
}

fn with_credentials(user: &str, password: &str) -> RegistryOptions {
    RegistryOptions {
        credentials: Some(Credentials {
            username: user.into(),
            password: password.into(),
        }),
        ..insecure()
    }
}

/// An empty docker auth file, written once per test run into cargo's
/// scratch folder for integration tests (not /tmp: nothing is left behind).
fn empty_auth_file() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("abkit-oci-empty-auth.json");
        std::fs::write(&path, "{}").unwrap();
        path
    })
    .clone()
}

/// A file of `size` bytes of a fixed pattern (the registry does not care
/// that it is not a bundle).
fn file(dir: &Path, name: &str, size: usize, seed: u8) -> (PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn push(
    reference: &str,
    options: &RegistryOptions,
    path: &Path,
    chunk: Option<u64>,
) -> Result<PushReport, OciError> {
    let reference = Reference::parse(reference).unwrap();
    let options_push = PushOptions {
        chunk_size: chunk,
        title: Some("os.abb".into()),
        ..PushOptions::default()
    };
    let mut last = (0, 0);
    let report = push_bundle(
        &reference,
        options,
        path,
        &options_push,
        &mut |done, total| {
            // Forward, except when a dropped upload session starts over.
            assert!(done <= total, "progress beyond the total: {done}/{total}");
            last = (done, total);
        },
    )?;
    assert_eq!(last.0, last.1, "progress reaches the total");
    Ok(report)
}

/// Pulls the bundle `reference` names, all its bytes.
fn pull(reference: &str, options: &RegistryOptions) -> Result<(String, Vec<u8>), OciError> {
    let reference = Reference::parse(reference).unwrap();
    let (artifact, mut reader) = open_bundle(&reference, options, Opener::new(&options.policy))?;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| match OciError::from_io(&e) {
            Some(_) => *e.into_inner().unwrap().downcast::<OciError>().unwrap(),
            None => OciError::Io {
                context: "read".into(),
                source: e,
            },
        })?;
    Ok((artifact.manifest_digest.to_string(), bytes))
}

#[test]
fn push_then_pull_by_tag_and_by_digest_gives_the_same_bytes() {
    let registry = TestRegistry::start(TestAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = file(dir.path(), "os.abb", 3 * 1024 * 1024 + 17, 1);
    let tag = registry.reference("os/demo:1.0.0");
    let report = push(&tag, &insecure(), &path, None).unwrap();
    assert!(report.uploaded);
    assert_eq!(report.size, bytes.len() as u64);
    assert!(report.pinned.ends_with(report.manifest_digest.as_str()));

    let (digest, pulled) = pull(&tag, &insecure()).unwrap();
    assert_eq!(digest, report.manifest_digest.to_string());
    assert!(pulled == bytes, "pull by tag: bytes differ");
    let (digest, pulled) = pull(&report.pinned, &insecure()).unwrap();
    assert_eq!(digest, report.manifest_digest.to_string());
    assert!(pulled == bytes, "pull by digest: bytes differ");

    // The same bundle again: the blob is there, only the manifest goes up;
    // the same manifest bytes give the same digest.
    let again = push(
        &registry.reference("os/demo:stable"),
        &insecure(),
        &path,
        None,
    )
    .unwrap();
    assert!(!again.uploaded);
    assert_eq!(again.manifest_digest, report.manifest_digest);
}

/// Delta installs read a blob by many ranges at once: docker-registry
/// (Go's `ServeContent`) answers them all in one multipart/byteranges body.
#[test]
fn many_ranges_of_a_blob_come_in_one_request() {
    let registry = TestRegistry::start(TestAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = file(dir.path(), "os.abb", 3 * 1024 * 1024 + 17, 3);
    let tag = registry.reference("os/demo:1.0.0");
    push(&tag, &insecure(), &path, None).unwrap();
    let reference = Reference::parse(&tag).unwrap();
    let options = insecure();
    let (_, mut source) =
        abkit_oci::open_bundle_ranged(&reference, &options, Opener::new(&options.policy), 1000)
            .unwrap();
    assert!(source.ranges_honoured());
    let ranges: Vec<(u64, u64)> = (0..100u64).map(|i| (5000 + i * 31_000, 4096)).collect();
    let mut out = vec![0u8; 100 * 4096];
    let before = source.requests();
    source.read_ranges(&ranges, &mut out).unwrap();
    let expected: Vec<u8> = ranges
        .iter()
        .flat_map(|&(s, l)| bytes[s as usize..(s + l) as usize].iter().copied())
        .collect();
    assert!(out == expected, "wrong bytes");
    assert_eq!(source.requests() - before, 1);
    assert!(source.multi_ranges());
}

#[test]
fn a_chunked_push_stores_the_same_bytes() {
    let registry = TestRegistry::start(TestAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = file(dir.path(), "os.abb", 2 * 1024 * 1024 + 5, 2);
    let tag = registry.reference("chunked:1");
    let report = push(&tag, &insecure(), &path, Some(1024 * 1024)).unwrap();
    assert!(report.uploaded);
    let (_, pulled) = pull(&report.pinned, &insecure()).unwrap();
    assert!(pulled == bytes);
}

#[test]
fn a_chunk_cut_mid_way_is_resent_and_the_upload_completes() {
    let registry = TestRegistry::start(TestAuth::None);
    // The second chunk breaks off after 100 000 of its 1 MiB.
    let proxy = cutting_proxy::CuttingProxy::start(&registry.addr, 2, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = file(dir.path(), "os.abb", 3 * 1024 * 1024 + 3, 8);
    let tag = format!("oci://{}/cut:1", proxy.addr);
    let options = RegistryOptions {
        policy: RetryPolicy {
            attempts: 4,
            ..policy()
        },
        ..insecure()
    };
    let report = push(&tag, &options, &path, Some(1024 * 1024)).unwrap();
    assert!(
        proxy.patches.load(std::sync::atomic::Ordering::SeqCst) >= 5,
        "4 chunks and the one resent"
    );
    // distribution drops a session whose body broke off (its state no
    // longer matches the stored length): the upload started over.
    let (_, pulled) = pull(&report.pinned, &insecure()).unwrap();
    assert!(pulled == bytes, "the resumed upload stored other bytes");
}

#[test]
fn missing_tags_digests_and_repositories_are_named_errors() {
    let registry = TestRegistry::start(TestAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = file(dir.path(), "os.abb", 1000, 3);
    push(&registry.reference("os:1"), &insecure(), &path, None).unwrap();
    let err = pull(&registry.reference("os:2"), &insecure()).unwrap_err();
    assert_eq!(err.code(), "oci-not-found", "{err}");
    assert!(err.to_string().contains("tag not found"), "{err}");
    assert!(err.to_string().contains("MANIFEST_UNKNOWN"), "{err}");
    let other = format!("os@sha256:{}", "0".repeat(64));
    let err = pull(&registry.reference(&other), &insecure()).unwrap_err();
    assert_eq!(err.code(), "oci-not-found", "{err}");
    let err = pull(&registry.reference("nothing/here:1"), &insecure()).unwrap_err();
    assert_eq!(err.code(), "oci-not-found", "{err}");
    // A push needs a tag.
    let err = push(&registry.reference(&other), &insecure(), &path, None).unwrap_err();
    assert_eq!(err.code(), "oci-bad-reference", "{err}");
}

#[test]
fn a_registry_serving_another_manifest_or_blob_is_refused() {
    let registry = TestRegistry::start(TestAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = file(dir.path(), "os.abb", 100_000, 4);
    let report = push(&registry.reference("os:1"), &insecure(), &path, None).unwrap();

    // The registry's storage is changed behind its back: it serves the
    // changed manifest bytes under the old digest.
    let manifest_file = registry.blob_file(report.manifest_digest.as_str());
    let original = std::fs::read(&manifest_file).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    std::fs::write(&manifest_file, text.replace("os.abb", "os.abc")).unwrap();
    for reference in [report.pinned.clone(), registry.reference("os:1")] {
        let err = pull(&reference, &insecure()).unwrap_err();
        assert_eq!(err.code(), "oci-digest-mismatch", "{reference}: {err}");
        assert!(
            err.to_string().contains(report.manifest_digest.as_str()),
            "{err}"
        );
    }
    std::fs::write(&manifest_file, &original).unwrap();
    pull(&report.pinned, &insecure()).unwrap();

    // One flipped byte in the blob: caught at the blob's end.
    let blob_file = registry.blob_file(report.bundle_digest.as_str());
    let mut blob = std::fs::read(&blob_file).unwrap();
    blob[50_000] ^= 0x40;
    std::fs::write(&blob_file, &blob).unwrap();
    let err = pull(&report.pinned, &insecure()).unwrap_err();
    assert_eq!(err.code(), "oci-blob-digest-mismatch", "{err}");
    // A shorter blob: refused before a byte is read.
    std::fs::write(&blob_file, &blob[..1000]).unwrap();
    let err = pull(&report.pinned, &insecure()).unwrap_err();
    assert_eq!(err.code(), "oci-blob-size-mismatch", "{err}");
}

#[test]
fn https_is_the_default_and_a_plain_http_registry_is_not_reached_without_the_flag() {
    let registry = TestRegistry::start(TestAuth::None);
    let options = RegistryOptions {
        insecure: false,
        ..insecure()
    };
    let err = pull(&registry.reference("os:1"), &options).unwrap_err();
    assert_eq!(err.code(), "oci-tls", "{err}");
    assert!(err.to_string().contains("https://127.0.0.1"), "{err}");
}

#[test]
fn an_https_registry_is_trusted_only_through_its_ca() {
    let registry = TestRegistry::start_tls(TestAuth::Basic {
        user: "builder".into(),
        password: "tls".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = file(dir.path(), "os.abb", 500_000, 7);
    let tag = registry.reference("os:1");
    let tls = |roots: TrustRoots| RegistryOptions {
        insecure: false,
        roots,
        ..with_credentials("builder", "tls")
    };
    // The built-in roots do not know the test CA: refused, not retried.
    let err = push(&tag, &tls(TrustRoots::Builtin), &path, None).unwrap_err();
    assert_eq!(err.code(), "oci-tls", "{err}");
    assert!(err.to_string().contains("https://"), "{err}");
    let trusted = tls(TrustRoots::Pem(registry.ca_pem()));
    let report = push(&tag, &trusted, &path, None).unwrap();
    let (_, pulled) = pull(&report.pinned, &trusted).unwrap();
    assert!(pulled == bytes);
    // --insecure-registry means plain http, which this registry does not speak.
    assert!(pull(&tag, &with_credentials("builder", "tls")).is_err());
}

#[test]
fn basic_auth_refuses_no_or_wrong_credentials_and_accepts_the_right_ones() {
    let registry = TestRegistry::start(TestAuth::Basic {
        user: "builder".into(),
        password: "correct horse".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = file(dir.path(), "os.abb", 200_000, 5);
    let tag = registry.reference("os:1");

    let err = push(&tag, &insecure(), &path, None).unwrap_err();
    assert_eq!(err.code(), "oci-auth-required", "{err}");
    assert!(err.to_string().contains("--registry-user"), "{err}");
    let err = push(&tag, &with_credentials("builder", "wrong"), &path, None).unwrap_err();
    assert_eq!(err.code(), "oci-unauthorized", "{err}");

    let good = with_credentials("builder", "correct horse");
    let report = push(&tag, &good, &path, Some(64 * 1024)).unwrap();
    let (_, pulled) = pull(&report.pinned, &good).unwrap();
    assert!(pulled == bytes);
    assert_eq!(
        pull(&tag, &insecure()).unwrap_err().code(),
        "oci-auth-required"
    );

    // The same credentials from a docker-style config.json.
    let config = dir.path().join("config.json");
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "builder:correct horse",
    );
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    let from_file = RegistryOptions {
        auth_file: Some(config),
        ..insecure()
    };
    let (_, pulled) = pull(&tag, &from_file).unwrap();
    assert!(pulled == bytes);
}

#[test]
fn bearer_tokens_from_the_token_service_are_fetched_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let service = token::TokenService::start(dir.path(), "builder", "s3cret");
    let registry = TestRegistry::start(TestAuth::Token {
        realm: service.realm(),
        service: token::SERVICE.into(),
        issuer: token::ISSUER.into(),
        cert: service.cert.clone(),
    });
    let (path, bytes) = file(dir.path(), "os.abb", 300_000, 6);
    let tag = registry.reference("fleet/os:1");

    let err = push(&tag, &insecure(), &path, None).unwrap_err();
    assert_eq!(err.code(), "oci-auth-required", "{err}");
    let err = push(&tag, &with_credentials("builder", "nope"), &path, None).unwrap_err();
    assert_eq!(err.code(), "oci-unauthorized", "{err}");

    let good = with_credentials("builder", "s3cret");
    let report = push(&tag, &good, &path, None).unwrap();
    let asked = service.scopes();
    assert!(
        asked.iter().any(|s| s == "repository:fleet/os:pull,push"),
        "a push asks for pull and push: {asked:?}"
    );
    let (digest, pulled) = pull(&tag, &good).unwrap();
    assert_eq!(digest, report.manifest_digest.to_string());
    assert!(pulled == bytes);
    assert!(
        service
            .scopes()
            .iter()
            .any(|s| s == "repository:fleet/os:pull")
    );
}
