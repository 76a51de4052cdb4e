//! Receiving side of the canopy, free of libp2p: the acceptance rules for a received summary and
//! the peering table with expiry. The swarm task feeds bytes in; tests drive it with their own
//! clock.
//!
//! Acceptance, in order (the cheapest check first, so junk costs little):
//! 1. the bytes decode within the size limit and every field is in range, else **malformed**;
//! 2. the summary's `rc_did` is in the federation's trusted RC set, else **unknown key**;
//! 3. the signature verifies against `rc_did`, else **bad signature**;
//! 4. `seq` is above the last accepted `seq` of that RC and `issued_at_ms` is neither older than the
//!    expiry window nor further ahead than the allowed clock skew, else **replay or stale**.
//!
//! The last accepted `seq` per RC is remembered even after the RC's entry expires (bounded by the
//! trusted set), so an old summary replayed after expiry is still refused.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use opengrid_session::Did;
use serde::Serialize;

use crate::summary::{ColonySummary, DecodeError, SignedSummary};

/// Why a received summary was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The bytes are not a well-formed summary.
    #[error("malformed summary: {0}")]
    Malformed(#[from] DecodeError),
    /// Signed (or claimed) by an RC the federation does not know.
    #[error("summary from unknown RC {0}")]
    UnknownKey(Did),
    /// The signature does not verify against the claimed RC.
    #[error("bad signature on a summary claiming RC {0}")]
    BadSignature(Did),
    /// Not newer than what was already accepted from that RC.
    #[error("replayed or stale summary from {did}: seq {seq} is not above {last}")]
    Replay {
        /// The RC.
        did: Did,
        /// Received sequence number.
        seq: u64,
        /// Last accepted sequence number.
        last: u64,
    },
    /// Issued too long ago, or in the future beyond the allowed skew.
    #[error("stale summary from {did}: issued at {issued_at_ms} ms, now {now_ms} ms")]
    OutOfWindow {
        /// The RC.
        did: Did,
        /// `issued_at_ms` of the summary.
        issued_at_ms: u64,
        /// Receiver's clock.
        now_ms: u64,
    },
}

impl Rejection {
    /// Whether the sender is to blame (the message is invalid whoever relays it) rather than late.
    /// Stale and replayed summaries can be relayed in good faith by a peer that raced a newer one,
    /// so they are ignored without penalty; everything else is rejected and penalised.
    pub fn is_penalised(&self) -> bool {
        !matches!(
            self,
            Rejection::Replay { .. } | Rejection::OutOfWindow { .. }
        )
    }
}

/// Acceptance rules for summaries.
#[derive(Clone, Debug)]
pub struct Admission {
    /// Trusted RC identities.
    pub trusted: BTreeSet<Did>,
    /// Largest accepted message.
    pub max_message_bytes: usize,
}

impl Admission {
    /// Steps 1–3: decode and authenticate.
    pub fn authenticate(&self, bytes: &[u8]) -> Result<SignedSummary, Rejection> {
        let signed = SignedSummary::decode(bytes, self.max_message_bytes)?;
        let did = &signed.summary.rc_did;
        if !self.trusted.contains(did) {
            return Err(Rejection::UnknownKey(did.clone()));
        }
        signed
            .verify()
            .map_err(|_| Rejection::BadSignature(did.clone()))?;
        Ok(signed)
    }
}

/// One remote colony as known from its latest accepted summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerEntry {
    /// The latest accepted summary (carries the remote RC's addresses and did).
    pub summary: ColonySummary,
    /// The RC's signature over it (so the entry can be forwarded and re-verified).
    #[serde(skip)]
    pub signature: [u8; 64],
    /// Milliseconds since the summary was accepted here.
    pub age_ms: u64,
    /// Milliseconds until the entry expires unless a newer summary arrives.
    pub expires_in_ms: u64,
}

impl PeerEntry {
    /// The remote RC.
    pub fn rc_did(&self) -> &Did {
        &self.summary.rc_did
    }

    /// The remote RC's libp2p peer id.
    pub fn peer_id(&self) -> libp2p::PeerId {
        crate::identity::peer_of_did(&self.summary.rc_did)
    }

