//! Which principal's queue of a lane a worker pulls from next: fair shares of free slots
//! between principals (and the lane's own queue, where unauthenticated jobs wait). A pure
//! policy, tested without a server.
//!
//! Policy: every queue with jobs waiting gets slots in proportion to its weight (1 unless
//! `fairness.weights` says otherwise), round robin — the queue furthest behind in slots served
//! per weight goes first. A queue that had nothing waiting starts level with the busy ones when
//! jobs arrive in it again: an idle principal banks no credit, and a principal with 5,000 jobs
//! queued delays another's next job by about one slot, not by 5,000.

use std::collections::HashMap;

/// The lane's own queue (unauthenticated jobs: pipelines, dispatchers without `auth`).
pub(crate) const LANE: &str = "";

/// Most queues remembered; idle ones are forgotten beyond it.
const MOST: usize = 10_000;

#[derive(Debug, Clone)]
struct Queue {
    /// Slots served divided by weight (virtual time).
    served: f64,
    weight: f64,
    /// Jobs may be waiting in it (it rang, or its last pull was full).
    waiting: bool,
    /// It rang and no job has been taken from it since: a pull that finds it empty may have
    /// come before JetStream's consumer saw the job, and is tried once more.
    rung: bool,
}

/// The principals' queues of one lane, as the pull loop sees them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Shares {
    queues: HashMap<String, Queue>,
    /// The virtual time of the queue served last: where a queue that was idle starts again.
    now: f64,
}

impl Shares {
    /// Jobs arrived in `tenant`'s queue (its bell rang, or a scan found jobs there).
    pub(crate) fn rang(&mut self, tenant: &str, weight: f64) {
        let now = self.now;
        if !self.queues.contains_key(tenant) && self.queues.len() >= MOST {
            self.queues.retain(|_, q| q.waiting);
        }
        let queue = self.queues.entry(tenant.to_string()).or_insert(Queue {
            served: now,
            weight,
            waiting: false,
            rung: false,
        });
        if !queue.waiting {
            // Back from idle: level with the others, no credit banked.
            queue.served = queue.served.max(now - 1.0 / queue.weight);
        }
        queue.weight = weight;
        queue.waiting = true;
        queue.rung = tenant != LANE;
    }

    /// `tenant`'s queue is worth another pull (one that found it empty just after it rang).
    pub(crate) fn wake(&mut self, tenant: &str) {
        if let Some(queue) = self.queues.get_mut(tenant) {
            queue.waiting = true;
        }
    }

    /// A pull found `tenant`'s queue empty: whether to pull it once more a moment later (it
    /// rang and gave nothing since: JetStream may ring before its consumer sees the job). It
    /// waits for that, or for its next bell, either way.
    pub(crate) fn found_empty(&mut self, tenant: &str) -> bool {
        let Some(queue) = self.queues.get_mut(tenant) else {
            return false;
        };
        queue.waiting = false;
        std::mem::take(&mut queue.rung)
    }

    /// The queues with jobs waiting, in the order to pull from them; the lane's own queue
    /// takes part when `lane_waiting`.
    pub(crate) fn order(&mut self, lane_waiting: bool) -> Vec<String> {
        if lane_waiting {
            self.rang(LANE, 1.0);
        } else if let Some(lane) = self.queues.get_mut(LANE) {
            lane.waiting = false;
        }
        let mut waiting: Vec<(&String, &Queue)> =
            self.queues.iter().filter(|(_, q)| q.waiting).collect();
        // Ties go to the name, so the order is the same on every call.
        waiting.sort_by(|a, b| a.1.served.total_cmp(&b.1.served).then(a.0.cmp(b.0)));
        waiting.into_iter().map(|(name, _)| name.clone()).collect()
    }

    /// `tenant`'s queue gave `jobs` jobs.
    pub(crate) fn served(&mut self, tenant: &str, jobs: usize) {
        if let Some(queue) = self.queues.get_mut(tenant) {
            queue.served += jobs as f64 / queue.weight;
            self.now = queue.served;
            if jobs > 0 {
                queue.rung = false;
            }
        }
    }

    /// `tenant`'s queue had no more jobs than it gave.
    pub(crate) fn empty(&mut self, tenant: &str) {
        if let Some(queue) = self.queues.get_mut(tenant) {
            queue.waiting = false;
        }
    }

