//! Fee split policies and the exact remainder rule.
//!
//! A fee `F` (integer micro-units) is split among accounts with integer weights `w_a` (summing to
//! `W`). Each account's exact share is the rational `F·w_a / W`. The rule (largest remainder,
//! Hamilton's method; see `docs/adr/0005-ledger-remainder-rule.md`):
//! 1. every account gets `floor(F·w_a / W)`;
//! 2. the `R = F − Σ floors` leftover micro-units (`0 ≤ R < number of accounts`) go one each to
//!    the accounts with the largest fractional parts `(F·w_a) mod W`, ties broken by ascending
//!    account id.
//!
//! So credits always sum to `F` exactly, and every account is within one micro-unit of its exact
//! share (it gets the floor or the floor + 1). Weights of the same account (an operator who is also
//! an owner) are merged first, so the bound holds per account. All arithmetic is `u128`; weights
//! are bounded at registration so `F·w_a` cannot overflow.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Basis points in a whole.
pub const BPS_TOTAL: u32 = 10_000;
/// Most owners in a NodeCo share table.
pub const MAX_OWNERS: usize = 256;
/// Upper bound on the sum of owner shares (keeps `fee · weight` inside `u128`).
pub const MAX_TOTAL_SHARES: u64 = 1 << 40;
/// Longest account name, in bytes.
pub const MAX_ACCOUNT_LEN: usize = 128;

/// A ledger account (an operator, an owner, the protocol). Any printable name up to
/// [`MAX_ACCOUNT_LEN`] bytes; DIDs are common.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Account(pub String);

impl Account {
    /// A validated account name.
    pub fn new(name: impl Into<String>) -> Result<Self, PolicyError> {
        let name = name.into();
        if name.is_empty()
            || name.len() > MAX_ACCOUNT_LEN
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(PolicyError::InvalidAccount(
                name.chars().take(MAX_ACCOUNT_LEN).collect(),
            ));
        }
        Ok(Self(name))
    }

    /// The protocol's account.
    pub fn protocol() -> Self {
        Self("protocol".into())
    }

    fn validate(&self) -> Result<(), PolicyError> {
        Self::new(self.0.clone()).map(|_| ())
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Basis points per party; they sum to 10 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bps {
    pub node_operator: u16,
    pub routing_operator: u16,
    pub protocol: u16,
    /// Split among the node's owners pro rata by shares.
    pub owners: u16,
}

/// A node's registered split policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitPolicy {
    /// ATM interchange preset: 75 % node operator, 15 % routing operator, 10 % protocol.
    Interchange,
    /// NodeCo preset: 70 % owners (pro rata by shares), 20 % node operator, 10 % protocol.
    NodeCo,
    /// Custom basis points.
    Custom(Bps),
}

/// Why a policy or share table is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PolicyError {
    #[error("basis points sum to {0}, expected 10000")]
    BpsSum(u32),
    #[error("the policy gives owners a share but the share table is empty or all zero")]
    NoOwners,
    #[error("at most {MAX_OWNERS} owners")]
    TooManyOwners,
    #[error("owner shares sum above {MAX_TOTAL_SHARES}")]
    TooManyShares,
    #[error("owner {0} listed twice")]
    DuplicateOwner(String),
    #[error("invalid account name `{0}`: 1..=128 printable characters, no whitespace")]
    InvalidAccount(String),
}

impl SplitPolicy {
    /// The policy's basis points.
    pub fn bps(&self) -> Bps {
        match self {
            Self::Interchange => Bps {
                node_operator: 7_500,
                routing_operator: 1_500,
                protocol: 1_000,
                owners: 0,
            },
            Self::NodeCo => Bps {
                node_operator: 2_000,
                routing_operator: 0,
                protocol: 1_000,
                owners: 7_000,
            },
            Self::Custom(b) => *b,
        }
    }

