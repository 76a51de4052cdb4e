use std::time::Duration;

use ed25519_dalek::SigningKey;
use opengrid_canopy::{FederationTreaty, Treaties};
use opengrid_session::Did;
use serde_json::json;

use crate::common::config::ConfigError;
use crate::rc::admission::Colony;

use super::*;

use crate::common::identity::Identity;
use crate::common::spec::NodeSpec;
use opengrid_session::AcceleratorClass;

fn treaties() -> Treaties {
    Treaties::new(vec![
        FederationTreaty {
            name: "eu-internal".into(),
            from_zone: "EU".into(),
            to_zone: "EU".into(),
            route: true,
            replicate: true,
            data_classes: vec!["*".into()],
        },
        FederationTreaty {
            name: "de-us-no-personal".into(),
            from_zone: "DE".into(),
            to_zone: "US".into(),
            route: false,
            replicate: false,
            data_classes: vec!["personal".into()],
        },
    ])
    .unwrap()
}

#[test]
fn replica_rule_needs_manifest_and_treaty() {
    let t = treaties();
    let eu = vec!["EU".to_string()];
    may_hold_replica(&eu, "DE", &t, "personal", "FR").unwrap();
    may_hold_replica(&eu, "DE", &t, "personal", "DE").unwrap();
    assert!(matches!(
        may_hold_replica(&eu, "DE", &t, "personal", "US"),
        Err(ReplicaRefusal::Jurisdiction { .. })
    ));
    let any: Vec<String> = Vec::new();
    let err = may_hold_replica(&any, "DE", &t, "personal", "US").unwrap_err();
    assert!(err.to_string().contains("de-us-no-personal"), "{err}");
    // Same jurisdiction needs no treaty; an uncovered border is refused.
    may_hold_replica(&any, "JP", &Treaties::none(), "x", "JP").unwrap();
    assert!(may_hold_replica(&any, "JP", &Treaties::none(), "x", "KR").is_err());
}

fn spec(name: &str, j: &str, acc: AcceleratorClass, cap: u32, price: u64) -> NodeSpec {
    NodeSpec {
        id: Identity::generate().id(),
        name: name.into(),
        jurisdiction: j.into(),
        accelerator: acc,
        cpu_cores: 2,
        memory: 8 << 30,
        handlers: vec!["tutor".into()],
        capabilities: vec!["vision".into()],
        price_micros_per_input: price,
        capacity: cap,
        max_session_memory: 0,
        api: format!("http://{name}"),
        migration: "127.0.0.1:1".into(),
    }
}

fn header() -> SummaryHeader {
    SummaryHeader {
        colony_id: "c".into(),
        region: "eu".into(),
        zone: "FR".into(),
        rc_did: Did::from_public_key(&SigningKey::from_bytes(&[1; 32]).verifying_key()),
        rc_client_api: "http://127.0.0.1:1".into(),
        rc_control_addr: "127.0.0.1:1".into(),
    }
}

#[test]
fn summary_reflects_the_admission_table() {
    let empty = colony_summary(&header(), &Colony::new());
    assert_eq!(empty.jurisdictions, ["FR"]);
    assert_eq!(empty.load_permille, 1000);
    assert!(empty.hardware.is_empty());
    empty.validate().unwrap();

    let mut c = Colony::new();
    let a = spec("a", "DE", AcceleratorClass::None, 4, 5);
    let b = spec("b", "AT", AcceleratorClass::GpuSmall, 2, 9);
    let (ida, idb) = (a.id, b.id);
    c.upsert(a);
    c.upsert(b);
    c.note_placed(&ida, "tutor", 1 << 30);
    c.note_placed(&idb, "tutor", 1 << 30);
    c.note_placed(&idb, "tutor", 1 << 30);
    let s = colony_summary(&header(), &c);
    s.validate().unwrap();
    assert_eq!(s.jurisdictions, ["AT", "DE"]);
    assert_eq!(s.load_permille, 500);
    assert_eq!(s.price.min_micros_per_input, 5);
    assert_eq!(s.price.max_micros_per_input, 9);
    assert_eq!(s.hardware[&AcceleratorClass::None].free_slots, 3);
    assert_eq!(
        s.hardware[&AcceleratorClass::None].max_node_free_memory_bytes,
        7 << 30
    );
    // The full GPU node is listed with no free slot.
    assert_eq!(s.hardware[&AcceleratorClass::GpuSmall].free_slots, 0);
    assert_eq!(s.handlers["tutor"], 3);
    assert_eq!(s.capabilities["vision"], 3);
    // Dead nodes leave the summary.
    c.set_alive(&ida, false);
    let s = colony_summary(&header(), &c);
    assert_eq!(s.jurisdictions, ["AT"]);
    assert_eq!(s.handlers.get("tutor").copied().unwrap_or(0), 0);
}

