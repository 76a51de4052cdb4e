//! Answers "the n-th prime" from a table of the first 470,000 primes built into the component
//! (a read-only data segment of about 1.8 MiB): input `n` (1-based JSON number), answer
//! `{"n": n, "prime": p, "asked": k}` where `k` counts the questions this session answered.
use opengrid_agent::{export, serde_json, Agent, Ctx, Error, Value};

/// The first primes, u32 little endian (build.rs).
static PRIMES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/primes.bin"));

struct Primes;

impl Agent for Primes {
    /// Questions answered so far.
    type State = u64;

    fn init(_session: &str) -> u64 {
        0
    }

    fn handle(asked: &mut u64, input: Value, _ctx: &Ctx) -> Result<Value, Error> {
        let count = PRIMES.len() / 4;
        let n = input
            .as_u64()
            .filter(|n| (1..=count as u64).contains(n))
            .ok_or(Error::new("bad_input", format!("a number in 1..={count}")))?;
        let at = (n as usize - 1) * 4;
        let p = u32::from_le_bytes([PRIMES[at], PRIMES[at + 1], PRIMES[at + 2], PRIMES[at + 3]]);
        *asked += 1;
        Ok(serde_json::json!({ "n": n, "prime": p, "asked": *asked }))
    }
}

export!(Primes);
