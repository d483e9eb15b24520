//! Which endpoint of an upstream takes the next call: round robin in proportion to the weights,
//! least connections (calls in flight relative to weight), or priority (primaries, and
//! secondaries only while no primary is healthy). Ejected endpoints are passed over while any
//! other is healthy. Pure: the endpoints' state and a cursor in, an index out.

use mcpq_schemas::config::{EndpointRole, LoadBalancing};

/// What the balancer sees of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct View {
    pub weight: u32,
    pub role: EndpointRole,
    pub healthy: bool,
    pub in_flight: usize,
}

/// The endpoint for the next call; `cursor` counts the calls so far (round robin's position).
pub(crate) fn pick(policy: LoadBalancing, views: &[View], cursor: u64) -> usize {
    if views.len() <= 1 {
        return 0;
    }
    let healthy: Vec<usize> = (0..views.len()).filter(|i| views[*i].healthy).collect();
    // With none healthy every endpoint is a candidate: a call is better tried than refused.
    let mut candidates = if healthy.is_empty() {
        (0..views.len()).collect()
    } else {
        healthy
    };
    if policy == LoadBalancing::Priority {
        let primaries: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|i| views[*i].role == EndpointRole::Primary)
            .collect();
        if !primaries.is_empty() {
            candidates = primaries;
        }
    }
    match policy {
        LoadBalancing::LeastConnections => {
            // Fewest in flight per unit of weight; ties go round, so equal endpoints share.
            let start = (cursor % candidates.len() as u64) as usize;
            let mut best = candidates[start];
            for offset in 1..candidates.len() {
                let i = candidates[(start + offset) % candidates.len()];
                // in_flight(i) / weight(i) < in_flight(best) / weight(best), in integers.
                let mine = views[i].in_flight as u64 * u64::from(views[best].weight.max(1));
                let theirs = views[best].in_flight as u64 * u64::from(views[i].weight.max(1));
                if mine < theirs {
                    best = i;
                }
            }
            best
        }
        LoadBalancing::RoundRobin | LoadBalancing::Priority => {
            let total: u64 = candidates
                .iter()
                .map(|i| u64::from(views[*i].weight.max(1)))
                .sum();
            let mut slot = cursor % total.max(1);
            for i in &candidates {
                let weight = u64::from(views[*i].weight.max(1));
                if slot < weight {
                    return *i;
                }
                slot -= weight;
            }
            candidates[0]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(weight: u32, role: EndpointRole, healthy: bool, in_flight: usize) -> View {
        View {
            weight,
            role,
            healthy,
            in_flight,
        }
    }

    fn counts(policy: LoadBalancing, views: &[View], calls: u64) -> Vec<usize> {
        let mut counts = vec![0; views.len()];
        for cursor in 0..calls {
            counts[pick(policy, views, cursor)] += 1;
        }
        counts
    }

    const P: EndpointRole = EndpointRole::Primary;
    const S: EndpointRole = EndpointRole::Secondary;

    #[test]
    fn round_robin_follows_the_weights_and_skips_ejected_endpoints() {
        let views = [
            view(1, P, true, 0),
            view(2, P, true, 0),
            view(1, P, true, 0),
        ];
        assert_eq!(
            counts(LoadBalancing::RoundRobin, &views, 400),
            [100, 200, 100]
        );
        let views = [
            view(1, P, true, 0),
            view(1, P, false, 0),
            view(1, P, true, 0),
        ];
        assert_eq!(counts(LoadBalancing::RoundRobin, &views, 100), [50, 0, 50]);
        let none = [view(1, P, false, 0), view(1, P, false, 0)];
        assert_eq!(
            counts(LoadBalancing::RoundRobin, &none, 10),
            [5, 5],
            "all ejected: all tried"
        );
    }

    #[test]
    fn priority_uses_secondaries_only_without_a_healthy_primary() {
        let views = [
            view(1, S, true, 0),
            view(1, P, true, 0),
            view(1, P, true, 0),
        ];
        assert_eq!(counts(LoadBalancing::Priority, &views, 10), [0, 5, 5]);
        let views = [
            view(1, S, true, 0),
            view(1, P, false, 0),
            view(1, S, true, 0),
        ];
        assert_eq!(counts(LoadBalancing::Priority, &views, 10), [5, 0, 5]);
    }

    #[test]
    fn least_connections_takes_the_least_loaded_and_shares_ties() {
        let views = [
            view(1, P, true, 5),
            view(1, P, true, 1),
            view(1, P, true, 3),
        ];
        assert_eq!(pick(LoadBalancing::LeastConnections, &views, 0), 1);
        // Weight 2 with 4 in flight is as loaded as weight 1 with 2.
        let views = [view(2, P, true, 4), view(1, P, true, 3)];
        assert_eq!(pick(LoadBalancing::LeastConnections, &views, 1), 0);
        let idle = [view(1, P, true, 0); 3];
        assert_eq!(
            counts(LoadBalancing::LeastConnections, &idle, 30),
            [10, 10, 10]
        );
        let views = [view(1, P, false, 0), view(1, P, true, 9)];
        assert_eq!(
            pick(LoadBalancing::LeastConnections, &views, 0),
            1,
            "ejected passed over"
        );
    }
}
