//! Leases: which process runs which partition of a partitioned projection.
//!
//! Every `run` process of a partitioned projection is a *node*. Nodes heartbeat, and each takes
//! about `partitions / live nodes` partitions through leases kept in the store (PostgreSQL):
//! a lease row per partition with an owner, an expiry and a fencing token that goes up by one
//! at every change of owner. Every commit of a partition checks, in its own transaction, that
//! its token is still the lease's token (and holds the lease row against a takeover until it
//! commits), so a process that lost a partition can never commit to it again.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The timing of leases.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseSettings {
    /// A partition whose owner died is taken over within this bound. The lease lives 80% of
    /// it and is renewed every 20%, so a dead owner's leases expire within 80% of it and are
    /// seen and taken at the next heartbeat of another node.
    pub takeover: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            takeover: Duration::from_secs(10),
        }
    }
}

impl LeaseSettings {
    /// How long a lease (and a node's membership) lives without a heartbeat.
    pub fn ttl(&self) -> Duration {
        self.takeover.mul_f64(0.8).max(Duration::from_millis(200))
    }

    /// How often a node heartbeats and rebalances.
    pub fn heartbeat(&self) -> Duration {
        self.takeover.mul_f64(0.2).max(Duration::from_millis(50))
    }
}

/// Who asks: one node, for one partitioned projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub projection: Arc<str>,
    /// This process's node id (unique per process run).
    pub node: Arc<str>,
    pub partitions: u32,
    pub ttl: Duration,
}

/// A lease held: the partition and the fencing token of this ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub partition: u32,
    pub token: i64,
}

/// What a heartbeat learned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    /// The leases this node still holds (renewed by the heartbeat).
    pub held: Vec<Lease>,
    /// Nodes of this projection with a live heartbeat, this one included.
    pub live_nodes: u32,
}

impl Membership {
    /// How many partitions each live node should hold: `ceil(partitions / live nodes)`.
    pub fn fair_share(&self, partitions: u32) -> u32 {
        let nodes = self.live_nodes.max(1);
        partitions.div_ceil(nodes)
    }
}

/// A commit's proof of ownership: the store commits only while the lease of the commit's
/// partition still carries this owner and token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub owner: Arc<str>,
    pub token: i64,
}

/// One partition's lease, as status shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub projection: String,
    pub partition: u32,
    /// The node that holds it (`None`: free).
    pub owner: Option<String>,
    pub token: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub acquired_at: Option<DateTime<Utc>>,
}

/// A node id for this process: host, process id and a random suffix.
pub fn node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_rounds_up() {
        let m = |n| Membership {
            held: vec![],
            live_nodes: n,
        };
        assert_eq!(m(1).fair_share(8), 8);
        assert_eq!(m(2).fair_share(8), 4);
        assert_eq!(m(3).fair_share(8), 3);
        assert_eq!(m(0).fair_share(8), 8);
        assert_eq!(m(9).fair_share(8), 1);
    }

    #[test]
    fn takeover_bound_covers_ttl_and_heartbeat() {
        let s = LeaseSettings::default();
        assert!(s.ttl() + s.heartbeat() <= s.takeover);
    }
}
