//! Agent packages: `agent.toml` + one component, in a canonical byte layout, content-addressed by
//! blake3 and signed by the developer's `did:mycel` ed25519 key (ADR 0028).
//!
//! Layout of a signed package (all integers bincode 2 `standard()`: little-endian varints):
//!
//! ```text
//! "OGAP" ‖ bincode(SignedWire { format: 1, body: bytes, signer: [u8; 32], signature: [u8; 64] })
//! body = bincode(Body { format: 1, name, version, description, interface, skills, persona,
//!                       manifest_json, models: [(name, hash)], assets: [(name, hash)], component })
//! hash = blake3(body)            signature = ed25519(signer, "opengrid-agent-package/v1\0" ‖ hash)
//! ```
//!
//! `manifest_json` is the default manifest (an inline TOML table, opaque here) as canonical JSON:
//! object keys sorted, no whitespace. So the same `agent.toml` and component always give the same
//! bytes and hash, whatever the key order of the TOML.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use opengrid_session::Did;
use serde::Deserialize;

use crate::error::PackageError;

/// The first agent interface, as `agent.toml` names it: what a package that uses no durable
/// effects declares, so it runs on every node. [`InterfaceVersion`] lists all a node runs.
pub const INTERFACE_VERSION: &str = "opengrid:agent@0.1.0";
/// The export a 0.1.0 component must have.
pub const GUEST_EXPORT: &str = "opengrid:agent/guest@0.1.0";

/// A version of the agent interface (`wit/agent.wit` and its frozen predecessors under
/// `wit/deps/`) this node runs side by side (ADR 0034). A package declares one in `agent.toml`
/// (`interface`); its component must export that version's `guest` and import only that version's
/// interfaces (and WASI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterfaceVersion {
    /// `opengrid:agent@0.1.0`: `host` (log, infer, read-asset, session-id, seq).
    V0_1,
    /// `opengrid:agent@0.2.0`: 0.1.0's `host` plus `effects` (durable effects, ADR 0032).
    V0_2,
}

impl InterfaceVersion {
    /// Every version a node runs, oldest first.
    pub const ALL: [InterfaceVersion; 2] = [InterfaceVersion::V0_1, InterfaceVersion::V0_2];
    /// The newest: what new packages that use durable effects declare.
    pub const LATEST: InterfaceVersion = InterfaceVersion::V0_2;

    /// As `agent.toml` names it: `opengrid:agent@0.2.0`.
    pub fn name(self) -> &'static str {
        match self {
            InterfaceVersion::V0_1 => INTERFACE_VERSION,
            InterfaceVersion::V0_2 => "opengrid:agent@0.2.0",
        }
    }

    /// The version number alone: `0.2.0`.
    pub fn number(self) -> &'static str {
        match self {
            InterfaceVersion::V0_1 => "0.1.0",
            InterfaceVersion::V0_2 => "0.2.0",
        }
    }

    /// The export a component of this version must have: `opengrid:agent/guest@0.2.0`.
    pub fn guest_export(self) -> &'static str {
        match self {
            InterfaceVersion::V0_1 => GUEST_EXPORT,
            InterfaceVersion::V0_2 => "opengrid:agent/guest@0.2.0",
        }
    }

    /// The version `agent.toml` names, if this node runs it.
    pub fn parse(name: &str) -> Option<InterfaceVersion> {
        InterfaceVersion::ALL.into_iter().find(|v| v.name() == name)
    }

    /// Whether a component of this version may import `name` (besides WASI): its own version's
    /// `host`, `types` and (from 0.2.0) `effects`.
    pub fn provides(self, name: &str) -> bool {
        let Some((interface, version)) = name
            .strip_prefix("opengrid:agent/")
            .and_then(|rest| rest.split_once('@'))
        else {
            return false;
        };
        version == self.number()
            && match interface {
                "host" | "types" => true,
                "effects" => self != InterfaceVersion::V0_1,
                _ => false,
            }
    }

    /// All versions, as a list for messages: `opengrid:agent@0.1.0, opengrid:agent@0.2.0`.
    pub fn all_names() -> String {
        InterfaceVersion::ALL
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for InterfaceVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
/// Magic bytes at the start of a signed package.
const MAGIC: &[u8; 4] = b"OGAP";
/// Version of the byte layout above.
const FORMAT: u16 = 1;
/// Domain separation of package signatures.
const SIGNING_CONTEXT: &[u8] = b"opengrid-agent-package/v1\0";
/// Hard ceiling of the decoder, whatever the limits (bincode needs a constant).
const DECODE_CEILING: usize = 1 << 30;

/// Size limits a node applies to packages (later: from the colony's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageLimits {
    /// Largest signed package, bytes.
    pub max_package_bytes: u64,
    /// Largest component inside it, bytes.
    pub max_component_bytes: u64,
    /// Largest `agent.toml`, bytes, and largest text field (description, persona).
    pub max_text_bytes: u64,
}

