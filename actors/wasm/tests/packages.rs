//! Package checks at load: every bad package is refused with its typed error and leaves nothing
//! in the compile cache; a good one is compiled once and then loaded from the cache.

mod common;

use std::path::Path;

use common::*;
use opengrid_wasm::{Package, PackageError, PackageLimits, PackageSource, Runtime, RuntimeConfig};

fn cache_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Loads `bytes` into a fresh runtime and returns the error; asserts nothing was compiled into
/// or left in the cache.
fn refused(
    config: impl FnOnce(&Path) -> RuntimeConfig,
    bytes: &[u8],
    expected: Option<&str>,
) -> PackageError {
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(config(cache.path())).unwrap();
    let err = rt
        .load_bytes(bytes, expected)
        .expect_err("the package must be refused");
    assert_eq!(
        cache_entries(cache.path()),
        Vec::<String>::new(),
        "nothing cached for: {err}"
    );
    assert_eq!(rt.stats().cache_hits, 0);
    err
}

/// A package around `component` (WAT text or bytes), signed by the developer key.
fn package_of(component: Vec<u8>) -> Vec<u8> {
    Package::build(
        PackageSource::Parts {
            agent_toml: &agent_toml("odd"),
            component,
        },
        &developer_key(),
    )
    .unwrap()
    .to_bytes()
}

#[test]
fn bad_signature_is_refused() {
    let mut bytes = package("counter-rs").to_bytes();
    // A byte inside the component (the body ends 96 bytes before the end: signer, signature).
    let i = bytes.len() - 5000;
    bytes[i] ^= 0x55;
    let err = refused(runtime_config, &bytes, None);
    assert!(matches!(err, PackageError::BadSignature { .. }), "{err}");
}

#[test]
fn hash_mismatch_is_refused() {
    let good = package("counter-rs");
    let other = package("hostile-rs");
    let err = refused(runtime_config, &good.to_bytes(), Some(&other.hash()));
    match err {
        PackageError::HashMismatch { expected, actual } => {
            assert_eq!(expected, other.hash());
            assert_eq!(actual, good.hash());
        }
        e => panic!("{e}"),
    }
}

#[test]
fn missing_export_is_refused() {
    let cases = [
        // A core module, not a component.
        (
            "(module (func (export \"handle\")))",
            "opengrid:agent/guest@0.1.0",
        ),
        // A component of another world.
        (
            "(component (instance $i) (export \"opengrid:agent/other@0.1.0\" (instance $i)))",
            "opengrid:agent/guest@0.1.0",
        ),
        // The right interface name without its functions.
        (
            "(component (instance $i) (export \"opengrid:agent/guest@0.1.0\" (instance $i)))",
            "opengrid:agent/guest@0.1.0#init",
        ),
    ];
    for (wat, missing) in cases {
        let err = refused(
            runtime_config,
            &package_of(wat::parse_str(wat).unwrap()),
            None,
        );
        match err {
            PackageError::MissingExport { name } => assert_eq!(name, missing, "{wat}"),
            e => panic!("{wat}: {e}"),
        }
    }
}

