//! # opengrid-examples
//!
//! Example session handlers for agent developers, with their manifests in `examples/manifests/`:
//! - [`counter::Counter`]: the smallest handler (a running total).
//! - [`tutor::Tutor`]: an interactive arithmetic tutor whose state (the transcript) grows with
//!   each turn.
//!
//! The `opengrid-demo` binary runs tutor sessions locally on a RocksDB checkpoint store and shows
//! a crash, restart from checkpoint, hibernation and wake-up.

pub mod counter;
pub mod intent;
pub mod tutor;

use std::path::PathBuf;

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
