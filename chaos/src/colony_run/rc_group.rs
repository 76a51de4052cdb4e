//! The colony's RC as the harness sees it: one `opengrid rc`, or an RC group of 3 or 5 replicas on
//! one Raft log (ADR 0037), of which only the leader in office serves the directory (a follower
//! answers `/health` and `/status` itself and redirects the rest). The leader is found through
//! every replica's `GET /status` (`group.role`, `group.acting`, `group.term`), waiting with a
//! deadline while there is none, and found again when the one in use stops answering or no
//! longer leads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one replica may take to answer `/status` while the leader is being looked for (a
/// paused replica must not hold the search up for the client's whole timeout).
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// Period of the leader search while there is no leader.
const RETRY: Duration = Duration::from_millis(50);

/// One RC process of the colony.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RcReplica {
    /// Its process name.
    pub name: String,
    /// Its client API base URL.
    pub api: String,
}

/// What one replica's `/status` says of its group; `None` from [`GroupView::of`]: a single RC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct GroupView {
    /// The replica's Raft id.
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Whether it acts as the colony's RC now (leader in office, confirmed by a quorum); `None`
    /// where the status does not say.
    pub acting: Option<bool>,
    /// The Raft id of the leader it follows, if it knows one.
    pub leader: Option<u64>,
    /// Its current term.
    pub term: u64,
}

impl GroupView {
    /// The `group` object of a `/status` answer (absent or null: a single RC).
    pub fn of(status: &Value) -> Option<GroupView> {
        let g = status.get("group").filter(|g| g.is_object())?;
        Some(GroupView {
            id: g["id"].as_u64().unwrap_or(0),
            role: g["role"].as_str().unwrap_or_default().to_string(),
            acting: g["acting"].as_bool(),
            leader: g["leader"].as_u64(),
            term: g["term"].as_u64().unwrap_or(0),
        })
    }

    /// Leads and acts on it (a leader not yet in office, or no longer confirmed, redirects
    /// clients and may show an empty directory).
    fn leads(&self) -> bool {
        self.role == "leader" && self.acting != Some(false)
    }
}

/// Which replica leads, from what each answered (`None`: no answer), in group order.
///
/// A single RC (no `group` in its status) leads when it answers. In a group the leader is the
/// one replica that says it leads, and acts, at the highest term any replica reports: a deposed
/// leader that has not heard of the election yet still says `leader`, at an older term, and is
/// passed over; while the new term has no leader (an election), or its leader has not taken
/// office yet, there is none. A follower's word for the leader
/// is not taken: the process must answer for itself, so a fault never aims at one that is gone.
pub(super) fn leader_of(statuses: &[Option<Value>]) -> Option<usize> {
    let answered = || {
        statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, GroupView::of(s))))
    };
    if let Some((i, _)) = answered().find(|(_, v)| v.is_none()) {
        return Some(i);
    }
    let views: Vec<(usize, GroupView)> = answered().filter_map(|(i, v)| Some((i, v?))).collect();
    let term = views.iter().map(|(_, v)| v.term).max()?;
    let mut claims = views
        .iter()
        .filter(|(_, v)| v.term == term && v.leads())
        .map(|(i, _)| *i);
    match (claims.next(), claims.next()) {
        (Some(i), None) => Some(i),
        _ => None,
    }
}

