//! Which lane a worker pulls from next: weighted fair sharing of free slots between the
//! `high`, `normal` and `low` lanes of one server. A pure policy, tested without a server.
//!
//! Policy: when every lane has jobs queued, free slots go to high, normal and low in the ratio
//! 4 : 2 : 1, so high drains first and low still moves (one slot in seven). A lane with nothing
//! queued gives its share to the others and, when jobs arrive in it again, starts level with
//! the lanes that were busy — an idle lane banks no credit.

use mcpq_schemas::Lane;

/// Share of free slots per lane when all lanes are busy.
pub(crate) const WEIGHTS: [(Lane, f64); 3] =
    [(Lane::High, 4.0), (Lane::Normal, 2.0), (Lane::Low, 1.0)];

/// Virtual time per lane: slots served divided by weight. The lane furthest behind goes first.
#[derive(Debug, Default, Clone)]
pub(crate) struct Picker {
    served: [f64; 3],
    /// The virtual time of the lane served last: where a lane that was empty restarts.
    now: f64,
}

impl Picker {
    /// The lanes in the order to ask them for jobs now.
    pub(crate) fn order(&self) -> [Lane; 3] {
        let mut lanes = [Lane::High, Lane::Normal, Lane::Low];
        // Stable sort: ties go to the higher lane.
        lanes.sort_by(|a, b| self.served[a.index()].total_cmp(&self.served[b.index()]));
        lanes
    }

    /// `lane` gave `jobs` jobs.
    pub(crate) fn served(&mut self, lane: Lane, jobs: usize) {
        if jobs == 0 {
            return;
        }
        let i = lane.index();
        self.served[i] += jobs as f64 / WEIGHTS[i].1;
        self.now = self.served[i];
    }

    /// `lane` had nothing queued: it starts again no earlier than the others stand now.
    pub(crate) fn empty(&mut self, lane: Lane) {
        let i = lane.index();
        self.served[i] = self.served[i].max(self.now - 1.0 / WEIGHTS[i].1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates `slots` single-slot pulls with every lane holding `queued[lane]` jobs.
    fn simulate(queued: [usize; 3], slots: usize) -> [usize; 3] {
        run(&mut Picker::default(), queued, slots)
    }

    fn run(picker: &mut Picker, mut queued: [usize; 3], slots: usize) -> [usize; 3] {
        let mut taken = [0; 3];
        for _ in 0..slots {
            for lane in picker.order() {
                let i = lane.index();
                if queued[i] == 0 {
                    picker.empty(lane);
                    continue;
                }
                queued[i] -= 1;
                taken[i] += 1;
                picker.served(lane, 1);
                break;
            }
        }
        taken
    }

    #[test]
    fn busy_lanes_share_slots_four_two_one() {
        assert_eq!(simulate([1000, 1000, 1000], 700), [400, 200, 100]);
    }

    #[test]
    fn high_drains_first_and_low_is_not_starved() {
        // 100 high and 100 low: high is done after ~125 slots, low got ~25 of them.
        let taken = simulate([100, 0, 100], 125);
        assert_eq!(taken[0], 100);
        assert!(taken[2] >= 20, "low starved: {taken:?}");
    }

    #[test]
    fn an_idle_lane_banks_no_credit() {
        let mut picker = Picker::default();
        // Only low has work for a long time...
        assert_eq!(run(&mut picker, [0, 0, 1000], 1000), [0, 0, 1000]);
        // ...then high and low are both busy: low still gets its share (1 in 5) at once.
        let taken = run(&mut picker, [1000, 0, 1000], 70);
        assert!(
            (12..=15).contains(&taken[2]),
            "low got {} of 70 slots",
            taken[2]
        );
    }

    #[test]
    fn with_one_lane_busy_it_gets_every_slot() {
        assert_eq!(simulate([0, 50, 0], 50), [0, 50, 0]);
    }
}
