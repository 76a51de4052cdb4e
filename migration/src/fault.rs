//! Test-only fault hooks, driven by the environment so that process-level tests and the chaos
//! harness can hold a handover at a chosen step and kill a process there.
//!
//! `OPENGRID_FAULT_HANDOVER_PAUSE=<step>:<ms>[,<step>:<ms>…]` pauses the migration server (target
//! side: `transfer`, `activate`) or the handover driver (source side: `freeze`, after the final
//! checkpoint and before activation) for `<ms>` milliseconds and logs
//! `fault hook: handover paused at <step>` first, so a test can wait for that line. Unset (the
//! default, and in production) it costs one atomic load. The hook is read only after the process
//! [`allow`]s it: the node does for `dev = true` configs, and refuses to start with the variable
//! set otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The variable read.
pub const PAUSE_VAR: &str = "OPENGRID_FAULT_HANDOVER_PAUSE";

static ALLOWED: AtomicBool = AtomicBool::new(false);

/// Lets this process's handovers pause as [`PAUSE_VAR`] says (a development or test process
/// only); without it the variable is ignored.
pub fn allow() {
    ALLOWED.store(true, Ordering::Release);
}

fn table() -> &'static HashMap<String, Duration> {
    static EMPTY: OnceLock<HashMap<String, Duration>> = OnceLock::new();
    if !ALLOWED.load(Ordering::Acquire) {
        return EMPTY.get_or_init(HashMap::new);
    }
    static T: OnceLock<HashMap<String, Duration>> = OnceLock::new();
    T.get_or_init(|| {
        std::env::var(PAUSE_VAR)
            .map(|v| parse(&v))
            .unwrap_or_default()
    })
}

/// Parses `step:ms,step:ms`; malformed entries are ignored with a warning.
pub fn parse(v: &str) -> HashMap<String, Duration> {
    let mut out = HashMap::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once(':').map(|(s, ms)| (s, ms.parse::<u64>())) {
            Some((step, Ok(ms))) => {
                out.insert(step.to_string(), Duration::from_millis(ms));
            }
            _ => tracing::warn!(entry = part, "{PAUSE_VAR}: expected <step>:<ms>; ignored"),
        }
    }
    out
}

/// Pauses at `step` if the hook asks for it.
pub async fn pause(step: &str) {
    if let Some(d) = table().get(step) {
        tracing::warn!(
            step,
            ms = d.as_millis() as u64,
            "fault hook: handover paused at {step}"
        );
        eprintln!("fault hook: handover paused at {step}");
        tokio::time::sleep(*d).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_ignores_garbage() {
        let t = super::parse("transfer:300, activate:5,bad,x:y");
        assert_eq!(t.len(), 2);
        assert_eq!(t["transfer"].as_millis(), 300);
        assert_eq!(t["activate"].as_millis(), 5);
    }
}
