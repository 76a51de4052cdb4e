//! Errors of the package format and the runtime.

use std::path::PathBuf;

/// Why a package is refused (at build, decode, verify or load). Nothing is cached for a refused
/// package.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The signature does not verify against the signer key the package names.
    #[error("the package signature does not verify against its signer key {signer}")]
    BadSignature {
        /// The claimed signer (`did:mycel:…`, or the key bytes in hex when they are not a key).
        signer: String,
    },
    /// The package is not the one asked for.
    #[error("package hash mismatch: expected {expected}, the package hashes to {actual}")]
    HashMismatch {
        /// The hash the caller expected (hex blake3).
        expected: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// The component lacks an export the node needs.
    #[error("the component does not export `{name}` (an agent exports opengrid:agent/guest@<the version its agent.toml declares> with init and handle; build it against actors/wasm/wit)")]
    MissingExport {
        /// The missing export, e.g. `opengrid:agent/guest@0.1.0` or `…#handle`.
        name: String,
    },
    /// An export of the right name has the wrong type.
    #[error("the component's `{name}` has the wrong type: {reason}")]
    ExportType {
        /// The export.
        name: String,
        /// What the type check said.
        reason: String,
    },
    /// The package or its component speaks another version of the agent interface.
    #[error("the package speaks {found}; expected {supported}")]
    WrongInterfaceVersion {
        /// The version the package declares (one this node does not run) or its component
        /// exports (another than its `agent.toml` declares).
        found: String,
        /// The versions this node runs (`a, b`), or the one the package declares when its
        /// component exports another.
        supported: String,
    },
    /// Something is larger than this node accepts.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    Oversized {
        /// What: `package`, `component`, `agent.toml`, …
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// A field of `agent.toml` is missing or invalid.
    #[error("agent.toml: field `{field}`: {reason}")]
    InvalidManifest {
        /// The field, e.g. `version` or `models[1].hash`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The component imports something the node does not provide (files, network, …).
    #[error("the component imports `{name}`, which agents cannot use (only the interfaces of the opengrid:agent version its agent.toml declares, and WASI without files, network or environment)")]
    UnsupportedImport {
        /// The import.
        name: String,
    },
    /// The bytes are not a signed agent package.
    #[error("not a signed agent package: {0}")]
    Malformed(String),
    /// Cranelift refused the component (invalid WebAssembly, unsupported proposal, pool limits).
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// Reading the package directory or writing the compile cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a [`Runtime`](crate::Runtime) could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting is out of range.
    #[error("wasm runtime setting `{field}`: {reason}")]
    InvalidSetting {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// wasmtime refused the engine configuration.
    #[error("wasmtime engine: {0}")]
    Engine(String),
    /// The cache directory cannot be created.
    #[error("compile cache {path}: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The epoch ticker thread did not start.
    #[error("epoch ticker thread: {0}")]
    Ticker(std::io::Error),
}
