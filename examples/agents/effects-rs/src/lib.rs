//! Runs the durable-effect imports on demand, for the runtime's effect tests (ADR 0034). An input
//! is `{"steps": [...], "propagate": false}`; each step is
//!
//! - `"now"`, `"random"`: `ctx.now_ms()`, `ctx.random_u64()`;
//! - `{"fetch": {"url": "…", "method": "POST", "headers": [["k", "v"]], "body": "…",
//!   "body_len": n}}`: `ctx.fetch`; the body is `body`, else `body_len` bytes of `x`, else the JSON
//!   of the results so far (so the remote side sees what the agent saw before the request);
//! - `{"emit": "…"}`: `ctx.emit`;
//! - `{"schedule": {"after_ms": n | "at_ms": n, "input": …}}`: `ctx.schedule` (its answer: the id);
//! - `{"cancel": "id"}`: `ctx.cancel`;
//! - `{"call": {"target": "…", "input": …, "deadline_ms": n}}`: `ctx.call`;
//! - `"source"`: `ctx.source()` as `{"client": seq}`, `{"timer": id}` or `{"call": caller}`;
//! - `"trap"`: panics (a trap: the input fails, the state stays);
//! - `"state"`: the state.
//!
//! The answer is `{"results": [{"ok": …} | {"err": {"code", "message"}}], "inputs": n}`; a fetch's
//! `ok` is `{"status", "body"}` (the body as text). With `"propagate": true` the first error is
//! returned as the agent's own. `init` calls `now-ms`, which the node refuses there, and keeps the
//! answer in the state (`init_now`).
use opengrid_agent::serde_json::{json, Value};
use opengrid_agent::{export, Agent, Ctx, Error, HttpRequest, Source, When};

struct Effects;

fn fetch_request(spec: &Value, results: &[Value]) -> HttpRequest {
    let body = match (spec["body"].as_str(), spec["body_len"].as_u64()) {
        (Some(b), _) => b.as_bytes().to_vec(),
        (None, Some(n)) => vec![b'x'; n as usize],
        (None, None) => Value::from(results.to_vec()).to_string().into_bytes(),
    };
    let headers = spec["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let s = |i: usize| h[i].as_str().unwrap_or_default().to_string();
                    (s(0), s(1))
                })
                .collect()
        })
        .unwrap_or_default();
    HttpRequest {
        method: spec["method"].as_str().unwrap_or("POST").to_string(),
        url: spec["url"].as_str().unwrap_or_default().to_string(),
        headers,
        body,
    }
}

impl Agent for Effects {
    /// `{"inputs": n, "init_now": "…"}`.
    type State = Value;

    fn init(_session: &str) -> Value {
        // Effects belong to an input: the node refuses this one.
        let init_now = match opengrid_agent::bindings::api::effects::now_ms() {
            Ok(t) => format!("ok: {t}"),
            Err(e) => format!("{}: {}", e.code, e.message),
        };
        json!({"inputs": 0, "init_now": init_now})
    }

    fn handle(state: &mut Value, input: Value, ctx: &Ctx) -> Result<Value, Error> {
        let steps = input["steps"]
            .as_array()
            .ok_or_else(|| Error::new("bad_input", "expected {\"steps\": [...]}"))?;
        let mut results: Vec<Value> = Vec::new();
        for step in steps {
            let r: Result<Value, Error> = match (step.as_str(), step.get("fetch")) {
                (Some("now"), _) => ctx.now_ms().map(Value::from),
                (Some("random"), _) => ctx.random_u64().map(Value::from),
                (Some("trap"), _) => panic!("trap step"),
                (Some("state"), _) => Ok(state.clone()),
                (Some("source"), _) => Ok(match ctx.source() {
                    Source::Client(seq) => json!({"client": seq}),
                    Source::Timer(id) => json!({"timer": id}),
                    Source::Call { caller } => json!({"call": caller}),
                }),
                (_, _) if step.get("emit").is_some() => ctx
                    .emit(step["emit"].as_str().unwrap_or_default())
                    .map(Value::from),
                (_, _) if step.get("schedule").is_some() => {
                    let spec = &step["schedule"];
                    let when = match spec["at_ms"].as_u64() {
                        Some(at) => When::At(at),
                        None => When::After(std::time::Duration::from_millis(
                            spec["after_ms"].as_u64().unwrap_or(0),
                        )),
                    };
                    ctx.schedule(when, &spec["input"]).map(Value::from)
                }
                (_, _) if step.get("cancel").is_some() => ctx
                    .cancel(step["cancel"].as_str().unwrap_or_default())
                    .map(Value::from),
                (_, _) if step.get("call").is_some() => {
                    let spec = &step["call"];
                    ctx.call(
                        spec["target"].as_str().unwrap_or_default(),
                        &spec["input"],
                        std::time::Duration::from_millis(
                            spec["deadline_ms"].as_u64().unwrap_or(5000),
                        ),
                    )
                }
                (_, Some(spec)) => ctx
                    .fetch(&fetch_request(spec, &results))
                    .map(|r| json!({"status": r.status, "body": r.text()})),
                _ => Err(Error::new("bad_input", format!("unknown step {step}"))),
            };
            match r {
                Ok(v) => results.push(json!({"ok": v})),
                Err(e) if input["propagate"] == true => return Err(e),
                Err(e) => results.push(json!({"err": {"code": e.code, "message": e.message}})),
            }
        }
        let inputs = state["inputs"].as_u64().unwrap_or(0) + 1;
        state["inputs"] = inputs.into();
        Ok(json!({"results": results, "inputs": inputs}))
    }
}

export!(Effects);
