//! The colony's live event feed: nodes joining, dying and draining, sessions placed, closed,
//! orphaned, waiting, handed over and failed over — published by the RC as they happen and served
//! as server-sent events at `GET /ui/events` (the dashboard's live view, [`crate::rc::ui`]).
//!
//! Every event gets a sequence id. The feed keeps the last [`RING`] events, so a page that loads
//! (or an `EventSource` that reconnects with `Last-Event-ID`) first gets what it missed, then the
//! live tail; a subscriber that falls more than [`RING`] events behind is sent a `resync` event
//! (re-read `/status`) instead of a silent gap. At most [`MAX_SUBSCRIBERS`] streams are open at
//! once; more are refused with 503.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for late subscribers and reconnects.
pub const RING: usize = 512;
/// Event streams open at once.
pub const MAX_SUBSCRIBERS: usize = 64;

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColonyEvent {
    /// This replica of the RC group took office as the colony's RC (ADR 0037).
    RcLeader {
        /// Its Raft id in the group.
        id: u64,
    },
    /// A node joined (or rejoined).
    NodeJoined {
        /// Its name.
        name: String,
        /// Its jurisdiction.
        jurisdiction: String,
    },
    /// The failure detector declared a node dead.
    NodeDead {
        /// Its name.
        name: String,
        /// How long it had been silent.
        silent_ms: u64,
    },
    /// A node started draining (maintenance).
    NodeDraining {
        /// Its name.
        name: String,
    },
    /// A new session was placed.
    SessionPlaced {
        /// The session.
        session: String,
        /// Its holder.
        node: String,
        /// Its epoch.
        epoch: u64,
    },
    /// A session was closed by its client.
    SessionClosed {
        /// The session.
        session: String,
        /// Its last holder.
        node: String,
    },
    /// A session's holder was lost; it will be restored from its replicas.
    SessionOrphaned {
        /// The session.
        session: String,
        /// The lost holder.
        node: String,
    },
    /// An orphaned session cannot be placed yet.
    SessionWaiting {
        /// The session.
        session: String,
        /// Why.
        reason: String,
    },
    /// A session moved: live handover, or failover from its replicas.
    SessionMoved {
        /// The session.
        session: String,
        /// Its old holder.
        from: String,
        /// Its new holder.
        to: String,
        /// Its new epoch.
        epoch: u64,
        /// `handover` | `failover`.
        how: &'static str,
        /// For a failover: from the old holder's loss being noticed to the restore answered.
        #[serde(skip_serializing_if = "Option::is_none")]
        took_ms: Option<u64>,
    },
}

/// An event with its sequence id and wall-clock time.
#[derive(Clone, Debug, Serialize)]
pub struct Stamped {
    /// Sequence id (1, 2, …), the SSE event id.
    pub id: u64,
    /// Unix time, ms.
    pub unix_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: ColonyEvent,
}

