//! `bench agents`: push → first answer of a WebAssembly agent on nodes that have never seen it
//! (ADR 0028, 0030), and the helpers the colony benches share to push agents.
//!
//! Each round pushes a **new version** of `primes-rs` (`examples/agents/primes-rs`: real code and
//! a ~1.8 MiB table of primes in its data segment, a component of about 2 MiB), signed with a
//! developer key of this run, so every node and the RC see a package hash they have never
//! compiled. Timed from the start of the push (building and signing the package) to the first
//! answered input of a new session of that version:
//! - `build`: the package built and signed in this process (hash of the 2 MiB body, ed25519);
//! - `push`: `POST {rc}/agents` until the RC answers (decode, verify, compile check, stored);
//! - `create`: `POST {rc}/sessions` naming `primes-rs@<version>` until placed (the holder fetches
//!   the package from the RC, verifies and compiles it, runs `init`);
//! - `first input`: the first input until answered (zero-loss: replicated before the answer).
//!
//! The same-run baseline: once every node has compiled that version (the RC prefetches it to the
//! replica holders; the bench waits until every node's `opengrid_wasm_compiles_total` counts it),
//! a second session of the same version is created and answers its first input: the cost of
//! placement and a first input without any fetch or compile.

use ed25519_dalek::SigningKey;

use super::*;

/// Target: push → first answer on a cold node, p99, µs.
pub const AGENT_COLD_TARGET_P99_US: u64 = 1_000_000;

/// A zero-loss session of `agent` (`name` or `name@version`).
pub(super) fn agent_manifest(agent: &str) -> String {
    format!("version = 1\n[session]\nagent = \"{agent}\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"2s\"\n")
}

/// The component of an example agent (`scripts/build-agents.sh`): `explicit`, else
/// `<dir of the opengrid binary>/../agents/out/<name>.wasm`, else
/// `$CARGO_TARGET_DIR/agents/out/<name>.wasm`.
pub(super) fn agent_component(
    explicit: Option<&Path>,
    bin: &Path,
    name: &str,
) -> Result<PathBuf, BenchError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(failed(format!("--component {}: no such file", p.display())))
        };
    }
    let file = format!("{name}.wasm");
    let mut tried = Vec::new();
    if let Some(target) = bin.parent().and_then(Path::parent) {
        tried.push(target.join("agents").join("out").join(&file));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        tried.push(PathBuf::from(t).join("agents").join("out").join(&file));
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        failed(format!(
            "the {name} component is not in {tried:?}: build it with scripts/build-agents.sh, or \
             pass --component <path>"
        ))
    })
}

/// A developer key of this run (any valid signature is accepted by a colony without
/// `agent_publishers`).
pub(super) fn developer_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// Builds and signs a package of `component` as `name@version`.
pub(super) fn package(
    name: &str,
    version: &str,
    component: &[u8],
    key: &SigningKey,
) -> Result<Vec<u8>, BenchError> {
    let toml = format!(
        "name = \"{name}\"\nversion = \"{version}\"\ndescription = \"opengrid-chaos bench agent\"\ninterface = \"{}\"\ncomponent = \"agent.wasm\"\n",
        opengrid_wasm::INTERFACE_VERSION
    );
    let p = opengrid_wasm::Package::build(
        opengrid_wasm::PackageSource::Parts {
            agent_toml: &toml,
            component: component.to_vec(),
        },
        key,
    )
    .map_err(|e| failed(format!("building {name}@{version}: {e}")))?;
    Ok(p.to_bytes())
}

