//! Scenario files: parsing, validation errors naming the field, deterministic expansion, and the
//! shipped scenario library.

use std::path::PathBuf;

use opengrid_chaos::scenario::{FaultAction, Scenario, ScenarioError, Suite};

const GOOD: &str = r#"
version = 1
name = "t"
seed = 7
duration = "30s"

[cluster]
colonies = ["eu"]
[[cluster.rc]]
name = "rc"
colony = "eu"
[[cluster.node]]
name = "n1"
colony = "eu"
jurisdiction = "DE"
[[cluster.node]]
name = "n2"
colony = "eu"
jurisdiction = "FR"

[workload]
duration = "20s"
[[workload.sessions]]
group = "g"
count = 3
input_rate = 2.0
manifest_toml = """
version = 1
[session]
handler = "counter"
continuity = "interactive"
[placement]
jurisdictions = ["EU"]
[migration]
cost = "cheap"
acceptable_loss = "0s"
max_blackout = "50ms"
"""

[[fault]]
at = "5s"
spread = "3s"
action = "kill"
target = "n1"
duration = "5s"

[[fault]]
at = "6s"
spread = "4s"
action = "latency"
between = ["n1", "n2"]
latency = "20ms"
jitter = "5ms"
duration = "4s"

[[fault]]
at = "7s"
spread = "10s"
action = "fuzz"
target = "rc"
duration = "2s"

[invariants]
check = ["no-acked-loss", "no-duplicate", "single-active"]
"#;

fn field_of(text: &str) -> String {
    match Scenario::from_toml_str(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => {
            eprintln!("error: {e}");
            e.field().unwrap_or("<none>").to_string()
        }
    }
}

fn with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in GOOD");
    GOOD.replacen(from, to, 1)
}

#[test]
fn the_good_scenario_parses() {
    let sc = Scenario::from_toml_str(GOOD).unwrap();
    assert_eq!(sc.faults.len(), 3);
    assert_eq!(sc.processes().len(), 3);
}

#[test]
fn bad_scenarios_name_the_field() {
    let cases: Vec<(String, &str)> = vec![
        (with("version = 1\nname", "version = 2\nname"), "version"),
        (with("seed = 7", "seed = 7\nsede = 8"), "sede"),
        (
            with("duration = \"30s\"", "duration = \"thirty\""),
            "duration",
        ),
        (
            with("jurisdiction = \"DE\"", "jurisdiction = \"XX\""),
            "cluster.node[0].jurisdiction",
        ),
        (
            with(
                "colony = \"eu\"\n[[cluster.node]]",
                "colony = \"us\"\n[[cluster.node]]",
            ),
            "cluster.rc[0].colony",
        ),
        (
            with("name = \"n2\"", "name = \"n1\""),
            "cluster.node[1].name",
        ),
        (
            with("target = \"n1\"", "target = \"n9\""),
            "fault[0].target",
        ),
        (
            with("between = [\"n1\", \"n2\"]", "between = [\"n1\", \"n1\"]"),
            "fault[1].between",
        ),
        (
            with(
                "latency = \"20ms\"",
                "latency = \"20ms\"\nprobability = 0.5",
            ),
            "fault[1].probability",
        ),
        (
            with(
                "action = \"fuzz\"\ntarget = \"rc\"\nduration = \"2s\"",
                "action = \"fuzz\"\ntarget = \"rc\"",
            ),
            "fault[2].duration",
        ),
        (with("at = \"7s\"", "at = \"29s\""), "fault[2].at"),
        (
            with("input_rate = 2.0", "input_rate = 0.0"),
            "workload.sessions[0].input_rate",
        ),
        (with("count = 3", "count = 0"), "workload.sessions[0].count"),
        (
            with(
                "acceptable_loss = \"0s\"",
                "acceptable_loss = \"0s\"\nbogus = 1",
            ),
            "workload.sessions[0].manifest_toml",
        ),
        (
            with(
                "check = [\"no-acked-loss\",",
                "check = [\"ledger-balance\", \"no-acked-loss\",",
            ),
            "invariants.check[0]",
        ),
        (
            with("check = [\"no-acked-loss\",", "check = [\"no-acked-los\","),
            "invariants.check[0]",
        ),
        (
            with("action = \"kill\"", "action = \"explode\""),
            "fault[0].action",
        ),
        (
            with(
                "[workload]\nduration = \"20s\"",
                "[workload]\nduration = \"40s\"",
            ),
            "workload.duration",
        ),
    ];
    assert!(cases.len() >= 8);
    for (text, field) in cases {
        assert_eq!(field_of(&text), field, "for scenario:\n{text}");
    }
}

