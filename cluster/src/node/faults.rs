//! Fault hooks of a node — **a test and chaos-harness hook, off by default, and refused by a
//! config without `dev = true` (ADR 0022); never set it in production.**
//!
//! With `[faults] control_dir = "/some/dir"` in the node config (`OPENGRID_FAULTS_CONTROL_DIR`),
//! a background thread looks at that directory every [`POLL`] and applies what it finds:
//!
//! | file | effect while it exists |
//! |---|---|
//! | `fail-writes` | every checkpoint `put` of the node's local store fails with `StoreError::Backend("injected I/O error …")` — a failing disk: zero-loss inputs are refused (503), bounded-loss sessions keep serving and retry their checkpoint |
//! | `slow-handler` | `<ms> [session-id …]`: every live input of those sessions (all if none named) waits `ms` before the handler runs |
//! | `panic-handler` | `<n> [session-id …]`: every `n`-th live input of those sessions panics inside the handler (the runtime answers `HandlerPanicked`, 503, and restarts the session from its checkpoint) |
//! | `ignore-lease` | **a deliberately broken node**: it serves without a valid lease (lease fencing off), so a partitioned node keeps serving sessions the RC has failed over — the chaos harness must catch it (`OPENGRID_CHAOS_BREAK=fencing`) |
//!
//! The directory need not exist; a file that does not parse is ignored with a warning. Writes
//! of replicas received from peers go through the same local store, so they fail too. The
//! store wrapper ([`faulty_store`]) sits under the replicating store the session host and the
//! mobility layer use; the handler hooks are [`opengrid_actors::FaultHooks`].
//!
//! `opengrid-chaos run` (chaos/src/colony_run/faults.rs) gives every node a control dir and drives the
//! `fail-disk`, `restore-disk`, `slow-handler` and `panic-handler` faults through these files.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use opengrid_actors::{FaultHooks, HookRule};
use opengrid_session::{CheckpointStore, GatedStore, StoreError};
use serde::{Deserialize, Serialize};

/// How often the control dir is looked at.
pub const POLL: Duration = Duration::from_millis(25);
/// Largest control file read.
const MAX_CONTROL_BYTES: u64 = 1 << 20;
/// Most session ids one control file may name.
const MAX_IDS: usize = 100_000;

/// File names in the control dir.
pub const FAIL_WRITES: &str = "fail-writes";
/// See the module docs.
pub const SLOW_HANDLER: &str = "slow-handler";
/// See the module docs.
pub const PANIC_HANDLER: &str = "panic-handler";
/// See the module docs (deliberately broken fencing, to prove the chaos checkers can fail).
pub const IGNORE_LEASE: &str = "ignore-lease";

/// `[faults]` section of the node config (test/chaos hook; see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSection {
    /// Directory of fault control files; empty (the default) = no fault hooks at all.
    pub control_dir: PathBuf,
}

impl FaultSection {
    /// Whether the hooks are on.
    pub fn enabled(&self) -> bool {
        !self.control_dir.as_os_str().is_empty()
    }
}

/// Parses a `slow-handler` / `panic-handler` file: a positive integer, then optional
/// whitespace-separated session ids.
pub fn parse_rule(text: &str) -> Result<HookRule, String> {
    let mut words = text.split_whitespace();
    let first = words
        .next()
        .ok_or_else(|| "empty: expected `<number> [session-id …]`".to_string())?;
    let value: u64 = first
        .parse()
        .map_err(|_| format!("{first:?} is not a non-negative integer"))?;
    if value == 0 {
        return Err("the number must be above 0".into());
    }
    let ids: BTreeSet<String> = words.take(MAX_IDS + 1).map(str::to_string).collect();
    if ids.len() > MAX_IDS {
        return Err(format!("more than {MAX_IDS} session ids"));
    }
    Ok(HookRule {
        value,
        sessions: (!ids.is_empty()).then_some(ids),
    })
}