impl Colony {
    /// `POST {rc}/agents` as the operator; the RC's answer (`name`, `version`, `hash`).
    pub(super) async fn push_agent(&self, bytes: Vec<u8>) -> Result<Value, BenchError> {
        let r = self
            .http
            .post(format!("{}/agents", self.rc_api))
            .timeout(Duration::from_secs(300))
            .body(bytes)
            .send()
            .await
            .map_err(|e| failed(format!("push: {e}")))?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(failed(format!("push refused: {status} {body}")));
        }
        Ok(body)
    }

    /// Components compiled by each node's wasm runtime (`opengrid_wasm_compiles_total` of its
    /// `/metrics`; 0 for a node that has not started its runtime or did not answer).
    async fn node_compiles(&self, nodes: &[String]) -> u64 {
        let mut sum = 0;
        for api in nodes {
            let Ok(r) = self.http.get(format!("{api}/metrics")).send().await else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            sum += text
                .lines()
                .filter(|l| l.starts_with("opengrid_wasm_compiles_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        sum
    }
}

/// Result of `bench agents`.
#[derive(Clone, Debug, Serialize)]
pub struct AgentsResult {
    /// `agent_push_first_answer`.
    pub name: String,
    /// The component's size, bytes.
    pub component_bytes: usize,
    /// The package's size, bytes.
    pub package_bytes: usize,
    /// Versions pushed (each one a cold start everywhere).
    pub count: usize,
    /// Push start → first answer, median µs.
    pub p50_us: u64,
    /// Its p99, µs.
    pub p99_us: u64,
    /// Its worst, µs.
    pub max_us: u64,
    /// Building and signing the package in the bench, median µs.
    pub build_p50_us: u64,
    /// `POST /agents` (RC decode, verify, compile check, store), median µs.
    pub push_p50_us: u64,
    /// Its p99, µs.
    pub push_p99_us: u64,
    /// Session create on a node that fetches and compiles the package, median µs.
    pub create_p50_us: u64,
    /// Its p99, µs.
    pub create_p99_us: u64,
    /// The first input of that session, median µs.
    pub first_input_p50_us: u64,
    /// Its p99, µs.
    pub first_input_p99_us: u64,
    /// Baseline, same run: create + first input of a second session of the same version once
    /// every node has it compiled, median µs.
    pub warm_p50_us: u64,
    /// Its p99, µs.
    pub warm_p99_us: u64,
    /// Cold (create + first input) over warm, at the median.
    pub cold_over_warm_p50: f64,
    /// Target for `p99_us`, µs.
    pub target_p99_us: u64,
    /// Within the target, every answer right.
    pub met: bool,
    /// Seconds the bench took.
    pub elapsed_s: f64,
}

/// Sends the first input (`1`) and checks the answer: the first prime.
async fn first_answer(s: &mut Session) -> Result<(), BenchError> {
    let r = s
        .send(json!(1))
        .await
        .map_err(|e| failed(format!("{}: first input: {e}", s.id)))?;
    if r["output"]["prime"] != json!(2) {
        return Err(failed(format!("{}: first input answered {r}", s.id)));
    }
    Ok(())
}

fn us(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

/// `bench agents`: `count` versions of the primes agent, each pushed and answered cold.
pub async fn agents(
    args: &ColonyArgs,
    count: usize,
    progress: &Progress,
) -> Result<AgentsResult, BenchError> {
    let count = count.clamp(1, 1000);
    let started = Instant::now();
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let mut c = Colony::start(args, progress).await?;
    let path = agent_component(args.component.as_deref(), &c.bin, "primes-rs")?;
    let component = std::fs::read(&path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    progress.line(format!(
        "agent component {} ({} bytes)",
        path.display(),
        component.len()
    ));
    let names = ["a", "b", "c"];
    for name in names {
        c.node(name, "capacity = 64\n[hardware]\nmemory = \"128GiB\"")?;
    }
    let st = c.wait_alive(names.len()).await?;
    let nodes: Vec<String> = names.iter().filter_map(|n| member_api(&st, n)).collect();
    let client = c.client();
    let key = developer_key();
    let (mut totals, mut builds, mut pushes, mut creates, mut firsts, mut warms) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut package_bytes = 0;
    let deadline = Instant::now() + budget;
    for i in 0..count {
        if Instant::now() >= deadline {
            progress.line(format!("budget spent after {i} versions"));
            break;
        }
        let version = format!("1.0.{i}");
        let agent = format!("primes-rs@{version}");
        // Cold: push start → first answer.
        let t0 = Instant::now();
        let bytes = package("primes-rs", &version, &component, &key)?;
        package_bytes = bytes.len();
        builds.push(us(t0));
        let t = Instant::now();
        let pushed = c.push_agent(bytes).await?;
        pushes.push(us(t));
        if pushed["version"] != json!(version) {
            return Err(failed(format!("push of {agent} answered {pushed}")));
        }
        let t = Instant::now();
        let mut s = client
            .create(&agent_manifest(&agent), None)
            .await
            .map_err(|e| {
                failed(format!(
                    "creating a {agent} session: {e}; logs in {}",
                    c.logs()
                ))
            })?;
        creates.push(us(t));
        let t = Instant::now();
        first_answer(&mut s).await?;
        firsts.push(us(t));
        totals.push(us(t0));

        // Every node compiles the version once (the holder at create, the replica holders from
        // the RC's prefetch): wait for that, so the baseline and the next round run on a quiet
        // colony.
        let want = (names.len() * (i + 1)) as u64;
        let quiet_by = Instant::now() + Duration::from_secs(20);
        let mut compiled = c.node_compiles(&nodes).await;
        while compiled < want && Instant::now() < quiet_by {
            c.check_alive()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            compiled = c.node_compiles(&nodes).await;
        }
        if compiled < want {
            progress.line(format!(
                "{agent}: {compiled} of {want} node compiles seen after 20 s; the baseline may include a fetch"
            ));
        }
        // Baseline: the same version, already compiled everywhere.
        let t = Instant::now();
        let mut w = client
            .create(&agent_manifest(&agent), None)
            .await
            .map_err(|e| failed(format!("creating a second {agent} session: {e}")))?;
        first_answer(&mut w).await?;
        warms.push(us(t));
        progress.line(format!(
            "{agent}: first answer {} ms after the push started (push {} ms, create {} ms, first input {} ms); warm {} ms",
            totals[i] / 1000,
            pushes[i] / 1000,
            creates[i] / 1000,
            firsts[i] / 1000,
            warms[i] / 1000
        ));
        c.check_alive()?;
    }
    let cold: Vec<u64> = creates.iter().zip(&firsts).map(|(a, b)| a + b).collect();
    let (tot, build, push, create, first, warm, cold) = (
        summarize(totals),
        summarize(builds),
        summarize(pushes),
        summarize(creates),
        summarize(firsts),
        summarize(warms),
        summarize(cold),
    );
    Ok(AgentsResult {
        name: "agent_push_first_answer".into(),
        component_bytes: component.len(),
        package_bytes,
        count: tot.count,
        p50_us: tot.p50_us,
        p99_us: tot.p99_us,
        max_us: tot.max_us,
        build_p50_us: build.p50_us,
        push_p50_us: push.p50_us,
        push_p99_us: push.p99_us,
        create_p50_us: create.p50_us,
        create_p99_us: create.p99_us,
        first_input_p50_us: first.p50_us,
        first_input_p99_us: first.p99_us,
        warm_p50_us: warm.p50_us,
        warm_p99_us: warm.p99_us,
        cold_over_warm_p50: ratio(cold.p50_us, warm.p50_us),
        target_p99_us: AGENT_COLD_TARGET_P99_US,
        met: tot.count == count && tot.p99_us <= AGENT_COLD_TARGET_P99_US,
        elapsed_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// `a / b` rounded to 2 decimals (0 when `b` is 0).
pub(super) fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        return 0.0;
    }
    (a as f64 / b as f64 * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_component_names_the_flag_and_the_script() {
        let e = agent_component(Some(Path::new("/nonexistent/x.wasm")), Path::new("/x"), "x")
            .unwrap_err();
        assert!(e.to_string().contains("--component"), "{e}");
        let e =
            agent_component(None, Path::new("/nonexistent/release/opengrid"), "nope").unwrap_err();
        assert!(e.to_string().contains("build-agents.sh"), "{e}");
    }

    #[test]
    fn ratios_round_to_two_decimals() {
        assert_eq!(ratio(3, 2), 1.5);
        assert_eq!(ratio(1, 3), 0.33);
        assert_eq!(ratio(1, 0), 0.0);
    }
}
