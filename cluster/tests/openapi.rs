//! The committed OpenAPI document (`docs/openapi.json`) is the one the code generates: a change
//! of the `/v1` API's routes or types without regenerating it fails here (and so in CI).
//! Regenerate with `cargo run --bin opengrid -- openapi > docs/openapi.json` or by running this
//! test with `OPENGRID_UPDATE_OPENAPI=1`.

use std::path::PathBuf;

use opengrid_cluster::openapi::{openapi_json_text, COMMITTED};

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(COMMITTED);
    let generated = openapi_json_text();
    if std::env::var_os("OPENGRID_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()) + 1);
        panic!(
            "{} differs from the OpenAPI document the code generates (first at line {line}): \
             regenerate it with `OPENGRID_UPDATE_OPENAPI=1 cargo test --workspace --test openapi` \
             (or `opengrid openapi > {COMMITTED}`) and review the diff",
            path.display()
        );
    }
}

#[test]
fn every_versioned_session_route_is_described_with_its_errors() {
    let doc: serde_json::Value = serde_json::from_str(&openapi_json_text()).unwrap();
    for (path, method) in [
        ("/v1/sessions", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/sessions/{id}/inputs", "post"),
        ("/v1/sessions/{id}/inputs/{seq}/stream", "get"),
        ("/v1/sessions/{id}/ws", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|k| k.starts_with('4')),
            "{method} {path} names no client error"
        );
    }
}