/// The node's fault switches, driven from the control dir.
#[derive(Debug)]
pub struct FaultControl {
    dir: PathBuf,
    fail_writes: AtomicBool,
    ignore_lease: AtomicBool,
    injected_write_errors: AtomicU64,
    hooks: Arc<FaultHooks>,
}

impl FaultControl {
    /// Starts watching `dir` (a thread that ends when the returned control is dropped).
    pub fn start(dir: PathBuf) -> std::io::Result<Arc<FaultControl>> {
        let c = Arc::new(FaultControl {
            dir,
            fail_writes: AtomicBool::new(false),
            ignore_lease: AtomicBool::new(false),
            injected_write_errors: AtomicU64::new(0),
            hooks: Arc::new(FaultHooks::new()),
        });
        tracing::warn!(dir = %c.dir.display(), "fault hooks enabled ([faults] control_dir): for tests and chaos runs only");
        c.refresh(&mut Seen::default());
        let weak = Arc::downgrade(&c);
        std::thread::Builder::new()
            .name("og-faults".into())
            .spawn(move || watch(weak))?;
        Ok(c)
    }

    /// The handler hooks to put in the session host's config.
    pub fn hooks(&self) -> Arc<FaultHooks> {
        self.hooks.clone()
    }

    /// Whether checkpoint writes fail now.
    pub fn writes_fail(&self) -> bool {
        self.fail_writes.load(Ordering::Acquire)
    }

    /// Whether the node serves without a lease now (deliberately broken fencing).
    pub fn ignores_lease(&self) -> bool {
        self.ignore_lease.load(Ordering::Acquire)
    }

    /// `Err` (counted) while checkpoint writes fail: the gate of [`faulty_store`].
    pub fn check_write(&self) -> Result<(), StoreError> {
        if !self.writes_fail() {
            return Ok(());
        }
        self.injected_write_errors.fetch_add(1, Ordering::Relaxed);
        Err(StoreError::Backend(format!(
            "injected I/O error ({} exists in the fault control dir {})",
            FAIL_WRITES,
            self.dir.display()
        )))
    }

    /// Checkpoint writes refused so far.
    pub fn injected_write_errors(&self) -> u64 {
        self.injected_write_errors.load(Ordering::Relaxed)
    }

    fn refresh(&self, seen: &mut Seen) {
        let fail = self.dir.join(FAIL_WRITES).exists();
        if fail != self.fail_writes.swap(fail, Ordering::AcqRel) {
            if fail {
                tracing::warn!(dir = %self.dir.display(), "fault hook: checkpoint writes now fail (injected I/O error)");
            } else {
                tracing::warn!(dir = %self.dir.display(), "fault hook: checkpoint writes work again");
            }
        }
        let ignore = self.dir.join(IGNORE_LEASE).exists();
        if ignore != self.ignore_lease.swap(ignore, Ordering::AcqRel) && ignore {
            tracing::error!(dir = %self.dir.display(), "fault hook: lease fencing DISABLED (ignore-lease): this node serves without a lease");
        }
        let slow = read_rule(&self.dir.join(SLOW_HANDLER));
        if slow != seen.slow {
            tracing::warn!(rule = ?slow.as_ref().map(summary), "fault hook: slow handler");
            self.hooks.set_slow(slow.clone());
            seen.slow = slow;
        }
        let panic = read_rule(&self.dir.join(PANIC_HANDLER));
        if panic != seen.panic {
            tracing::warn!(rule = ?panic.as_ref().map(summary), "fault hook: panicking handler");
            self.hooks.set_panic(panic.clone());
            seen.panic = panic;
        }
    }
}

fn summary(r: &HookRule) -> String {
    match &r.sessions {
        None => format!("{} (every session)", r.value),
        Some(s) => format!("{} ({} session(s))", r.value, s.len()),
    }
}

#[derive(Default)]
struct Seen {
    slow: Option<HookRule>,
    panic: Option<HookRule>,
}