    /// Parse `interchange`, `nodeco` or `custom:NODE_OP,ROUTING_OP,PROTOCOL,OWNERS` (basis points).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "interchange" => Ok(Self::Interchange),
            "nodeco" => Ok(Self::NodeCo),
            _ => {
                let rest = s.strip_prefix("custom:").ok_or_else(|| {
                    format!("policy `{s}`: expected interchange, nodeco or custom:NODE_OP,ROUTING_OP,PROTOCOL,OWNERS")
                })?;
                let parts: Vec<u16> = rest
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .parse::<u16>()
                            .map_err(|_| format!("policy `{s}`: `{p}` is not a basis-point number"))
                    })
                    .collect::<Result<_, _>>()?;
                let [node_operator, routing_operator, protocol, owners] = parts[..] else {
                    return Err(format!("policy `{s}`: expected four numbers"));
                };
                Ok(Self::Custom(Bps {
                    node_operator,
                    routing_operator,
                    protocol,
                    owners,
                }))
            }
        }
    }

    /// Check the policy together with the node's owner table.
    pub fn validate(
        &self,
        operator: &Account,
        owners: &[(Account, u64)],
    ) -> Result<(), PolicyError> {
        let b = self.bps();
        let sum = u32::from(b.node_operator)
            + u32::from(b.routing_operator)
            + u32::from(b.protocol)
            + u32::from(b.owners);
        if sum != BPS_TOTAL {
            return Err(PolicyError::BpsSum(sum));
        }
        operator.validate()?;
        if owners.len() > MAX_OWNERS {
            return Err(PolicyError::TooManyOwners);
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut total: u64 = 0;
        for (acct, shares) in owners {
            acct.validate()?;
            if !seen.insert(acct) {
                return Err(PolicyError::DuplicateOwner(acct.0.clone()));
            }
            total = total
                .checked_add(*shares)
                .filter(|t| *t <= MAX_TOTAL_SHARES)
                .ok_or(PolicyError::TooManyShares)?;
        }
        if b.owners > 0 && total == 0 {
            return Err(PolicyError::NoOwners);
        }
        Ok(())
    }
}

/// Integer weights per account for one receipt under `policy` (merged per account, zero weights
/// dropped). The common denominator is `10_000 · total_shares` (or `10_000` without owners).
pub fn weights(
    policy: &SplitPolicy,
    node_operator: &Account,
    routing_operator: &Account,
    protocol: &Account,
    owners: &[(Account, u64)],
) -> BTreeMap<Account, u128> {
    let b = policy.bps();
    let total_shares: u128 = owners.iter().map(|(_, s)| u128::from(*s)).sum();
    let scale = if b.owners > 0 { total_shares.max(1) } else { 1 };
    let mut w: BTreeMap<Account, u128> = BTreeMap::new();
    let mut add = |a: &Account, x: u128| {
        if x > 0 {
            *w.entry(a.clone()).or_default() += x;
        }
    };
    add(node_operator, u128::from(b.node_operator) * scale);
    add(routing_operator, u128::from(b.routing_operator) * scale);
    add(protocol, u128::from(b.protocol) * scale);
    if b.owners > 0 {
        for (a, s) in owners {
            add(a, u128::from(b.owners) * u128::from(*s));
        }
    }
    w
}

