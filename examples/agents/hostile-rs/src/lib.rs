//! Misbehaves on demand, for the runtime's fault tests: `"loop"` spins forever, `"bomb"` allocates
//! until the memory cap, `"trap"` panics (an `unreachable` trap); `"whoami"`, `{"asset": hash}` and
//! `{"infer": model}` exercise the host imports; anything else is echoed and counted, so a test
//! can see the state survived the fault.
use opengrid_agent::{export, Agent, Ctx, Error, Level, Tensor, Value};

struct Hostile;

impl Agent for Hostile {
    /// Inputs echoed so far.
    type State = u64;

    fn init(_session: &str) -> u64 {
        0
    }

    fn handle(echoed: &mut u64, input: Value, ctx: &Ctx) -> Result<Value, Error> {
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
            Some("whoami") => {
                ctx.log(Level::Info, "whoami");
                Ok(serde_json::json!({ "session": ctx.session_id(), "seq": ctx.seq() }))
            }
            _ if input.get("asset").is_some() => {
                let hash = input["asset"].as_str().unwrap_or_default();
                let bytes = ctx.read_asset(hash)?;
                Ok(String::from_utf8_lossy(&bytes).into_owned().into())
            }
            _ if input.get("infer").is_some() => {
                let model = input["infer"].as_str().unwrap_or_default();
                let t = Tensor {
                    shape: vec![1, 2],
                    data: vec![1.0, 2.0],
                };
                let out = ctx.infer(model, &t)?;
                Ok(serde_json::json!({ "shape": out.shape, "data": out.data }))
            }
            _ => {
                *echoed += 1;
                Ok(serde_json::json!({ "echo": input, "echoed": *echoed }))
            }
        }
    }
}

export!(Hostile);