impl Default for PackageLimits {
    fn default() -> Self {
        // A componentize-py agent is ~18 MB (CPython inside); leave room for libraries.
        PackageLimits {
            max_package_bytes: 96 << 20,
            max_component_bytes: 80 << 20,
            max_text_bytes: 256 << 10,
        }
    }
}

/// A model or an asset of the package: a name the agent uses and the blake3 hash (hex) of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// Name the agent refers to it by.
    pub name: String,
    /// blake3 of its bytes, 64 lowercase hex digits.
    pub hash: String,
}

/// What `agent.toml` declares.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentMeta {
    /// Package name (`[a-z0-9-]`, ≤ 64).
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// One-line description.
    pub description: String,
    /// Interface version, `opengrid:agent@0.1.0`.
    pub interface: String,
    /// Skills, for the colony's capability index.
    pub skills: Vec<String>,
    /// Persona / system prompt text.
    pub persona: String,
    /// The default session manifest, opaque here (the node validates it as a `Manifest`).
    pub manifest: serde_json::Value,
    /// Models the agent may `infer` with.
    pub models: Vec<Blob>,
    /// Assets the agent may `read-asset`.
    pub assets: Vec<Blob>,
}

/// `agent.toml` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentToml {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    interface: String,
    /// Component file, relative to the package directory.
    #[serde(default = "default_component")]
    component: String,
    #[serde(default)]
    skills: Vec<String>,
    #[serde(default)]
    persona: String,
    #[serde(default)]
    manifest: Option<toml::Table>,
    #[serde(default)]
    models: Vec<BlobToml>,
    #[serde(default)]
    assets: Vec<BlobToml>,
}

/// A model or asset as `agent.toml` writes it: a name and its hash, or a file in the package
/// directory (hashed when the package is built; uploaded to the RC by `opengrid agent push`),
/// or both (then they must agree).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobToml {
    name: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    file: Option<String>,
}

fn default_component() -> String {
    "agent.wasm".into()
}

/// The canonical body, hashed and signed.
#[derive(bincode::Encode, bincode::Decode)]
struct Body {
    format: u16,
    name: String,
    version: String,
    description: String,
    interface: String,
    skills: Vec<String>,
    persona: String,
    manifest_json: String,
    models: Vec<Blob>,
    assets: Vec<Blob>,
    component: Vec<u8>,
}

#[derive(bincode::Encode, bincode::Decode)]
struct SignedWire {
    format: u16,
    body: Vec<u8>,
    signer: [u8; 32],
    signature: [u8; 64],
}

/// An unsigned package: metadata and component.
#[derive(Debug, Clone)]
pub struct Package {
    /// What `agent.toml` declares.
    pub meta: AgentMeta,
    /// The component's bytes.
    pub component: Vec<u8>,
    /// Model and asset files named in `agent.toml` (hash, path): what a push uploads first.
    pub files: Vec<(String, std::path::PathBuf)>,
}

/// Where [`Package::build`] takes a package from.
pub enum PackageSource<'a> {
    /// A directory holding `agent.toml` and the component file it names.
    Dir(&'a Path),
    /// `agent.toml` text and the component's bytes.
    Parts {
        /// The text of `agent.toml` (its `component` field is ignored).
        agent_toml: &'a str,
        /// The component.
        component: Vec<u8>,
    },
}

