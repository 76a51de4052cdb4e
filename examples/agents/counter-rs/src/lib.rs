use opengrid_agent::{export, Agent, Ctx, Error, Value};
struct Counter;
impl Agent for Counter {
    type State = u64;
    fn init(_session: &str) -> u64 {
        0
    }
    fn handle(total: &mut u64, input: Value, _ctx: &Ctx) -> Result<Value, Error> {
        *total += input.as_u64().ok_or(Error::new("bad_input", "a number"))?;
        Ok((*total).into())
    }
}
export!(Counter);
