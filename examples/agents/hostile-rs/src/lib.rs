//! Misbehaves on demand, for the runtime's fault tests: `"loop"` spins forever, `"bomb"` allocates
//! until the memory cap, `"trap"` panics (an `unreachable` trap); anything else is echoed and
//! counted, so a test can see the state survived the fault.
use opengrid_agent::{export, Agent, Ctx, Error, Value};

struct Hostile;

impl Agent for Hostile {
    /// Inputs echoed so far.
    type State = u64;

    fn init(_session: &str) -> u64 {
        0
    }

    fn handle(echoed: &mut u64, input: Value, _ctx: &Ctx) -> Result<Value, Error> {
        match input.as_str() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("bomb") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("trap") => panic!("trap requested"),
            _ => {
                *echoed += 1;
                Ok(serde_json::json!({ "echo": input, "echoed": *echoed }))
            }
        }
    }
}

export!(Hostile);
