//! Shared by the integration tests: the example agents' components (built by
//! scripts/build-agents.sh once, if missing), packages made from them, runtimes and hosts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use opengrid_actors::{HostConfig, Services, SessionHost};
use opengrid_session::{CheckpointStore, MemoryCheckpointStore};
use opengrid_wasm::{Package, PackageSource, Runtime, RuntimeConfig, SignedPackage};

/// The examples, as scripts/build-agents.sh names them.
pub const AGENTS: [&str; 6] = [
    "counter-rs",
    "hostile-rs",
    "counter-py",
    "effects-rs",
    "assistant-rs",
    "effects-py",
];

/// The target dir these tests were built in (`<target>/debug/deps/<test>` → `<target>`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("test binary under <target>/<profile>/deps")
        .to_path_buf()
}

/// Where the components are; builds them once per test binary if any is missing (or when
/// `OPENGRID_REBUILD_AGENTS=1`). Panics, failing the test, when they cannot be built.
pub fn agents_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = target_dir();
        let out = target.join("agents").join("out");
        let missing = AGENTS
            .iter()
            .any(|a| !out.join(format!("{a}.wasm")).is_file());
        if missing || std::env::var("OPENGRID_REBUILD_AGENTS").as_deref() == Ok("1") {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let script = root.join("scripts/build-agents.sh");
            eprintln!("building the example agents: {}", script.display());
            let status = Command::new("bash")
                .arg(&script)
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                status.success(),
                "{} failed ({status}); run it by hand to see why",
                script.display()
            );
        }
        for a in AGENTS {
            let f = out.join(format!("{a}.wasm"));
            assert!(
                f.is_file(),
                "{} missing after scripts/build-agents.sh",
                f.display()
            );
        }
        out
    })
}

/// The bytes of one example component.
pub fn component(agent: &str) -> Vec<u8> {
    let path = agents_dir().join(format!("{agent}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A developer key (fixed, so hashes are stable across runs).
pub fn developer_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// `agent.toml` for one of the examples (interface 0.1.0).
pub fn agent_toml(name: &str) -> String {
    agent_toml_of(name, "opengrid:agent@0.1.0")
}

/// `agent.toml` for one of the examples, declaring `interface`.
pub fn agent_toml_of(name: &str, interface: &str) -> String {
    format!(
        r#"
name = "{name}"
version = "0.1.0"
description = "the {name} example agent"
interface = "{interface}"
skills = ["count"]
persona = "You count."
[manifest.session]
handler = "{name}@0.1.0"
"#
    )
}

/// A signed package of an example agent (interface 0.1.0).
pub fn package(agent: &str) -> SignedPackage {
    package_declaring(agent, "opengrid:agent@0.1.0")
}

/// A signed package of an example agent declaring `interface`.
pub fn package_declaring(agent: &str, interface: &str) -> SignedPackage {
    Package::build(
        PackageSource::Parts {
            agent_toml: &agent_toml_of(agent, interface),
            component: component(agent),
        },
        &developer_key(),
    )
    .expect("the example package builds")
}

/// A runtime caching in `cache`, with a test-sized pool.
pub fn runtime_config(cache: &Path) -> RuntimeConfig {
    RuntimeConfig {
        max_instances: 16,
        max_memory_bytes: 128 << 20,
        deadline: Duration::from_millis(500),
        ..RuntimeConfig::new(cache)
    }
}

pub fn runtime(cache: &Path) -> Runtime {
    Runtime::new(runtime_config(cache)).expect("runtime starts")
}

/// A session host on an in-memory checkpoint store.
pub async fn host(store: Arc<dyn CheckpointStore>) -> SessionHost {
    host_with(store, Services::default()).await
}

/// A session host offering `services` to its handlers.
pub async fn host_with(store: Arc<dyn CheckpointStore>, services: Services) -> SessionHost {
    SessionHost::new(store, HostConfig::default(), services)
        .await
        .expect("host starts")
}

pub fn memory_store() -> Arc<MemoryCheckpointStore> {
    Arc::new(MemoryCheckpointStore::new())
}

/// Percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
