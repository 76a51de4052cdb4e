//! Property tests: manifests round-trip through TOML and JSON; the decoders never panic.

use opengrid_session::*;
use proptest::prelude::*;

const JURISDICTIONS: &[&str] = &["DE", "FR", "US", "JP", "EU", "EEA", "BR", "IN"];

fn duration() -> impl Strategy<Value = HumanDuration> {
    (1u64..86_400_000).prop_map(HumanDuration::from_millis)
}

/// Valid manifests. Fields nothing acts on yet (continuity, expected duration, state footprint,
/// scaling, verification) keep their defaults: any other value is refused as not supported yet.
fn manifest() -> impl Strategy<Value = Manifest> {
    (
        "[a-z][a-z0-9_-]{0,20}",
        (10u64..3_600_000).prop_map(HumanDuration::from_millis),
        proptest::sample::subsequence(JURISDICTIONS, 1..4),
        prop_oneof![
            Just(AcceleratorClass::None),
            Just(AcceleratorClass::GpuSmall),
            Just(AcceleratorClass::GpuLarge)
        ],
        1u64..(1 << 36),
        proptest::option::of(duration()),
        proptest::collection::vec("[a-z][a-z0-9-]{0,10}", 0..4),
        // acceptable_loss stays within the default expected duration (30m).
        (0u8..3, prop_oneof![Just(0u64), 1u64..1_800_000], duration()),
    )
        .prop_map(
            |(handler, idle, js, acc, mem, lat, caps, (cost, loss, blackout))| {
                let cost = [
                    MigrationCost::Cheap,
                    MigrationCost::Costly,
                    MigrationCost::NeverLive,
                ][cost as usize];
                Manifest {
                    version: MANIFEST_VERSION,
                    session: opengrid_session::manifest::SessionSection {
                        handler,
                        agent: None,
                        package: None,
                        continuity: Continuity::Interactive,
                        expected_duration: HumanDuration::from_secs(30 * 60),
                        state_footprint: ByteSize(64 * 1024),
                        idle_timeout: idle,
                    },
                    placement: opengrid_session::manifest::PlacementSection {
                        jurisdictions: js.into_iter().map(String::from).collect(),
                        accelerator: acc,
                        memory: ByteSize(mem),
                        latency_ceiling: lat,
                        capabilities: caps,
                    },
                    migration: opengrid_session::manifest::MigrationSection {
                        cost,
                        acceptable_loss: HumanDuration::from_millis(loss),
                        max_blackout: (cost != MigrationCost::NeverLive).then_some(blackout),
                        min_copies: 1,
                    },
                    scaling: Default::default(),
                    verification: Default::default(),
                    egress: Default::default(),
                    agent: Default::default(),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_manifests_are_valid_and_round_trip(m in manifest()) {
        m.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let toml = m.to_toml_string();
        prop_assert_eq!(&Manifest::from_toml_str(&toml).map_err(|e| TestCaseError::fail(format!("{e}\n{toml}")))?, &m);
        let json = m.to_json_string();
        prop_assert_eq!(&Manifest::from_json_str(&json).map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?, &m);
    }

    #[test]
    fn toml_decoder_never_panics(s in "\\PC{0,400}") {
        let _ = Manifest::from_toml_str(&s);
    }

    #[test]
    fn json_decoder_never_panics(s in "\\PC{0,400}") {
        let _ = Manifest::from_json_str(&s);
    }

    /// Mutating one value of a valid manifest gives either a valid manifest or an error naming a
    /// field — never a panic, never an unnamed error.
    #[test]
    fn mutated_manifests_fail_with_a_named_field(m in manifest(), idx in 0usize..40, junk in prop_oneof![Just("\"-1s\"".to_string()), Just("\"XX\"".to_string()), Just("-3".to_string()), Just("true".to_string()), Just("[]".to_string()), Just("\"\"".to_string())]) {
        let toml = m.to_toml_string();
        let lines: Vec<&str> = toml.lines().collect();
        let i = idx % lines.len();
        if let Some((k, _)) = lines[i].split_once(" = ") {
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            out[i] = format!("{k} = {junk}");
            match Manifest::from_toml_str(&out.join("\n")) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.fields().is_empty(), "error without a field: {}", e),
            }
        }
    }
}