#[test]
fn wrong_interface_version_is_refused() {
    let wat = "(component (instance $i) (export \"opengrid:agent/guest@0.2.0\" (instance $i)))";
    let err = refused(
        runtime_config,
        &package_of(wat::parse_str(wat).unwrap()),
        None,
    );
    match err {
        PackageError::WrongInterfaceVersion { found, supported } => {
            assert_eq!(found, "opengrid:agent@0.2.0");
            assert_eq!(supported, "opengrid:agent@0.1.0");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn imports_beyond_the_host_interface_are_refused() {
    let wat = "(component (import \"acme:net/raw-socket@1.0.0\" (instance)))";
    let err = refused(
        runtime_config,
        &package_of(wat::parse_str(wat).unwrap()),
        None,
    );
    match err {
        PackageError::UnsupportedImport { name } => assert_eq!(name, "acme:net/raw-socket@1.0.0"),
        e => panic!("{e}"),
    }
}

#[test]
fn oversized_is_refused() {
    let bytes = package("counter-rs").to_bytes();
    let small_component = |cache: &Path| RuntimeConfig {
        limits: PackageLimits {
            max_component_bytes: 64 << 10,
            ..PackageLimits::default()
        },
        ..runtime_config(cache)
    };
    match refused(small_component, &bytes, None) {
        PackageError::Oversized { what, size, limit } => {
            assert_eq!(what, "component");
            assert!(size > limit && limit == 64 << 10, "{size} {limit}");
        }
        e => panic!("{e}"),
    }
    let small_package = |cache: &Path| RuntimeConfig {
        limits: PackageLimits {
            max_package_bytes: 1000,
            ..PackageLimits::default()
        },
        ..runtime_config(cache)
    };
    match refused(small_package, &bytes, None) {
        PackageError::Oversized { what, size, .. } => {
            assert_eq!(what, "package");
            assert_eq!(size, bytes.len() as u64);
        }
        e => panic!("{e}"),
    }
}

/// The second runtime on the same cache directory loads from disk (no compile); a cache entry
/// that does not load is recompiled over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_cache_is_hit_on_the_second_load() {
    let cache = tempfile::tempdir().unwrap();
    let signed = package("counter-rs");
    let entry = format!("{}.cwasm", signed.hash());

    let first = runtime(cache.path());
    let a = first
        .load_bytes(&signed.to_bytes(), Some(&signed.hash()))
        .unwrap();
    a.probe().await.unwrap();
    assert_eq!((first.stats().compiles, first.stats().cache_hits), (1, 0));
    assert_eq!(cache_entries(cache.path()), vec![entry.clone()]);
    // Loading again in the same runtime is a memory hit: neither compiled nor read from disk.
    first.load_bytes(&signed.to_bytes(), None).unwrap();
    assert_eq!((first.stats().compiles, first.stats().cache_hits), (1, 0));

    let second = runtime(cache.path());
    let b = second.load_bytes(&signed.to_bytes(), None).unwrap();
    b.probe().await.unwrap();
    assert_eq!((second.stats().compiles, second.stats().cache_hits), (0, 1));

    // A damaged entry is not trusted: recompiled and rewritten. (Loaded components map their
    // entry, so entries are only ever replaced by a new file, never rewritten in place: the
    // damage is a new file too.)
    drop((a, b, first, second));
    std::fs::remove_file(cache.path().join(&entry)).unwrap();
    std::fs::write(cache.path().join(&entry), b"not a compiled component").unwrap();
    let third = runtime(cache.path());
    let c = third.load_bytes(&signed.to_bytes(), None).unwrap();
    c.probe().await.unwrap();
    assert_eq!((third.stats().compiles, third.stats().cache_hits), (1, 0));
    assert_eq!(cache_entries(cache.path()), vec![entry]);
    let fourth = runtime(cache.path());
    fourth.load_bytes(&signed.to_bytes(), None).unwrap();
    assert_eq!(fourth.stats().cache_hits, 1);
}

/// A package directory gives the same signed bytes as its parts; a component path leaving the
/// directory is refused, naming the field.
#[test]
fn package_directory_builds_the_same_package_as_its_parts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.toml"), agent_toml("counter-rs")).unwrap();
    std::fs::write(dir.path().join("agent.wasm"), component("counter-rs")).unwrap();
    let from_dir = Package::build(PackageSource::Dir(dir.path()), &developer_key()).unwrap();
    assert_eq!(from_dir.to_bytes(), package("counter-rs").to_bytes());
    let verified = from_dir.verify(Some(&from_dir.hash())).unwrap();
    assert_eq!(verified.meta().skills, vec!["count".to_string()]);
    assert_eq!(
        verified.meta().manifest["session"]["handler"],
        "counter-rs@0.1.0"
    );

    let escaping = format!(
        "component = \"../agent.wasm\"\n{}",
        agent_toml("counter-rs")
    );
    std::fs::write(dir.path().join("agent.toml"), escaping).unwrap();
    match Package::build(PackageSource::Dir(dir.path()), &developer_key()) {
        Err(PackageError::InvalidManifest { field, .. }) => assert_eq!(field, "component"),
        other => panic!("{other:?}"),
    }
}

/// A node runs 0.1.0 and 0.2.0 packages side by side; a component must export the version its
/// `agent.toml` declares, either way round.
#[test]
fn each_component_speaks_the_version_its_package_declares() {
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(cache.path())).unwrap();
    for (agent, declared) in [
        ("counter-rs", "opengrid:agent@0.1.0"),
        ("effects-rs", "opengrid:agent@0.2.0"),
        ("effects-py", "opengrid:agent@0.2.0"),
    ] {
        let bytes = package_declaring(agent, declared).to_bytes();
        rt.load_bytes(&bytes, None)
            .unwrap_or_else(|e| panic!("{agent} as {declared}: {e}"));
    }
    for (agent, declared, exported) in [
        ("effects-rs", "opengrid:agent@0.1.0", "opengrid:agent@0.2.0"),
        ("counter-rs", "opengrid:agent@0.2.0", "opengrid:agent@0.1.0"),
    ] {
        let bytes = package_declaring(agent, declared).to_bytes();
        match refused(runtime_config, &bytes, None) {
            PackageError::WrongInterfaceVersion { found, supported } => {
                assert_eq!((found.as_str(), supported.as_str()), (exported, declared))
            }
            e => panic!("{agent} as {declared}: {e}"),
        }
    }
}

/// The effects are 0.2.0's: a component declaring 0.1.0 cannot import them (nor 0.1.0 an
/// `effects` it does not have).
#[test]
fn a_0_1_component_cannot_import_effects() {
    let wat = "(component (import \"opengrid:agent/effects@0.2.0\" (instance)))";
    match refused(
        runtime_config,
        &package_of(wat::parse_str(wat).unwrap()),
        None,
    ) {
        PackageError::WrongInterfaceVersion { found, supported } => {
            assert_eq!(
                (found.as_str(), supported.as_str()),
                ("opengrid:agent@0.2.0", "opengrid:agent@0.1.0")
            )
        }
        e => panic!("{e}"),
    }
    let wat = "(component (import \"opengrid:agent/effects@0.1.0\" (instance)))";
    match refused(
        runtime_config,
        &package_of(wat::parse_str(wat).unwrap()),
        None,
    ) {
        PackageError::UnsupportedImport { name } => {
            assert_eq!(name, "opengrid:agent/effects@0.1.0")
        }
        e => panic!("{e}"),
    }
}