    /// The signed summary, e.g. to hand to another component that re-verifies it.
    pub fn signed(&self) -> SignedSummary {
        SignedSummary {
            summary: self.summary.clone(),
            signature: self.signature,
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    signed: SignedSummary,
    accepted_at: Instant,
}

/// The peering table: latest summary per remote RC, with expiry.
#[derive(Debug)]
pub struct PeeringTable {
    local: Option<Did>,
    expiry: Duration,
    entries: HashMap<Did, Slot>,
    last_seq: HashMap<Did, u64>,
}

impl PeeringTable {
    /// An empty table whose entries expire `expiry` after their last accepted summary. Summaries
    /// from `local` (this RC itself) are never entered.
    pub fn new(local: Option<Did>, expiry: Duration) -> Self {
        Self {
            local,
            expiry,
            entries: HashMap::new(),
            last_seq: HashMap::new(),
        }
    }

    /// Step 4: freshness. On success the summary replaces the RC's entry.
    pub fn admit(
        &mut self,
        signed: SignedSummary,
        now: Instant,
        now_ms: u64,
        max_clock_skew: Duration,
    ) -> Result<(), Rejection> {
        let s = &signed.summary;
        let did = s.rc_did.clone();
        let last = self.last_seq.get(&did).copied();
        if let Some(last) = last {
            if s.seq <= last {
                return Err(Rejection::Replay {
                    did,
                    seq: s.seq,
                    last,
                });
            }
        }
        let too_old = s.issued_at_ms.saturating_add(ms(self.expiry)) < now_ms;
        let too_new = s.issued_at_ms > now_ms.saturating_add(ms(max_clock_skew));
        if too_old || too_new {
            return Err(Rejection::OutOfWindow {
                did,
                issued_at_ms: s.issued_at_ms,
                now_ms,
            });
        }
        self.last_seq.insert(did.clone(), s.seq);
        if self.local.as_ref() != Some(&did) {
            self.entries.insert(
                did,
                Slot {
                    signed,
                    accepted_at: now,
                },
            );
        }
        Ok(())
    }

    /// Removes entries whose last summary is `expiry` old; returns the removed RCs.
    pub fn sweep(&mut self, now: Instant) -> Vec<Did> {
        let expiry = self.expiry;
        let mut gone = Vec::new();
        self.entries.retain(|did, slot| {
            let keep = now.saturating_duration_since(slot.accepted_at) < expiry;
            if !keep {
                gone.push(did.clone());
            }
            keep
        });
        gone.sort();
        gone
    }

    /// Live entries at `now` (expired ones are left out even before the next sweep), sorted by
    /// colony id then RC did.
    pub fn snapshot(&self, now: Instant) -> Vec<PeerEntry> {
        let mut v: Vec<PeerEntry> = self
            .entries
            .values()
            .filter_map(|slot| {
                let age = now.saturating_duration_since(slot.accepted_at);
                (age < self.expiry).then(|| PeerEntry {
                    summary: slot.signed.summary.clone(),
                    signature: slot.signed.signature,
                    age_ms: ms(age),
                    expires_in_ms: ms(self.expiry - age),
                })
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.summary.colony_id, &a.summary.rc_did)
                .cmp(&(&b.summary.colony_id, &b.summary.rc_did))
        });
        v
    }

    /// Number of live entries at `now`.
    pub fn live(&self, now: Instant) -> usize {
        self.entries
            .values()
            .filter(|slot| now.saturating_duration_since(slot.accepted_at) < self.expiry)
            .count()
    }

    /// Number of entries (including ones expired but not yet swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::{did, key, sample};

    const SKEW: Duration = Duration::from_secs(30);

    fn admission(trusted: &[u8]) -> Admission {
        Admission {
            trusted: trusted.iter().map(|s| did(*s)).collect(),
            max_message_bytes: 64 * 1024,
        }
    }

    fn now_ms_of(seq: u64) -> u64 {
        sample(0, seq).issued_at_ms
    }

    #[test]
    fn acceptance_order_and_reasons() {
        let adm = admission(&[1, 2]);
        let good = sample(1, 5).sign(&key(1));
        assert_eq!(adm.authenticate(&good.encode()).unwrap(), good);
        // Claims a trusted RC, signed by another key.
        let forged = sample(1, 5).sign(&key(2));
        assert_eq!(
            adm.authenticate(&forged.encode()),
            Err(Rejection::BadSignature(did(1)))
        );
        // Validly signed by a key the federation does not know.
        let unknown = sample(9, 5).sign(&key(9));
        assert_eq!(
            adm.authenticate(&unknown.encode()),
            Err(Rejection::UnknownKey(did(9)))
        );
        assert!(matches!(
            adm.authenticate(b"\x00\x01garbage"),
            Err(Rejection::Malformed(_))
        ));
        assert!(Rejection::BadSignature(did(1)).is_penalised());
        assert!(!Rejection::Replay {
            did: did(1),
            seq: 1,
            last: 1
        }
        .is_penalised());
    }

    #[test]
    fn replay_and_stale_sequence_numbers_are_dropped() {
        let t0 = Instant::now();
        let mut table = PeeringTable::new(None, Duration::from_secs(90));
        let s5 = sample(1, 5).sign(&key(1));
        table.admit(s5.clone(), t0, now_ms_of(5), SKEW).unwrap();
        // The very same bytes again: replay.
        assert_eq!(
            table.admit(s5, t0, now_ms_of(5), SKEW),
            Err(Rejection::Replay {
                did: did(1),
                seq: 5,
                last: 5
            })
        );
        // An older one: stale.
        let s4 = sample(1, 4).sign(&key(1));
        assert!(matches!(
            table.admit(s4, t0, now_ms_of(5), SKEW),
            Err(Rejection::Replay {
                seq: 4,
                last: 5,
                ..
            })
        ));
        let s6 = sample(1, 6).sign(&key(1));
        table.admit(s6, t0, now_ms_of(6), SKEW).unwrap();
        assert_eq!(table.snapshot(t0)[0].summary.seq, 6);
    }

    #[test]
    fn issued_at_window() {
        let t0 = Instant::now();
        let mut table = PeeringTable::new(None, Duration::from_secs(90));
        let s = sample(1, 5).sign(&key(1));
        let issued = s.summary.issued_at_ms;
        assert!(matches!(
            table.admit(s.clone(), t0, issued + 90_001, SKEW),
            Err(Rejection::OutOfWindow { .. })
        ));
        assert!(matches!(
            table.admit(s.clone(), t0, issued - 30_001, SKEW),
            Err(Rejection::OutOfWindow { .. })
        ));
        table.admit(s, t0, issued + 89_000, SKEW).unwrap();
    }

    #[test]
    fn entries_expire_but_sequence_memory_stays() {
        let t0 = Instant::now();
        let expiry = Duration::from_secs(90);
        let mut table = PeeringTable::new(Some(did(7)), expiry);
        table
            .admit(sample(1, 5).sign(&key(1)), t0, now_ms_of(5), SKEW)
            .unwrap();
        table
            .admit(sample(2, 5).sign(&key(2)), t0, now_ms_of(5), SKEW)
            .unwrap();
        // Our own summary is never a peer.
        table
            .admit(sample(7, 5).sign(&key(7)), t0, now_ms_of(5), SKEW)
            .unwrap();
        assert_eq!(table.len(), 2);
        let t1 = t0 + Duration::from_secs(60);
        table
            .admit(sample(2, 6).sign(&key(2)), t1, now_ms_of(6), SKEW)
            .unwrap();
        let just_before = t0 + expiry - Duration::from_millis(1);
        assert_eq!(table.snapshot(just_before).len(), 2);
        assert!(table.sweep(just_before).is_empty());
        let at = t0 + expiry;
        assert_eq!(table.snapshot(at).len(), 1, "expired entries are hidden");
        assert_eq!(table.live(at), 1);
        assert_eq!(table.len(), 2, "not swept yet");
        assert_eq!(table.sweep(at), vec![did(1)]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.snapshot(at)[0].summary.colony_id, "colony-2");
        // A replay of the expired RC's old summary is still refused.
        assert!(matches!(
            table.admit(sample(1, 5).sign(&key(1)), at, now_ms_of(5), SKEW),
            Err(Rejection::Replay { .. })
        ));
    }
}