impl Package {
    /// Reads, validates and signs a package.
    pub fn build(
        source: PackageSource<'_>,
        key: &SigningKey,
    ) -> Result<SignedPackage, PackageError> {
        let package = match source {
            PackageSource::Dir(dir) => Package::from_dir(dir)?,
            PackageSource::Parts {
                agent_toml,
                component,
            } => Package::from_parts(agent_toml, component)?,
        };
        Ok(package.sign(key))
    }

    /// A package from a directory holding `agent.toml` and the component it names.
    pub fn from_dir(dir: &Path) -> Result<Package, PackageError> {
        let limits = PackageLimits::default();
        let toml_path = dir.join("agent.toml");
        let text = read_limited(&toml_path, limits.max_text_bytes, "agent.toml")?;
        let text = String::from_utf8(text).map_err(|e| PackageError::InvalidManifest {
            field: "agent.toml".into(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let parsed = parse_toml(&text)?;
        if parsed.component.contains("..") || Path::new(&parsed.component).is_absolute() {
            return Err(PackageError::InvalidManifest {
                field: "component".into(),
                reason: "a path inside the package directory".into(),
            });
        }
        let component = read_limited(
            &dir.join(&parsed.component),
            limits.max_component_bytes,
            "component",
        )?;
        Self::from_toml(parsed, component, Some(dir))
    }

    /// A package from the text of `agent.toml` and the component's bytes.
    pub fn from_parts(agent_toml: &str, component: Vec<u8>) -> Result<Package, PackageError> {
        Self::from_toml(parse_toml(agent_toml)?, component, None)
    }

    fn from_toml(
        t: AgentToml,
        component: Vec<u8>,
        dir: Option<&Path>,
    ) -> Result<Package, PackageError> {
        let version =
            semver::Version::parse(&t.version).map_err(|e| PackageError::InvalidManifest {
                field: "version".into(),
                reason: format!("`{}` is not a semantic version: {e}", t.version),
            })?;
        let manifest = match t.manifest {
            Some(table) => {
                serde_json::to_value(table).map_err(|e| PackageError::InvalidManifest {
                    field: "manifest".into(),
                    reason: e.to_string(),
                })?
            }
            None => serde_json::Value::Object(Default::default()),
        };
        let mut files = Vec::new();
        let models = resolve_blobs("models", t.models, dir, &mut files)?;
        let assets = resolve_blobs("assets", t.assets, dir, &mut files)?;
        let meta = AgentMeta {
            name: t.name,
            version,
            description: t.description,
            interface: t.interface,
            skills: t.skills,
            persona: t.persona,
            manifest,
            models,
            assets,
        };
        validate(&meta, component.len() as u64, &PackageLimits::default())?;
        Ok(Package {
            meta,
            component,
            files,
        })
    }

    /// The canonical body bytes and their hash.
    fn body(&self) -> Vec<u8> {
        let m = &self.meta;
        let body = Body {
            format: FORMAT,
            name: m.name.clone(),
            version: m.version.to_string(),
            description: m.description.clone(),
            interface: m.interface.clone(),
            skills: m.skills.clone(),
            persona: m.persona.clone(),
            manifest_json: canonical_json(&m.manifest),
            models: m.models.clone(),
            assets: m.assets.clone(),
            component: self.component.clone(),
        };
        // Encoding owned strings and byte vectors into a Vec cannot fail.
        bincode::encode_to_vec(&body, bincode::config::standard()).unwrap_or_default()
    }

    /// Signs the canonical encoding with the developer's key.
    pub fn sign(&self, key: &SigningKey) -> SignedPackage {
        let body = self.body();
        let hash = blake3::hash(&body);
        let signature = key.sign(&signing_message(hash.as_bytes()));
        SignedPackage {
            body,
            signer: key.verifying_key().to_bytes(),
            signature: signature.to_bytes(),
        }
    }
}

/// A package with its signature, as it travels (RC push endpoint, disk).
#[derive(Debug, Clone)]
pub struct SignedPackage {
    body: Vec<u8>,
    signer: [u8; 32],
    signature: [u8; 64],
}

impl SignedPackage {
    /// The content hash: blake3 of the canonical body, hex.
    pub fn hash(&self) -> String {
        blake3::hash(&self.body).to_hex().to_string()
    }

    /// The wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = SignedWire {
            format: FORMAT,
            body: self.body.clone(),
            signer: self.signer,
            signature: self.signature,
        };
        let mut out = MAGIC.to_vec();
        out.extend(bincode::encode_to_vec(&wire, bincode::config::standard()).unwrap_or_default());
        out
    }

    /// Decodes wire bytes (no verification yet: call [`verify`](Self::verify)), refusing more
    /// than `limits.max_package_bytes`.
    pub fn from_bytes(bytes: &[u8], limits: &PackageLimits) -> Result<SignedPackage, PackageError> {
        if bytes.len() as u64 > limits.max_package_bytes {
            return Err(PackageError::Oversized {
                what: "package".into(),
                size: bytes.len() as u64,
                limit: limits.max_package_bytes,
            });
        }
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| PackageError::Malformed("missing the `OGAP` magic".into()))?;
        let cfg = bincode::config::standard().with_limit::<DECODE_CEILING>();
        let (wire, used): (SignedWire, usize) = bincode::decode_from_slice(rest, cfg)
            .map_err(|e| PackageError::Malformed(e.to_string()))?;
        if used != rest.len() {
            return Err(PackageError::Malformed(format!(
                "{} trailing bytes",
                rest.len() - used
            )));
        }
        if wire.format != FORMAT {
            return Err(PackageError::Malformed(format!(
                "layout version {} (this node reads {FORMAT})",
                wire.format
            )));
        }
        Ok(SignedPackage {
            body: wire.body,
            signer: wire.signer,
            signature: wire.signature,
        })
    }

