//! # opengrid-examples
//!
//! Example session handlers for agent developers, with their manifests in `examples/manifests/`:
//! - [`counter::Counter`]: the smallest handler (a running total).
//! - [`tutor::Tutor`]: an interactive arithmetic tutor whose state (the transcript) grows with
//!   each turn; on a node with an inference plane it classifies each turn's intent
//!   ([`intent::IntentClassifier`], registered by [`node_services`]).
//! - [`scorer::Scorer`]: scores batches of feature vectors with a model named by its hash
//!   (`ctx.infer`); the load of the isolation bench.
//! - [`assistant::Assistant`]: a chat assistant calling an OpenAI-compatible endpoint through
//!   journaled effects (`ctx.fetch`), so a turn is not billed twice across a crash.
//! - [`words::Words`]: streams its input back word by word (`ctx.emit`); the smallest streamed
//!   reply.
//! - [`blob::Blob`]: a counter carrying a padding blob of configurable size (the state of
//!   `opengrid-chaos bench handover`).
//!
//! The `opengrid-demo` binary runs tutor sessions locally on a RocksDB checkpoint store and shows
//! a crash, restart from checkpoint, hibernation and wake-up; `opengrid-colony-demo`
//! ([`colony_demo`]) runs a local grid of real `opengrid` processes.

pub mod assistant;
pub mod blob;
pub mod colony_demo;
pub mod counter;
pub mod intent;
pub mod scorer;
pub mod tool;
pub mod tutor;
pub mod words;

use std::path::PathBuf;
use std::sync::Arc;

use opengrid_actors::{Services, SessionHost};
use opengrid_cluster::node::inference::NodeInference;

/// Registers every example handler on a node's host (`tutor`, `counter`, `scorer`, `blob`,
/// `assistant`, `tool`, `words`).
pub fn register_handlers(host: &SessionHost) {
    host.register(Arc::new(tutor::Tutor));
    host.register(Arc::new(counter::Counter));
    host.register(Arc::new(scorer::Scorer));
    host.register(Arc::new(blob::Blob));
    host.register(Arc::new(assistant::Assistant::from_env()));
    host.register(Arc::new(tool::Tool));
    host.register(Arc::new(words::Words));
}

/// Services the example handlers need from a node's inference plane: when the node serves the
/// text classifier (a model named `text_classifier`, its tokenizer description
/// `text_classifier.reference.json` beside it), the tutor's [`intent::IntentClassifier`].
pub fn node_services(inference: &NodeInference, services: Services) -> Result<Services, String> {
    let Some(info) = inference.model("text_classifier") else {
        tracing::info!("no `text_classifier` model on this node: tutor turns are not classified");
        return Ok(services);
    };
    let dir = info
        .path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let classifier = intent::IntentClassifier::load(inference.runtime(), &dir)
        .map_err(|e| format!("tutor intent classifier: {e}"))?;
    Ok(services.with(classifier))
}

/// Path of a manifest shipped in `examples/manifests/`.
pub fn manifest_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("manifests")
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opengrid_session::Manifest;

    #[test]
    fn shipped_manifests_validate() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            Manifest::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
        assert!(n >= 3);
    }
}