#[test]
fn signed_payload_round_trip_and_tamper() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let did = Did::from_public_key(&key.verifying_key());
    let s = Signed::sign(REQUEST_DOMAIN, &json!({"a": 1}), &key);
    assert!(s.verify(REQUEST_DOMAIN, &did));
    assert!(!s.verify(ANSWER_DOMAIN, &did), "domain separated");
    let mut t = s.clone();
    t.payload = "{\"a\":2}".into();
    assert!(!t.verify(REQUEST_DOMAIN, &did));
    let mut t = s.clone();
    t.signature = "not-base58-0OIl".into();
    assert!(!t.verify(REQUEST_DOMAIN, &did));
    let other = Did::from_public_key(&SigningKey::from_bytes(&[8; 32]).verifying_key());
    assert!(!s.verify(REQUEST_DOMAIN, &other));
}

#[test]
fn replay_cache_refuses_repeats_until_expiry() {
    let mut c = ReplayCache::default();
    c.insert("a", 1000, 2000).unwrap();
    assert!(matches!(
        c.insert("a", 1500, 2500),
        Err(AuthError::Replayed(_))
    ));
    c.insert("b", 1500, 2500).unwrap();
    // After its window, "a" is forgotten (and would be refused as stale anyway).
    c.insert("a", 2001, 3000).unwrap();
    assert!(c.seen.len() <= 2);
}

#[test]
fn canopy_section_in_rc_toml_with_env_overrides() {
    use crate::rc::config::RcConfig;
    let toml = r#"
[canopy]
enabled = true
zone = "FR"
publish_interval = "2s"
bootstrap = ["/ip4/127.0.0.1/tcp/4001"]
[[canopy.treaty]]
name = "fr-de"
from_zone = "FR"
to_zone = "DE"
route = true
replicate = false
data_classes = ["*"]
"#;
    let env = vec![
        ("OPENGRID_CANOPY_REGION".to_string(), "eu-west".to_string()),
        (
            "OPENGRID_CANOPY_EXPIRY_INTERVALS".to_string(),
            "5".to_string(),
        ),
    ];
    let c = RcConfig::from_toml_with_env(&format!("dev = true\n{toml}"), &env).unwrap();
    assert!(c.canopy.enabled);
    assert_eq!(c.canopy.region, "eu-west");
    assert_eq!(c.canopy.expiry_intervals, 5);
    assert_eq!(c.canopy.publish_interval.0, Duration::from_secs(2));
    assert_eq!(c.canopy.treaties().unwrap().list()[0].name, "fr-de");
    // Defaults: canopy off, still valid.
    assert!(
        !RcConfig::from_toml_with_env("dev = true", &[])
            .unwrap()
            .canopy
            .enabled
    );
    // Unknown fields are refused; bad values name the dotted field.
    let e = RcConfig::from_toml_with_env("[canopy]\nzoen = \"FR\"", &[]).unwrap_err();
    assert!(e.to_string().contains("zoen"), "{e}");
    match RcConfig::from_toml_with_env("dev = true\n[canopy]\nzone = \"XX\"", &[]) {
        Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "canopy.zone"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_validation_names_the_field() {
    let ok = CanopySection::default();
    ok.validate().unwrap();
    let cases: Vec<(CanopySection, &str)> = vec![
        (
            CanopySection {
                listen: "nope".into(),
                ..ok.clone()
            },
            "canopy.listen",
        ),
        (
            CanopySection {
                bootstrap: vec!["/ip4/127.0.0.1/tcp/1".into(), "x".into()],
                ..ok.clone()
            },
            "canopy.bootstrap[1]",
        ),
        (
            CanopySection {
                zone: "XX".into(),
                ..ok.clone()
            },
            "canopy.zone",
        ),
        (
            CanopySection {
                trusted_rcs: vec!["did:mycel:nope".into()],
                ..ok.clone()
            },
            "canopy.trusted_rcs[0]",
        ),
        (
            CanopySection {
                expiry_intervals: 0,
                ..ok.clone()
            },
            "canopy.expiry_intervals",
        ),
        (
            CanopySection {
                default_data_class: "Personal".into(),
                ..ok.clone()
            },
            "canopy.default_data_class",
        ),
        (
            CanopySection {
                treaties_file: Some("/nonexistent/treaties.toml".into()),
                ..ok.clone()
            },
            "canopy.treaties_file",
        ),
        (
            CanopySection {
                treaty: vec![FederationTreaty {
                    name: "t".into(),
                    from_zone: "DE".into(),
                    to_zone: "XX".into(),
                    route: true,
                    replicate: false,
                    data_classes: vec!["*".into()],
                }],
                ..ok.clone()
            },
            "canopy.treaty[0].to_zone",
        ),
    ];
    for (c, field) in cases {
        match c.validate() {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}