/// `GOOD` with `n` RCs in colony `eu` (`rc`, `rc-2`, …).
fn with_rcs(n: usize) -> String {
    let extra: String = (2..=n)
        .map(|i| format!("[[cluster.rc]]\nname = \"rc-{i}\"\ncolony = \"eu\"\n"))
        .collect();
    with("[[cluster.node]]", &format!("{extra}[[cluster.node]]"))
}

#[test]
fn an_rc_group_has_one_three_or_five_rcs() {
    use opengrid_chaos::scenario::{ProcessKind, RC_LEADER};
    for n in [1, 3, 5] {
        let sc = Scenario::from_toml_str(&with_rcs(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(sc.rc_group("eu").len(), n);
        assert_eq!(sc.in_rc_group("rc"), n > 1);
        assert_eq!(sc.in_rc_group(RC_LEADER), n > 1);
    }
    for n in [2, 4, 6, 7] {
        let e = Scenario::from_toml_str(&with_rcs(n)).unwrap_err();
        assert!(matches!(e, ScenarioError::Invalid { .. }), "{e:?}");
        assert_eq!(e.field(), Some("cluster.rc"), "{n}: {e}");
        let m = e.to_string();
        assert!(
            m.contains(&format!("{n} regional coordinators")) && m.contains("[1, 3, 5]"),
            "{m}"
        );
    }
    let sc = Scenario::from_toml_str(&with_rcs(3)).unwrap();
    assert_eq!(sc.target_kind(RC_LEADER), Some(ProcessKind::Rc));
    assert_eq!(sc.target_kind("rc-3"), Some(ProcessKind::Rc));
    assert_eq!(sc.target_kind("n1"), Some(ProcessKind::Node));
    assert_eq!(sc.target_kind("nope"), None);
}

#[test]
fn rc_leader_is_a_target_and_no_process_name() {
    let kill = with("target = \"n1\"", "target = \"rc-leader\"");
    let sc = Scenario::from_toml_str(&kill).unwrap();
    let s = sc.expand(1);
    assert_eq!(s[0].targets, ["rc-leader"]);
    // Its undo names the same target; the harness pairs them by fault entry.
    let restart = s.iter().find(|f| f.action == FaultAction::Restart).unwrap();
    assert_eq!(
        (restart.targets.as_slice(), restart.source),
        (&["rc-leader".to_string()][..], s[0].source)
    );
    let fuzz = with("target = \"rc\"", "target = \"rc-leader\"");
    Scenario::from_toml_str(&fuzz).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            with("name = \"n2\"", "name = \"rc-leader\""),
            "cluster.node[1].name",
        ),
        (
            with("name = \"rc\"", "name = \"rc-leader\""),
            "cluster.rc[0].name",
        ),
        (
            with("between = [\"n1\", \"n2\"]", "between = [\"n1\", \"rc-leader\"]"),
            "fault[1].between",
        ),
        (
            kill.replacen("action = \"kill\"", "action = \"fail-disk\"", 1),
            "fault[0].target",
        ),
        (
            kill.replace("colonies = [\"eu\"]", "colonies = [\"eu\", \"us\"]")
                .replace(
                    "[[cluster.node]]\nname = \"n2\"",
                    "[[cluster.rc]]\nname = \"rc-us\"\ncolony = \"us\"\n[[cluster.node]]\nname = \"n2\"",
                ),
            "fault[0].target",
        ),
    ];
    for (text, field) in cases {
        assert_eq!(field_of(&text), field, "{text}");
    }
}