    /// Checks the hash (when the caller knows which package it wants), the signature and the
    /// metadata, with the default limits.
    pub fn verify(&self, expected_hash: Option<&str>) -> Result<VerifiedPackage, PackageError> {
        self.verify_with(expected_hash, &PackageLimits::default())
    }

    /// [`verify`](Self::verify) with explicit limits.
    pub fn verify_with(
        &self,
        expected_hash: Option<&str>,
        limits: &PackageLimits,
    ) -> Result<VerifiedPackage, PackageError> {
        let hash = blake3::hash(&self.body);
        let actual = hash.to_hex().to_string();
        if let Some(expected) = expected_hash {
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(PackageError::HashMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        let bad_signature = || PackageError::BadSignature {
            signer: match VerifyingKey::from_bytes(&self.signer) {
                Ok(k) => Did::from_public_key(&k).to_string(),
                Err(_) => hex(&self.signer),
            },
        };
        let key = VerifyingKey::from_bytes(&self.signer).map_err(|_| bad_signature())?;
        key.verify_strict(
            &signing_message(hash.as_bytes()),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| bad_signature())?;
        let cfg = bincode::config::standard().with_limit::<DECODE_CEILING>();
        let (body, used): (Body, usize) = bincode::decode_from_slice(&self.body, cfg)
            .map_err(|e| PackageError::Malformed(format!("body: {e}")))?;
        if used != self.body.len() || body.format != FORMAT {
            return Err(PackageError::Malformed(
                "body: trailing bytes or unknown layout".into(),
            ));
        }
        let version =
            semver::Version::parse(&body.version).map_err(|e| PackageError::InvalidManifest {
                field: "version".into(),
                reason: e.to_string(),
            })?;
        let manifest = serde_json::from_str(&body.manifest_json).map_err(|e| {
            PackageError::InvalidManifest {
                field: "manifest".into(),
                reason: e.to_string(),
            }
        })?;
        let meta = AgentMeta {
            name: body.name,
            version,
            description: body.description,
            interface: body.interface,
            skills: body.skills,
            persona: body.persona,
            manifest,
            models: body.models,
            assets: body.assets,
        };
        validate(&meta, body.component.len() as u64, limits)?;
        Ok(VerifiedPackage {
            hash: actual,
            signer: Did::from_public_key(&key),
            meta,
            component: body.component,
        })
    }
}

/// A package whose hash, signature and metadata were checked; the only thing the runtime loads.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    hash: String,
    signer: Did,
    meta: AgentMeta,
    component: Vec<u8>,
}

impl VerifiedPackage {
    /// The content hash (hex blake3 of the canonical body).
    pub fn hash(&self) -> &str {
        &self.hash
    }
    /// Who signed it.
    pub fn signer(&self) -> &Did {
        &self.signer
    }
    /// What `agent.toml` declared.
    pub fn meta(&self) -> &AgentMeta {
        &self.meta
    }
    /// The component's bytes.
    pub fn component(&self) -> &[u8] {
        &self.component
    }
    /// The agent interface it declares (checked to be one this node runs).
    pub fn interface(&self) -> InterfaceVersion {
        InterfaceVersion::parse(&self.meta.interface).unwrap_or(InterfaceVersion::V0_1)
    }
}

fn parse_toml(text: &str) -> Result<AgentToml, PackageError> {
    toml::from_str(text).map_err(|e| PackageError::InvalidManifest {
        field: e
            .span()
            .map(|s| format!("agent.toml at bytes {}..{}", s.start, s.end))
            .unwrap_or_else(|| "agent.toml".into()),
        reason: e.message().to_string(),
    })
}

/// `agent.toml`'s models or assets as the package records them (name, hash): a `file` is hashed
/// (streaming) and remembered in `files` for the push to upload.
fn resolve_blobs(
    list: &str,
    entries: Vec<BlobToml>,
    dir: Option<&Path>,
    files: &mut Vec<(String, std::path::PathBuf)>,
) -> Result<Vec<Blob>, PackageError> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let invalid = |field: &str, reason: String| PackageError::InvalidManifest {
            field: format!("{list}[{i}].{field}"),
            reason,
        };
        let hash = match (&e.file, e.hash) {
            (None, Some(h)) => h,
            (None, None) => return Err(invalid("hash", "give `hash` or `file`".into())),
            (Some(f), declared) => {
                let Some(dir) = dir else {
                    return Err(invalid("file", "a file needs the package directory".into()));
                };
                if f.contains("..") || Path::new(f).is_absolute() {
                    return Err(invalid(
                        "file",
                        "a path inside the package directory".into(),
                    ));
                }
                let path = dir.join(f);
                let mut h = blake3::Hasher::new();
                std::fs::File::open(&path)
                    .and_then(|f| h.update_reader(f).map(drop))
                    .map_err(|source| PackageError::Io {
                        path: path.clone(),
                        source,
                    })?;
                let actual = h.finalize().to_hex().to_string();
                if let Some(d) = declared {
                    if d != actual {
                        return Err(invalid(
                            "hash",
                            format!("{d} does not match {f}, which hashes to {actual}"),
                        ));
                    }
                }
                files.push((actual.clone(), path));
                actual
            }
        };
        out.push(Blob { name: e.name, hash });
    }
    Ok(out)
}

fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, PackageError> {
    let io = |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > limit {
        return Err(PackageError::Oversized {
            what: what.into(),
            size,
            limit,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Checks what a package declares; names the bad field.
fn validate(
    meta: &AgentMeta,
    component_len: u64,
    limits: &PackageLimits,
) -> Result<(), PackageError> {
    let invalid = |field: String, reason: &str| PackageError::InvalidManifest {
        field,
        reason: reason.to_string(),
    };
    if InterfaceVersion::parse(&meta.interface).is_none() {
        return Err(PackageError::WrongInterfaceVersion {
            found: meta.interface.clone(),
            supported: InterfaceVersion::all_names(),
        });
    }
    if component_len > limits.max_component_bytes {
        return Err(PackageError::Oversized {
            what: "component".into(),
            size: component_len,
            limit: limits.max_component_bytes,
        });
    }
    let name_ok = !meta.name.is_empty()
        && meta.name.len() <= 64
        && meta
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(invalid(
            "name".into(),
            "1 to 64 characters of a-z, 0-9 and `-`",
        ));
    }
    for (field, text) in [
        ("description", &meta.description),
        ("persona", &meta.persona),
    ] {
        if text.len() as u64 > limits.max_text_bytes {
            return Err(PackageError::Oversized {
                what: field.into(),
                size: text.len() as u64,
                limit: limits.max_text_bytes,
            });
        }
    }
    if meta.skills.len() > 256 {
        return Err(invalid("skills".into(), "at most 256 skills"));
    }
    for (i, s) in meta.skills.iter().enumerate() {
        if s.is_empty() || s.len() > 128 {
            return Err(invalid(format!("skills[{i}]"), "1 to 128 characters"));
        }
    }
    if !meta.manifest.is_object() {
        return Err(invalid("manifest".into(), "an inline table"));
    }
    for (list, blobs) in [("models", &meta.models), ("assets", &meta.assets)] {
        if blobs.len() > 1024 {
            return Err(invalid(list.into(), "at most 1024 entries"));
        }
        for (i, b) in blobs.iter().enumerate() {
            if b.name.is_empty() || b.name.len() > 128 {
                return Err(invalid(format!("{list}[{i}].name"), "1 to 128 characters"));
            }
            let hash_ok = b.hash.len() == 64
                && b.hash
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
            if !hash_ok {
                return Err(invalid(
                    format!("{list}[{i}].hash"),
                    "a blake3 hash: 64 lowercase hex digits",
                ));
            }
        }
    }
    Ok(())
}

fn signing_message(hash: &[u8; 32]) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(hash);
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys sorted at every level and no whitespace, whatever map type serde_json
/// was built with.
pub fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
name = "counter"
version = "1.2.3"
interface = "opengrid:agent@0.1.0"
skills = ["count"]
[manifest]
b = 1
a = { y = 2, x = [1, 2] }
"#;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn same_package_same_bytes_whatever_the_key_order() {
        let reordered = TOML.replace(
            "b = 1\na = { y = 2, x = [1, 2] }",
            "a = { x = [1, 2], y = 2 }\nb = 1",
        );
        assert_ne!(reordered, TOML);
        let p1 = Package::from_parts(TOML, vec![1, 2, 3])
            .unwrap()
            .sign(&key());
        let p2 = Package::from_parts(&reordered, vec![1, 2, 3])
            .unwrap()
            .sign(&key());
        assert_eq!(p1.to_bytes(), p2.to_bytes());
        assert_eq!(
            canonical_json(&p1.verify(None).unwrap().meta().manifest),
            r#"{"a":{"x":[1,2],"y":2},"b":1}"#
        );
    }

    #[test]
    fn round_trip_and_tamper() {
        let signed = Package::from_parts(TOML, vec![9; 100])
            .unwrap()
            .sign(&key());
        let bytes = signed.to_bytes();
        let back = SignedPackage::from_bytes(&bytes, &PackageLimits::default()).unwrap();
        let v = back.verify(Some(&signed.hash())).unwrap();
        assert_eq!(v.meta().name, "counter");
        assert_eq!(v.component(), &[9; 100][..]);
        assert_eq!(v.signer(), &Did::from_public_key(&key().verifying_key()));
        // One flipped bit anywhere in the body breaks the signature.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 100] ^= 1;
        let err = SignedPackage::from_bytes(&bad, &PackageLimits::default())
            .unwrap()
            .verify(None);
        assert!(
            matches!(err, Err(PackageError::BadSignature { .. })),
            "{err:?}"
        );
        // Truncated bytes never panic.
        for cut in [0, 3, 10, n / 2, n - 1] {
            assert!(SignedPackage::from_bytes(&bytes[..cut], &PackageLimits::default()).is_err());
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            ("version = \"1.2.3\"", "version = \"one\"", "version"),
            ("name = \"counter\"", "name = \"Counter!\"", "name"),
            ("skills = [\"count\"]", "skills = [\"\"]", "skills[0]"),
        ];
        for (from, to, field) in cases {
            match Package::from_parts(&TOML.replace(from, to), vec![]) {
                Err(PackageError::InvalidManifest { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{to}: {other:?}"),
            }
        }
        let t = format!("{TOML}[[models]]\nname = \"m\"\nhash = \"abc\"\n");
        match Package::from_parts(&t, vec![]) {
            Err(PackageError::InvalidManifest { field, .. }) => assert_eq!(field, "models[0].hash"),
            other => panic!("{other:?}"),
        }
        match Package::from_parts(&TOML.replace("@0.1.0", "@0.3.0"), vec![]) {
            Err(PackageError::WrongInterfaceVersion { found, supported }) => {
                assert_eq!(found, "opengrid:agent@0.3.0");
                assert_eq!(supported, "opengrid:agent@0.1.0, opengrid:agent@0.2.0");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Package::from_parts(&format!("extra = 1\n{TOML}"), vec![]),
            Err(PackageError::InvalidManifest { .. })
        ));
    }
}
