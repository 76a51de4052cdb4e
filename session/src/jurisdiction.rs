//! Jurisdiction codes: ISO 3166-1 alpha-2 country codes plus a few legal zones (`EU`, `EEA`).
//!
//! Placement filters and federation treaties compare these codes exactly; a manifest naming a code
//! that is not listed here is refused at validation time so that a typo can never widen where a
//! session's state may live.

/// ISO 3166-1 alpha-2 codes (officially assigned).
const ISO_3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Legal zones that span several countries.
const ZONES: &[&str] = &["EU", "EEA"];

/// EU member states (for `EU` zone membership checks).
const EU_MEMBERS: &str =
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE";

/// Whether `code` is a known jurisdiction (exact, upper case).
pub fn is_known(code: &str) -> bool {
    code.len() == 2 && ISO_3166_ALPHA2.split(' ').any(|c| c == code) || ZONES.contains(&code)
}

/// Whether a node located in `node_jurisdiction` satisfies a manifest allowing `allowed`.
///
/// A zone in the allowed list admits its member countries (`EU` admits `DE`); a country admits only
/// itself. The reverse never holds: a manifest allowing only `DE` is not satisfied by a node that
/// merely declares `EU`.
pub fn satisfies(node_jurisdiction: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| {
        a == node_jurisdiction
            || (a == "EU" && EU_MEMBERS.split(' ').any(|m| m == node_jurisdiction))
            || (a == "EEA"
                && (EU_MEMBERS.split(' ').any(|m| m == node_jurisdiction)
                    || matches!(node_jurisdiction, "IS" | "LI" | "NO")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes() {
        for c in ["DE", "US", "EU", "EEA", "JP", "ZW"] {
            assert!(is_known(c), "{c}");
        }
        for c in ["de", "XX", "", "EUR", "U"] {
            assert!(!is_known(c), "{c}");
        }
    }

    #[test]
    fn zones_admit_members_only() {
        let eu = vec!["EU".to_string()];
        assert!(satisfies("DE", &eu));
        assert!(satisfies("EU", &eu));
        assert!(!satisfies("US", &eu));
        assert!(!satisfies("EU", &["DE".to_string()]));
        assert!(satisfies("NO", &["EEA".to_string()]));
    }
}