/// Split `fee` by `weights` with the largest-remainder rule. The credits sum to `fee` exactly.
/// Empty or all-zero weights yield no credits (callers validate policies so this cannot happen).
pub fn split(fee: u64, weights: &BTreeMap<Account, u128>) -> Vec<(Account, u64)> {
    let total: u128 = weights.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let fee = u128::from(fee);
    let mut out: Vec<(Account, u64, u128)> = weights
        .iter()
        .map(|(a, w)| {
            let num = fee * w;
            // floor(fee·w/total) <= fee, so it fits in u64.
            (a.clone(), (num / total) as u64, num % total)
        })
        .collect();
    let assigned: u128 = out.iter().map(|(_, c, _)| u128::from(*c)).sum();
    let leftover = (fee - assigned) as usize;
    if leftover > 0 {
        // Largest fractional part first; ties by ascending account id (the BTreeMap order, kept
        // by the stable sort).
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by(|&i, &j| out[j].2.cmp(&out[i].2));
        for &i in order.iter().take(leftover) {
            out[i].1 += 1;
        }
    }
    out.into_iter()
        .filter(|(_, c, _)| *c > 0)
        .map(|(a, c, _)| (a, c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acct(s: &str) -> Account {
        Account::new(s).unwrap()
    }

    #[test]
    fn presets_split_exactly() {
        let w = weights(
            &SplitPolicy::Interchange,
            &acct("op"),
            &acct("rc"),
            &acct("protocol"),
            &[],
        );
        assert_eq!(
            split(1_000_000, &w),
            vec![
                (acct("op"), 750_000),
                (acct("protocol"), 100_000),
                (acct("rc"), 150_000)
            ]
        );
        // 1 micro-unit: largest remainder goes to the operator (75 % fractional part).
        assert_eq!(split(1, &w), vec![(acct("op"), 1)]);
        let owners = vec![(acct("a"), 1), (acct("b"), 2)];
        let w = weights(
            &SplitPolicy::NodeCo,
            &acct("op"),
            &acct("rc"),
            &acct("protocol"),
            &owners,
        );
        let c = split(300, &w);
        assert_eq!(
            c,
            vec![
                (acct("a"), 70),
                (acct("b"), 140),
                (acct("op"), 60),
                (acct("protocol"), 30)
            ]
        );
        // Ties broken by account id: 3 equal owners, 1 leftover unit goes to "a".
        let owners = vec![(acct("c"), 1), (acct("a"), 1), (acct("b"), 1)];
        let p = SplitPolicy::Custom(Bps {
            node_operator: 0,
            routing_operator: 0,
            protocol: 0,
            owners: 10_000,
        });
        let w = weights(&p, &acct("op"), &acct("rc"), &acct("protocol"), &owners);
        assert_eq!(
            split(4, &w),
            vec![(acct("a"), 2), (acct("b"), 1), (acct("c"), 1)]
        );
    }

    #[test]
    fn policy_validation() {
        let op = acct("op");
        assert_eq!(
            SplitPolicy::NodeCo.validate(&op, &[]),
            Err(PolicyError::NoOwners)
        );
        let bad = SplitPolicy::Custom(Bps {
            node_operator: 5_000,
            routing_operator: 0,
            protocol: 0,
            owners: 0,
        });
        assert_eq!(bad.validate(&op, &[]), Err(PolicyError::BpsSum(5_000)));
        assert_eq!(
            SplitPolicy::NodeCo.validate(&op, &[(acct("a"), 1), (acct("a"), 1)]),
            Err(PolicyError::DuplicateOwner("a".into()))
        );
        assert!(Account::new("has space").is_err());
        assert_eq!(
            SplitPolicy::parse("custom:7000,2000,1000,0")
                .unwrap()
                .bps()
                .node_operator,
            7_000
        );
        assert!(SplitPolicy::parse("custom:1,2").is_err());
    }

    fn arb_policy() -> impl Strategy<Value = SplitPolicy> {
        prop_oneof![
            Just(SplitPolicy::Interchange),
            Just(SplitPolicy::NodeCo),
            (0u16..=10_000, 0u16..=10_000, 0u16..=10_000).prop_map(|(a, b, c)| {
                let mut v = [a, b, c];
                v.sort();
                SplitPolicy::Custom(Bps {
                    node_operator: v[0],
                    routing_operator: v[1] - v[0],
                    protocol: v[2] - v[1],
                    owners: 10_000 - v[2],
                })
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// Credits sum to the fee exactly and each account is within one micro-unit of its exact
        /// rational share. Shrunk failures print the inputs; rerun with `PROPTEST_SEED`.
        #[test]
        fn credits_sum_to_fee_and_each_within_one_unit(
            policy in arb_policy(),
            fee in prop_oneof![0u64..1_000, any::<u64>()],
            owner_shares in proptest::collection::vec(1u64..1_000_000, 1..12),
            operator_is_owner in any::<bool>(),
        ) {
            let owners: Vec<(Account, u64)> = owner_shares
                .iter()
                .enumerate()
                .map(|(i, s)| (if operator_is_owner && i == 0 { acct("op") } else { acct(&format!("owner{i}")) }, *s))
                .collect();
            prop_assume!(policy.validate(&acct("op"), &owners).is_ok());
            let w = weights(&policy, &acct("op"), &acct("rc"), &acct("protocol"), &owners);
            let credits = split(fee, &w);
            let sum: u128 = credits.iter().map(|(_, c)| u128::from(*c)).sum();
            prop_assert_eq!(sum, u128::from(fee));
            let total: u128 = w.values().sum();
            for (a, wa) in &w {
                let got = credits.iter().find(|(x, _)| x == a).map(|(_, c)| *c).unwrap_or(0);
                // |got - fee*wa/total| <= 1  <=>  |got*total - fee*wa| <= total
                let lhs = u128::from(got) * total;
                let exact = u128::from(fee) * wa;
                prop_assert!(lhs.abs_diff(exact) <= total, "account {a}: got {got}, exact {exact}/{total}");
                prop_assert!(lhs.abs_diff(exact) < total, "floor or floor+1: {a}");
            }
        }
    }
}
