//! Test support, behind the `testing` feature (enabled by this crate's dev-dependencies and by
//! `opengrid-chaos`, whose `bench settlement` settles generated receipts): deterministic
//! co-signed receipts for tests and benches. Not part of the ledger's API.

use crate::keys::Keypair;
use crate::receipt::{Receipt, ReceiptId, SignedReceipt, Usage, UsageWindow};

/// `n` receipts from `node`, routed and co-signed by `rc`, nonces from `first_nonce`.
pub fn make_receipts(
    node: &Keypair,
    rc: &Keypair,
    n: usize,
    first_nonce: u64,
) -> Vec<SignedReceipt> {
    (0..n as u64)
        .map(|i| {
            let nonce = first_nonce + i;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&nonce.to_be_bytes());
            id[8..].copy_from_slice(&node.verifying_key().to_bytes()[..8]);
            Receipt {
                receipt_id: ReceiptId(id),
                // One session per receipt: the ledger bills a session's window once, and batches
                // of generated receipts may be applied in any order.
                session_id: format!("bench-session-{nonce}"),
                node: node.did(),
                rc: rc.did(),
                window: UsageWindow {
                    start_ms: 1_000,
                    end_ms: 2_000,
                },
                usage: Usage {
                    inputs: 10,
                    cpu_ms: 25,
                    bytes: 4_096,
                    tokens: Some(128),
                },
                fee_micros: 1_000 + nonce % 997,
                nonce,
            }
            .sign(node)
            .co_sign(rc)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_receipts_are_distinct_co_signed_and_verify() {
        let node = Keypair::from_seed([1; 32]);
        let rc = Keypair::from_seed([2; 32]);
        let rs = make_receipts(&node, &rc, 3, 41);
        assert_eq!(rs.len(), 3);
        let nonces: Vec<u64> = rs.iter().map(|r| r.receipt.nonce).collect();
        assert_eq!(nonces, vec![41, 42, 43]);
        assert!(rs[0].receipt.receipt_id != rs[1].receipt.receipt_id);
        for r in &rs {
            assert!(r.verify(&node.verifying_key(), &rc.verifying_key()).is_ok());
        }
    }
}
