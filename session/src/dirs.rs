//! Where OpenGrid keeps its files by default.

use std::path::PathBuf;

/// The default data dir of a node or RC (`role`: `node`, `rc`, `ledger`): per user, never one shared path under the
/// system temp dir — `$XDG_STATE_HOME/opengrid/<role>`, else `~/.local/state/opengrid/<role>`,
/// else (no home) `<temp>/opengrid-<uid>/<role>`. Services set `data_dir` explicitly
/// (`/var/lib/opengrid/…` in the sample configs and systemd units).
pub fn default_data_dir(role: &str) -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    default_data_dir_from(role, env("XDG_STATE_HOME"), env("HOME"))
}

fn default_data_dir_from(role: &str, xdg_state: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    if let Some(x) = xdg_state.filter(|p| p.is_absolute()) {
        return x.join("opengrid").join(role);
    }
    if let Some(h) = home.filter(|p| p.is_absolute()) {
        return h.join(".local/state/opengrid").join(role);
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir()
        .join(format!("opengrid-{uid}"))
        .join(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_data_dirs_are_per_user() {
        let p = |x: Option<&str>, h: Option<&str>| {
            default_data_dir_from("node", x.map(PathBuf::from), h.map(PathBuf::from))
        };
        assert_eq!(
            p(Some("/s"), Some("/home/a")),
            PathBuf::from("/s/opengrid/node")
        );
        assert_eq!(
            p(None, Some("/home/a")),
            PathBuf::from("/home/a/.local/state/opengrid/node")
        );
        // Relative values are ignored (XDG says so); no home at all: a per-uid temp dir.
        let t = p(Some("rel"), None);
        assert!(t.starts_with(std::env::temp_dir()), "{t:?}");
        assert!(t.to_string_lossy().contains("opengrid-"), "{t:?}");
        assert_ne!(t, std::env::temp_dir().join("opengrid-node"));
    }
}