/// The RC's event feed.
#[derive(Debug)]
pub struct EventFeed {
    tx: broadcast::Sender<Arc<Stamped>>,
    ring: Mutex<VecDeque<Arc<Stamped>>>,
    next: AtomicU64,
    subscribers: Arc<AtomicUsize>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl Default for EventFeed {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(RING);
        EventFeed {
            tx,
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            next: AtomicU64::new(1),
            subscribers: Arc::new(AtomicUsize::new(0)),
            closed: tokio::sync::watch::Sender::new(false),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A subscription: the events after the asked id that the ring still holds, then the live tail.
/// Counts as one of [`MAX_SUBSCRIBERS`] until dropped.
#[derive(Debug)]
pub struct Subscription {
    /// Missed events, oldest first.
    pub backlog: Vec<Arc<Stamped>>,
    /// `true` when events between the asked id and the backlog were already dropped from the ring.
    pub gap: bool,
    /// Live events.
    pub live: broadcast::Receiver<Arc<Stamped>>,
    _slot: SubscriberSlot,
}

#[derive(Debug)]
struct SubscriberSlot(Arc<AtomicUsize>);

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Too many open streams.
#[derive(Debug, thiserror::Error)]
#[error("{open} event streams are open (at most {max}); close one or try again later", max = MAX_SUBSCRIBERS)]
pub struct TooManySubscribers {
    /// How many are open.
    pub open: usize,
}

impl EventFeed {
    /// Publishes an event (kept in the ring, sent to every live subscriber).
    pub fn publish(&self, event: ColonyEvent) {
        // Id assignment, ring and send under one lock: subscribers see ids in order, no gaps.
        let mut ring = lock(&self.ring);
        let s = Arc::new(Stamped {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            unix_ms: crate::common::wire::unix_ms(),
            event,
        });
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(s.clone());
        let _ = self.tx.send(s);
    }

    /// Ends every open stream (the RC is stopping: a graceful HTTP shutdown would otherwise wait
    /// for the dashboards' streams).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves when [`EventFeed::close`] was called.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// The newest event id (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.next.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Subscribes: events after `after` (all the ring holds when `None`, up to `initial`), then
    /// the live tail.
    pub fn subscribe(
        &self,
        after: Option<u64>,
        initial: usize,
    ) -> Result<Subscription, TooManySubscribers> {
        let open = self.subscribers.fetch_add(1, Ordering::AcqRel);
        let slot = SubscriberSlot(self.subscribers.clone());
        if open >= MAX_SUBSCRIBERS {
            return Err(TooManySubscribers { open });
        }
        let ring = lock(&self.ring);
        let live = self.tx.subscribe();
        let (backlog, gap): (Vec<_>, bool) = match after {
            Some(a) => {
                let first = ring.front().map(|e| e.id).unwrap_or(a + 1);
                let b = ring.iter().filter(|e| e.id > a).cloned().collect();
                (b, first > a + 1)
            }
            None => {
                let skip = ring.len().saturating_sub(initial);
                (ring.iter().skip(skip).cloned().collect(), false)
            }
        };
        Ok(Subscription {
            backlog,
            gap,
            live,
            _slot: slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(i: usize) -> ColonyEvent {
        ColonyEvent::NodeJoined {
            name: format!("n{i}"),
            jurisdiction: "DE".into(),
        }
    }

    #[test]
    fn late_subscribers_get_the_backlog_then_live_events_in_order() {
        let f = EventFeed::default();
        for i in 0..5 {
            f.publish(joined(i));
        }
        let mut s = f.subscribe(None, 3).unwrap();
        assert_eq!(
            s.backlog.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        f.publish(joined(5));
        let live = s.live.try_recv().unwrap();
        assert_eq!(live.id, 6);
        // A reconnect with Last-Event-ID 4 gets 5 and 6, no gap.
        let r = f.subscribe(Some(4), 100).unwrap();
        assert_eq!(
            r.backlog.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert!(!r.gap);
        assert_eq!(f.last_id(), 6);
    }

    #[test]
    fn a_reconnect_older_than_the_ring_is_told_about_the_gap() {
        let f = EventFeed::default();
        for i in 0..RING + 10 {
            f.publish(joined(i));
        }
        let r = f.subscribe(Some(3), 100).unwrap();
        assert!(r.gap);
        assert_eq!(r.backlog.len(), RING);
        assert_eq!(r.backlog[0].id, 11);
    }

    #[test]
    fn subscribers_are_bounded_and_slots_come_back() {
        let f = EventFeed::default();
        let subs: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| f.subscribe(None, 0).unwrap())
            .collect();
        let e = f.subscribe(None, 0).unwrap_err();
        assert_eq!(e.open, MAX_SUBSCRIBERS);
        drop(subs);
        assert!(f.subscribe(None, 0).is_ok());
    }

    #[test]
    fn events_serialize_with_their_kind() {
        let f = EventFeed::default();
        f.publish(ColonyEvent::SessionMoved {
            session: "s1".into(),
            from: "a".into(),
            to: "b".into(),
            epoch: 2,
            how: "failover",
            took_ms: Some(12),
        });
        let s = f.subscribe(None, 1).unwrap();
        let v = serde_json::to_value(&*s.backlog[0]).unwrap();
        assert_eq!(v["kind"], "session_moved");
        assert_eq!(v["how"], "failover");
        assert_eq!(v["id"], 1);
    }
}