    /// Whether any principal's queue has jobs waiting.
    pub(crate) fn any_waiting(&self) -> bool {
        self.queues
            .iter()
            .any(|(name, q)| q.waiting && name != LANE)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// One slot at a time: the first queue in order with a job gives it.
    fn take(shares: &mut Shares, queued: &mut HashMap<&str, usize>, slots: usize) -> Vec<String> {
        let mut taken = Vec::new();
        for _ in 0..slots {
            let order = shares.order(false);
            let Some(first) = order.first() else { break };
            let left = queued.get_mut(first.as_str()).unwrap();
            if *left == 0 {
                shares.empty(first);
                continue;
            }
            *left -= 1;
            shares.served(first, 1);
            taken.push(first.clone());
        }
        taken
    }

    #[test]
    fn a_big_backlog_delays_another_principal_by_about_one_slot() {
        let mut shares = Shares::default();
        let mut queued = HashMap::from([("alice", 5000), ("bob", 0)]);
        shares.rang("alice", 1.0);
        // Alice alone gets every slot.
        assert!(
            take(&mut shares, &mut queued, 100)
                .iter()
                .all(|t| t == "alice")
        );
        // Bob queues 20: from now on every other slot is his, at once.
        *queued.get_mut("bob").unwrap() = 20;
        shares.rang("bob", 1.0);
        let taken = take(&mut shares, &mut queued, 40);
        let bobs: Vec<usize> = taken
            .iter()
            .enumerate()
            .filter(|(_, t)| *t == "bob")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(bobs.len(), 20, "{taken:?}");
        assert!(bobs[0] <= 1, "bob's first job waited {} slots", bobs[0]);
        assert!(bobs.windows(2).all(|w| w[1] - w[0] <= 2), "{taken:?}");
    }

    #[test]
    fn weights_share_slots_in_proportion() {
        let mut shares = Shares::default();
        let mut queued = HashMap::from([("alice", 1000), ("bob", 1000)]);
        shares.rang("alice", 3.0);
        shares.rang("bob", 1.0);
        let taken = take(&mut shares, &mut queued, 400);
        let alice = taken.iter().filter(|t| *t == "alice").count();
        assert_eq!(alice, 300, "alice got {alice} of 400");
    }

    #[test]
    fn an_idle_principal_banks_no_credit() {
        let mut shares = Shares::default();
        let mut queued = HashMap::from([("alice", 1000), ("bob", 1)]);
        shares.rang("alice", 1.0);
        shares.rang("bob", 1.0);
        take(&mut shares, &mut queued, 2);
        // Bob idle while alice takes 500 slots...
        take(&mut shares, &mut queued, 500);
        // ...then bob queues 100: he shares from now on, he does not take 500 in a row.
        *queued.get_mut("bob").unwrap() = 100;
        shares.rang("bob", 1.0);
        let taken = take(&mut shares, &mut queued, 20);
        let bob = taken.iter().filter(|t| *t == "bob").count();
        assert!((9..=11).contains(&bob), "bob got {bob} of 20: {taken:?}");
    }

    #[test]
    fn a_queue_found_empty_right_after_its_bell_is_pulled_once_more() {
        let mut shares = Shares::default();
        shares.rang("alice", 1.0);
        assert!(
            shares.found_empty("alice"),
            "first empty pull after a bell: once more"
        );
        assert!(shares.order(false).is_empty(), "not until woken");
        shares.wake("alice");
        assert_eq!(shares.order(false), ["alice".to_string()]);
        assert!(
            !shares.found_empty("alice"),
            "the second empty pull is believed"
        );
        shares.rang("alice", 1.0);
        shares.served("alice", 1);
        assert!(!shares.found_empty("alice"), "it gave a job since its bell");
    }

    #[test]
    fn the_lanes_own_queue_takes_part_when_it_has_jobs() {
        let mut shares = Shares::default();
        shares.rang("alice", 1.0);
        assert_eq!(shares.order(true), [LANE.to_string(), "alice".to_string()]);
        shares.served(LANE, 1);
        assert_eq!(shares.order(true), ["alice".to_string(), LANE.to_string()]);
        assert_eq!(shares.order(false), ["alice".to_string()]);
        assert!(shares.any_waiting());
        shares.empty("alice");
        assert!(!shares.any_waiting());
    }
}
