//! The asking side: a signed admission request to one remote RC over HTTP, and its verified answer.

use opengrid_canopy::PeerEntry;
use opengrid_session::{Manifest, SessionId};
use serde_json::Value;

use super::*;

impl Federation {
    pub(super) async fn ask(
        &self,
        peer: &PeerEntry,
        m: &Manifest,
        session: Option<&SessionId>,
        data_class: &str,
        zones: &[String],
    ) -> Result<RemotePlacement, String> {
        let s = &peer.summary;
        let (req, signed) = self.request(&s.rc_did, m, session, data_class, zones);
        inc(&self.counters.requests_sent);
        let url = format!("http://{}{ADMISSION_PATH}", s.rc_control_addr);
        let resp = self
            .http
            .post(&url)
            .json(&signed)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if bytes.len() > MAX_FEDERATION_BYTES {
            return Err(format!("answer of {} bytes is over the limit", bytes.len()));
        }
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(format!(
                "{status} {}: {}",
                body["code"].as_str().unwrap_or(""),
                body["message"].as_str().unwrap_or("")
            ));
        }
        let answer: Signed =
            serde_json::from_slice(&bytes).map_err(|e| format!("undecodable answer: {e}"))?;
        if !answer.verify(ANSWER_DOMAIN, &s.rc_did) {
            return Err(format!("answer not signed by {}", s.rc_did));
        }
        let a: AdmissionAnswer = serde_json::from_str(&answer.payload)
            .map_err(|e| format!("undecodable answer: {e}"))?;
        if a.request_id != req.request_id || a.rc != s.rc_did {
            return Err("answer does not match the request".into());
        }
        match a.outcome {
            Outcome::Placed {
                session_id,
                node,
                node_name,
                address,
                epoch,
                capability,
            } => Ok(RemotePlacement {
                session_id,
                node,
                node_name,
                address,
                epoch,
                capability,
                colony: s.colony_id.clone(),
                region: s.region.clone(),
                rc: s.rc_did.clone(),
                rc_api: s.rc_client_api.clone(),
                zones: zones.to_vec(),
                data_class: data_class.to_string(),
                routed: true,
            }),
            Outcome::Refused { code, message } => Err(format!("refused ({code}): {message}")),
        }
    }
}