/// One line per replica of what it answered (for errors).
fn describe(replicas: &[RcReplica], statuses: &[Option<Value>]) -> String {
    replicas
        .iter()
        .zip(statuses)
        .map(|(r, s)| match s.as_ref().map(GroupView::of) {
            None => format!("{}: no answer", r.name),
            Some(None) => format!("{}: a single RC", r.name),
            Some(Some(v)) => format!(
                "{}: {}{} in term {}, leader {}",
                r.name,
                v.role,
                if v.acting == Some(false) && v.role == "leader" {
                    " (not in office)"
                } else {
                    ""
                },
                v.term,
                v.leader
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "none".into())
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The colony's RC processes and the one last seen leading. Cheap to clone (shared).
#[derive(Clone)]
pub(super) struct RcGroup {
    /// The harness's operator client.
    http: reqwest::Client,
    replicas: Arc<Vec<RcReplica>>,
    /// Index of the replica last seen leading.
    leader: Arc<Mutex<Option<usize>>>,
}

impl RcGroup {
    /// The RC processes of one colony, in group order (Raft ids 1..), asked with `http`.
    pub fn new(http: reqwest::Client, replicas: Vec<RcReplica>) -> Self {
        RcGroup {
            http,
            replicas: Arc::new(replicas),
            leader: Arc::new(Mutex::new(None)),
        }
    }

    /// Every RC process, in group order.
    pub fn replicas(&self) -> &[RcReplica] {
        &self.replicas
    }

    /// Whether this is a group of several RCs (not one RC).
    pub fn is_group(&self) -> bool {
        self.replicas.len() > 1
    }

    fn cached(&self) -> Option<usize> {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, leader: Option<usize>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// `GET /status` of one replica; a group's replicas are each given [`ASK_TIMEOUT`].
    async fn ask(&self, i: usize) -> Option<Value> {
        let mut rq = self
            .http
            .get(format!("{}/status", self.replicas.get(i)?.api));
        if self.is_group() {
            rq = rq.timeout(ASK_TIMEOUT);
        }
        let r = rq.send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// What every replica answers now, in group order.
    async fn ask_all(&self) -> Vec<Option<Value>> {
        futures::future::join_all((0..self.replicas.len()).map(|i| self.ask(i))).await
    }

    /// The leader and its `/status` now, `None` while no replica leads (or none answers). The
    /// replica last seen leading is asked first; when it does not answer or no longer leads,
    /// every replica is.
    pub async fn current(&self) -> Option<(RcReplica, Value)> {
        if let Some(i) = self.cached() {
            if let Some(st) = self.ask(i).await {
                if GroupView::of(&st).is_none_or(|v| v.leads()) {
                    return Some((self.replicas[i].clone(), st));
                }
            }
        }
        let all = self.ask_all().await;
        let i = leader_of(&all);
        self.remember(i);
        let i = i?;
        Some((self.replicas[i].clone(), all.into_iter().nth(i)??))
    }

    /// `GET /status` of the leader (`None` while no leader answers).
    pub async fn status(&self) -> Option<Value> {
        self.current().await.map(|(_, st)| st)
    }

    /// `GET /status` of the leader, waiting up to `within` while there is none (an election, a
    /// leader not yet confirmed).
    pub async fn status_within(&self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.status().await {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The leader, asked afresh of every replica (a single RC: at once, unasked); waits up to
    /// `within` while there is none.
    pub async fn leader(&self, within: Duration) -> Result<RcReplica, String> {
        if !self.is_group() {
            return Ok(self.replicas[0].clone());
        }
        let deadline = Instant::now() + within;
        loop {
            let all = self.ask_all().await;
            let i = leader_of(&all);
            self.remember(i);
            if let Some(i) = i {
                return Ok(self.replicas[i].clone());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no RC leader within {within:?}: {}",
                    describe(&self.replicas, &all)
                ));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// What a client of the colony is given: every replica's API, comma separated, `first`
    /// first (a single RC: its API).
    pub fn client_addresses(&self, first: &RcReplica) -> String {
        std::iter::once(first.api.as_str())
            .chain(
                self.replicas
                    .iter()
                    .filter(|r| r.name != first.name)
                    .map(|r| r.api.as_str()),
            )
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process name of the replica with Raft id `id` (ids are 1.. in group order).
    pub fn name_of(&self, id: u64) -> Option<&str> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.replicas.get(i).map(|r| r.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn st(id: u64, role: &str, leader: Option<u64>, term: u64) -> Option<Value> {
        Some(json!({
            "members": [],
            "sessions": [],
            "group": {
                "id": id,
                "role": role,
                "acting": role == "leader",
                "leader": leader,
                "leader_api": leader.map(|l| format!("http://127.0.0.1:{}", 7600 + l)),
                "term": term,
                "replicas": [
                    {"id": 1, "address": "127.0.0.1:7611", "api": "http://127.0.0.1:7601"},
                    {"id": 2, "address": "127.0.0.1:7612", "api": "http://127.0.0.1:7602"},
                    {"id": 3, "address": "127.0.0.1:7613", "api": "http://127.0.0.1:7603"}
                ]
            }
        }))
    }

    #[test]
    fn a_single_rc_leads_when_it_answers() {
        let lone = Some(json!({"members": [], "sessions": []}));
        assert_eq!(leader_of(&[lone]), Some(0));
        assert_eq!(leader_of(&[None]), None);
        assert_eq!(GroupView::of(&json!({"group": null})), None);
    }

    #[test]
    fn the_replica_that_leads_at_the_highest_term_is_the_leader() {
        let all = [
            st(1, "follower", Some(2), 5),
            st(2, "leader", Some(2), 5),
            st(3, "follower", Some(2), 5),
        ];
        assert_eq!(leader_of(&all), Some(1));
        // The leader killed: the followers still name it, but it does not answer for itself.
        let gone = [
            st(1, "follower", Some(2), 5),
            None,
            st(3, "follower", Some(2), 5),
        ];
        assert_eq!(leader_of(&gone), None);
        // An election in progress: no leader at the new term.
        let election = [
            st(1, "candidate", None, 6),
            None,
            st(3, "follower", None, 6),
        ];
        assert_eq!(leader_of(&election), None);
        // Elected: replica 3 leads term 6, but has not taken office yet.
        let mut elected = [
            st(1, "follower", Some(3), 6),
            None,
            st(3, "leader", Some(3), 6),
        ];
        elected[2].as_mut().unwrap()["group"]["acting"] = json!(false);
        assert_eq!(leader_of(&elected), None);
        // In office.
        elected[2].as_mut().unwrap()["group"]["acting"] = json!(true);
        assert_eq!(leader_of(&elected), Some(2));
        // A status without `acting` is taken at its role.
        elected[2].as_mut().unwrap()["group"]
            .as_object_mut()
            .unwrap()
            .remove("acting");
        assert_eq!(leader_of(&elected), Some(2));
    }

    #[test]
    fn a_deposed_leader_at_an_older_term_is_passed_over() {
        // Replica 2 was paused through an election and resumed: it still says it leads term 5.
        let stale = [
            st(1, "follower", Some(3), 6),
            st(2, "leader", Some(2), 5),
            st(3, "leader", Some(3), 6),
        ];
        assert_eq!(leader_of(&stale), Some(2));
        // Only the stale claim answers beside a follower of the new term: no leader yet.
        let only_stale = [
            st(1, "follower", Some(3), 6),
            st(2, "leader", Some(2), 5),
            None,
        ];
        assert_eq!(leader_of(&only_stale), None);
        let v = GroupView::of(stale[1].as_ref().unwrap()).unwrap();
        assert_eq!(
            v,
            GroupView {
                id: 2,
                role: "leader".into(),
                acting: Some(true),
                leader: Some(2),
                term: 5
            }
        );
    }

    #[test]
    fn what_each_replica_said_is_described() {
        let rs: Vec<RcReplica> = (1..=3)
            .map(|i| RcReplica {
                name: format!("rc-eu-{i}"),
                api: format!("http://127.0.0.1:760{i}"),
            })
            .collect();
        let d = describe(
            &rs,
            &[
                st(1, "candidate", None, 6),
                None,
                st(3, "follower", None, 6),
            ],
        );
        assert_eq!(
            d,
            "rc-eu-1: candidate in term 6, leader none; rc-eu-2: no answer; rc-eu-3: follower in term 6, leader none"
        );
        let g = RcGroup::new(reqwest::Client::new(), rs.clone());
        assert_eq!(
            g.client_addresses(&rs[1]),
            "http://127.0.0.1:7602,http://127.0.0.1:7601,http://127.0.0.1:7603"
        );
        let one = RcGroup::new(reqwest::Client::new(), rs[..1].to_vec());
        assert_eq!(one.client_addresses(&rs[0]), "http://127.0.0.1:7601");
        assert_eq!(g.name_of(2), Some("rc-eu-2"));
        assert_eq!(g.name_of(0), None);
        assert_eq!(g.name_of(4), None);
        assert!(g.is_group());
    }
}