fn watch(weak: Weak<FaultControl>) {
    let mut seen = Seen::default();
    loop {
        std::thread::sleep(POLL);
        let Some(c) = weak.upgrade() else { return };
        c.refresh(&mut seen);
    }
}

/// The rule in `path`, `None` when the file is absent or does not parse (warned).
fn read_rule(path: &Path) -> Option<HookRule> {
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    if let Err(e) = f.take(MAX_CONTROL_BYTES).read_to_string(&mut text) {
        tracing::warn!(path = %path.display(), "fault control file unreadable: {e}");
        return None;
    }
    match parse_rule(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), "fault control file ignored: {e}");
            None
        }
    }
}

/// `inner` behind the `fail-writes` switch: every `put` fails with an injected I/O error while
/// [`FaultControl::writes_fail`]; everything else goes to the real store.
pub fn faulty_store(inner: Arc<dyn CheckpointStore>, control: Arc<FaultControl>) -> GatedStore {
    GatedStore::new(inner, move |_| control.check_write())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opengrid_session::{Checkpoint, Epoch, MemoryCheckpointStore, Seq, SessionId};
    use std::time::Instant;

    #[test]
    fn rules_parse_and_bad_ones_are_named() {
        let r = parse_rule("200\n").unwrap();
        assert_eq!((r.value, r.sessions), (200, None));
        let r = parse_rule("3 s1 s2\ns3").unwrap();
        assert_eq!(r.value, 3);
        assert_eq!(r.sessions.unwrap().len(), 3);
        assert!(parse_rule("").unwrap_err().contains("empty"));
        assert!(parse_rule("0").unwrap_err().contains("above 0"));
        assert!(parse_rule("-5 a").unwrap_err().contains("\"-5\""));
        assert!(parse_rule("\u{0}\u{ff}").is_err());
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "not within 5 s: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_control_dir_switches_writes_and_handler_hooks() {
        let dir = tempfile::tempdir().unwrap();
        let control = FaultControl::start(dir.path().join("faults")).unwrap();
        let store = faulty_store(Arc::new(MemoryCheckpointStore::new()), control.clone());
        let id = SessionId::random();
        let cp = |seq| Checkpoint::new(id.clone(), Epoch(1), Seq(seq), "h", 1, vec![seq as u8]);
        store.put(&cp(1)).unwrap();
        // A missing dir is no fault; then the flag file appears.
        std::fs::create_dir_all(dir.path().join("faults")).unwrap();
        std::fs::write(dir.path().join("faults").join(FAIL_WRITES), b"").unwrap();
        wait_for("writes fail", || control.writes_fail());
        let e = store.put(&cp(2)).unwrap_err();
        assert!(e.to_string().contains("injected I/O error"), "{e}");
        assert_eq!(store.get_latest(&id).unwrap().unwrap().seq, Seq(1));
        std::fs::remove_file(dir.path().join("faults").join(FAIL_WRITES)).unwrap();
        wait_for("writes work", || !control.writes_fail());
        store.put(&cp(2)).unwrap();
        assert_eq!(control.injected_write_errors(), 1);

        let hooks = control.hooks();
        std::fs::write(dir.path().join("faults").join(SLOW_HANDLER), "150 a").unwrap();
        wait_for("slow rule", || hooks.slow().is_some());
        assert_eq!(hooks.decide("a").delay, Some(Duration::from_millis(150)));
        assert_eq!(hooks.decide("b").delay, None);
        std::fs::write(dir.path().join("faults").join(PANIC_HANDLER), "1").unwrap();
        wait_for("panic rule", || hooks.panic_rule().is_some());
        assert!(hooks.decide("b").panic);
        // An unparsable file is no rule.
        std::fs::write(dir.path().join("faults").join(PANIC_HANDLER), "often").unwrap();
        wait_for("panic rule cleared", || hooks.panic_rule().is_none());
        std::fs::remove_file(dir.path().join("faults").join(SLOW_HANDLER)).unwrap();
        wait_for("slow rule cleared", || hooks.slow().is_none());
    }
}
