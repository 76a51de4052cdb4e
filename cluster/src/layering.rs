//! The node and the RC are separate rooms: `node` never names `rc`, `rc` never names `node`, and
//! `common` names neither. Checked on the source text (code lines, doc comments excluded), so a
//! new import across the line fails this test with the file and line.

use std::path::{Path, PathBuf};

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Lines of code under `room` (a folder of this crate's `src/`) that name any of `forbidden`.
fn crossings(room: &str, forbidden: &[&str]) -> Vec<String> {
    crossings_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(room),
        forbidden,
    )
}

/// Lines of code under `root` that name any of `forbidden` (`crate::<name>`), as `file:line`.
fn crossings_in(root: &Path, forbidden: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rs_files(root, &mut files);
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for name in forbidden {
                if names(code, name) {
                    found.push(format!("{}:{}: {}", f.display(), i + 1, code));
                }
            }
        }
    }
    found
}

/// Whether a code line names `crate::<name>` as a path (`crate::rc::X`, `crate::rc;`) or inside a
/// grouped import (`use crate::{common, rc::RcCore};`).
fn names(code: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let direct = format!("crate::{name}");
    let path_hit = code.match_indices(&direct).any(|(at, _)| {
        !code[at + direct.len()..]
            .chars()
            .next()
            .is_some_and(is_ident)
    });
    let group_hit = code.find("crate::{").is_some_and(|at| {
        code[at + "crate::{".len()..]
            .split(|c: char| !is_ident(c))
            .any(|word| word == name)
    });
    path_hit || group_hit
}

#[test]
fn node_never_names_rc() {
    let c = crossings("node", &["rc"]);
    assert!(c.is_empty(), "node/ names rc/:\n{}", c.join("\n"));
}

#[test]
fn rc_never_names_node() {
    let c = crossings("rc", &["node"]);
    assert!(c.is_empty(), "rc/ names node/:\n{}", c.join("\n"));
}

#[test]
fn common_names_neither_side() {
    let c = crossings("common", &["node", "rc", "cli", "client"]);
    assert!(
        c.is_empty(),
        "common/ names an upper room:\n{}",
        c.join("\n")
    );
}

#[test]
fn the_check_sees_a_crossing() {
    // The scanner itself: a crossing in a code line is found, one in a comment is not.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("inner")).expect("mkdir");
    std::fs::write(
        dir.path().join("inner").join("a.rs"),
        "// crate::rc::RcCore in a comment\nuse crate::rc::RcCore;\nuse crate::common::wire;\n\
         use crate::{common::spec, rc::admission};\nuse crate::rcx::Other;\n",
    )
    .expect("write");
    let hits = crossings_in(dir.path(), &["rc"]);
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(hits[0].ends_with(":2: use crate::rc::RcCore;"), "{hits:?}");
    assert!(
        hits[1].contains(":4: use crate::{common::spec, rc::admission};"),
        "{hits:?}"
    );
}