#[test]
fn loss_needs_probability_and_partition_modes_are_checked() {
    let t = with(
        "action = \"latency\"\nbetween = [\"n1\", \"n2\"]\nlatency = \"20ms\"\njitter = \"5ms\"",
        "action = \"loss\"\nbetween = [\"n1\", \"n2\"]",
    );
    assert_eq!(field_of(&t), "fault[1].probability");
    let t = with(
        "action = \"latency\"\nbetween = [\"n1\", \"n2\"]\nlatency = \"20ms\"\njitter = \"5ms\"",
        "action = \"partition\"\nbetween = [\"n1\", \"n2\"]\nmode = \"sideways\"",
    );
    assert_eq!(field_of(&t), "fault[1].mode");
    let t = with(
        "action = \"kill\"\ntarget = \"n1\"",
        "action = \"fail-disk\"\ntarget = \"rc\"",
    );
    assert_eq!(field_of(&t), "fault[0].target");
    // Garbage never panics.
    for junk in [
        "",
        "[[[",
        "version = \"x\"",
        "\u{0}\u{1}",
        &"a".repeat(2 << 20),
    ] {
        assert!(Scenario::from_toml_str(junk).is_err());
    }
}

#[test]
fn same_seed_same_schedule_different_seed_different_times() {
    let sc = Scenario::from_toml_str(GOOD).unwrap();
    let a = sc.expand(42);
    assert_eq!(a, sc.expand(42));
    assert_eq!(a.len(), 5, "kill+restart, latency+heal, fuzz: {a:?}");
    // Undo events follow their fault by its duration.
    let kill = a.iter().find(|f| f.action == FaultAction::Kill).unwrap();
    let restart = a.iter().find(|f| f.action == FaultAction::Restart).unwrap();
    assert_eq!(restart.t_ms, kill.t_ms + 5000);
    assert!((5000..8000).contains(&kill.t_ms));
    // Sorted by time.
    assert!(a.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    // Some other seed moves at least one fault (spreads are 3-10 s wide).
    let moved = (0..20u64).any(|s| sc.expand(s) != a);
    assert!(moved);
    // The printed schedule is stable too.
    let p: Vec<String> = a.iter().map(|f| f.to_string()).collect();
    let q: Vec<String> = sc.expand(42).iter().map(|f| f.to_string()).collect();
    assert_eq!(p, q);
    assert!(
        p.iter().any(|l| l.contains("latency=20ms jitter=5ms")),
        "{p:?}"
    );
}

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[test]
fn every_shipped_scenario_loads_and_each_fault_kind_is_covered() {
    let mut kinds = std::collections::BTreeSet::new();
    let mut n = 0;
    for e in std::fs::read_dir(scenarios_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".toml") || name.ends_with("-suite.toml") {
            continue;
        }
        let sc = Scenario::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{}.toml", sc.name), name);
        for f in &sc.faults {
            kinds.insert(f.action);
        }
        n += 1;
    }
    assert!(n >= 13, "{n} scenarios");
    for k in [
        FaultAction::Kill,
        FaultAction::Pause,
        FaultAction::Partition,
        FaultAction::Latency,
        FaultAction::Loss,
        FaultAction::Bandwidth,
        FaultAction::FailDisk,
        FaultAction::SlowHandler,
        FaultAction::PanicHandler,
        FaultAction::Fuzz,
    ] {
        assert!(kinds.contains(&k), "no scenario injects {k}");
    }
    let (short, scs) = Suite::load(scenarios_dir().join("short-suite.toml")).unwrap();
    assert!(short.budget.0.as_secs() <= 300);
    let total: u64 = scs.iter().map(|s| s.duration.0.as_secs()).sum();
    assert!(total <= 300, "short suite runs {total} s of scenarios");
    Suite::load(scenarios_dir().join("long-suite.toml")).unwrap();
}

#[test]
fn manifest_paths_resolve_against_the_scenario_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = GOOD.replace(
        "manifest_toml = \"\"\"",
        "manifest = \"missing.toml\"\nxmanifest = \"\"\"",
    );
    // Unknown key first: the parse error names it.
    let p = dir.path().join("s.toml");
    std::fs::write(&p, &t).unwrap();
    match Scenario::load(&p) {
        Err(ScenarioError::Parse { field, .. }) => {
            assert_eq!(field, "workload.sessions[0].xmanifest")
        }
        other => panic!("{other:?}"),
    }
    let start = GOOD.find("manifest_toml").unwrap();
    let end = GOOD[start..].find("\"\"\"\n\n").unwrap() + start + 4;
    let t = format!(
        "{}manifest = \"missing.toml\"\n{}",
        &GOOD[..start],
        &GOOD[end..]
    );
    std::fs::write(&p, &t).unwrap();
    let e = Scenario::load(&p).unwrap_err();
    assert_eq!(e.field(), Some("workload.sessions[0].manifest"), "{e}");
    assert!(e.to_string().contains("missing.toml"));
}
