//! Reconciliation with the RC after a (re)join and while serving (see the module docs of
//! [`crate::node`], "Lease loss and reconciliation"): the holding report and its ack.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use opengrid_session::SessionId;

use crate::common::wire::{self, ToRc};
use crate::node::{lock, NodeCore};

impl NodeCore {
    /// Sessions this node holds (running, starting, hibernated or frozen for a handover; not
    /// moved, stopped or closed), for the holding report.
    pub(super) fn held(&self, with_manifests: bool) -> Vec<wire::Held> {
        use opengrid_actors::SessionStatus as St;
        let mut manifests = lock(&self.manifests);
        let mut out = Vec::new();
        let ids = self.host.session_ids();
        let present: std::collections::HashSet<&SessionId> = ids.iter().collect();
        manifests.retain(|id, _| present.contains(id));
        self.agent_limits
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| present.contains(id));
        for id in ids {
            let Some(s) = self.host.get(&id) else {
                continue;
            };
            if matches!(
                s.status(),
                St::Moved { .. } | St::Stopped { .. } | St::Closed
            ) {
                continue;
            }
            let replicas = self
                .mobility()
                .map(|m| {
                    m.store
                        .replicas(&id)
                        .iter()
                        .map(|a| a.to_string())
                        .collect()
                })
                .unwrap_or_default();
            out.push(wire::Held {
                session: id.to_string(),
                epoch: s.epoch().0,
                handler: s.handler_id().to_string(),
                manifest: if with_manifests {
                    manifests.get(&id).cloned()
                } else {
                    None
                },
                replicas,
            });
        }
        out
    }

    /// Sends the holding report (`rejoin`: the one the node waits for before serving).
    pub(super) fn send_holding(&self, rejoin: bool) {
        let report = self.next_req.fetch_add(1, Ordering::Relaxed);
        if rejoin {
            self.pending_report.store(report, Ordering::Release);
        }
        // The periodic report only repairs drift of sessions the RC knows (it has their
        // manifests): it leaves the manifests out.
        let parts = wire::holding_parts(self.held(rejoin));
        let n = parts.len() as u32;
        if n > wire::MAX_HOLDING_PARTS {
            tracing::error!(parts = n, "holding report too large to send");
            return;
        }
        for (i, sessions) in parts.into_iter().enumerate() {
            self.send_rc(ToRc::Holding {
                node: self.id(),
                report,
                rejoin,
                part: i as u32,
                parts: n,
                sessions,
            });
        }
    }

    /// Handles the RC's answer to a holding report: releases what the RC places elsewhere,
    /// then (for the rejoin report) starts serving.
    pub(super) fn on_holding_ack(self: &Arc<Self>, report: u64, drop: Vec<(String, u64)>) {
        let completes = report != 0 && self.pending_report.load(Ordering::Acquire) == report;
        let me = self.clone();
        self.handlers.spawn(async move {
            use opengrid_actors::SessionStatus as St;
            for (session, epoch) in drop {
                let Ok(sid) = SessionId::new(session) else {
                    continue;
                };
                let Some(s) = me.host.get(&sid) else {
                    continue;
                };
                // A moved or closed copy is gone already; a frozen one is mid-handover (it
                // becomes `moved`, or serves on and is named again by a later report).
                if s.epoch().0 != epoch
                    || matches!(s.status(), St::Moved { .. } | St::Closed | St::Frozen)
                {
                    continue;
                }
                tracing::warn!(session = %sid, epoch, "the RC places this session elsewhere (a newer epoch): dropped here");
                me.metrics.fenced.add(1, &[]);
                let _ = me.host.release(&sid).await;
                lock(&me.manifests).remove(&sid);
                me.agent_limits
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&sid);
            }
            if completes
                && me
                    .pending_report
                    .compare_exchange(report, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                && !me.reconciled.swap(true, Ordering::AcqRel)
            {
                tracing::info!(sessions = me.host.len(), "reconciled with the RC: serving");
            }
        });
    }
}
