//! What a worker tells others about one server, used by every stage and using none of them:
//! the record, reply and dead letter of each job ([`outbox`]), metrics ([`observe`]), audit
//! entries ([`audit`]),
//! its heartbeat ([`heartbeat`]), the upstream's health ([`health`]) and catalog ([`catalog`]).

pub(crate) mod audit;
pub(crate) mod catalog;
pub(crate) mod health;
pub(crate) mod heartbeat;
pub(crate) mod observe;
pub(crate) mod outbox;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use mcpq_schemas::worker::{CircuitState, ServerStats};
use tokio::sync::Notify;

use crate::lock;

/// One server's reporting handle in a worker: its metric handles and what its heartbeat says.
pub(crate) struct Report {
    pub server: String,
    pub worker_id: String,
    pub meters: observe::Meters,
    /// What this worker did for the server, for its heartbeat.
    stats: Mutex<ServerStats>,
    /// The upstream as the health checks last saw it.
    up: Mutex<Option<bool>>,
    circuit: Mutex<CircuitState>,
    /// Signalled when the circuit opens or closes, so the heartbeat shows it at once.
    circuit_changed: Notify,
    /// The server's live workers, this one included (the heartbeat counts them; rate limits
    /// are split over them).
    pub peers: Arc<AtomicUsize>,
    /// Where this worker serves its metrics, shown in its heartbeat.
    pub metrics_addr: Option<String>,
}

impl Report {
    pub(crate) fn new(server: &str, worker_id: &str, metrics_addr: Option<String>) -> Report {
        Report {
            server: server.to_string(),
            worker_id: worker_id.to_string(),
            meters: observe::Meters::new(server),
            stats: Mutex::default(),
            up: Mutex::default(),
            circuit: Mutex::new(CircuitState::Closed),
            circuit_changed: Notify::new(),
            peers: Arc::new(AtomicUsize::new(1)),
            metrics_addr,
        }
    }

    /// The circuit breaker changed state.
    pub(crate) fn circuit(&self, state: CircuitState) {
        *lock(&self.circuit) = state;
        self.meters.circuit(state);
        self.circuit_changed.notify_one();
    }

    pub(crate) fn circuit_state(&self) -> CircuitState {
        *lock(&self.circuit)
    }

    /// What the health checks found.
    pub(crate) fn upstream_up(&self, up: bool) {
        *lock(&self.up) = Some(up);
        self.meters.up(up);
    }

    pub(crate) fn up(&self) -> Option<bool> {
        *lock(&self.up)
    }

    pub(crate) fn stats(&self) -> ServerStats {
        lock(&self.stats).clone()
    }

    fn update_stats(&self, change: impl FnOnce(&mut ServerStats)) {
        change(&mut lock(&self.stats));
    }

    fn set_peers(&self, live: usize) {
        let live = live.max(1);
        let was = self.peers.swap(live, Ordering::Relaxed);
        if was != live {
            tracing::debug!(server = %self.server, workers = live, "live workers counted");
        }
    }
}
