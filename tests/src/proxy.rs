//! A TCP fault proxy for the tests (no fault-injection proxy installs here): put between two
//! real processes — a worker and its upstream, mcpq and nats-server — it forwards bytes both
//! ways, and on command holds them (a blackhole: connections stay open, nothing passes), delays
//! them, or cuts an answer in the middle with a TCP reset.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Faults {
    /// Added to every chunk, both ways.
    latency_ms: AtomicU64,
    /// The answers still to cut: chunks from the target holding `cut_marker`.
    cuts_left: AtomicU32,
    cut_marker: Mutex<Vec<u8>>,
    /// The tags (the marker and the word it begins) whose answer was cut: each is cut once.
    cut_tags: Mutex<std::collections::HashSet<Vec<u8>>>,
    /// Answers cut so far.
    cut: AtomicU32,
    /// Connections accepted so far.
    connections: AtomicU32,
    /// Set while nothing may pass.
    blackhole: AtomicBool,
}

/// A running proxy to `target`; stops on drop.
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    /// Tells the pumps that the blackhole was lifted.
    lifted: watch::Sender<()>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), target).await
    }

    /// [`FaultProxy::start`] on a given address (to stand in for a server clients already know).
    pub async fn start_on(addr: SocketAddr, target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(addr).await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let faults = Arc::new(Faults::default());
        let (lifted, _) = watch::channel(());
        let stop = CancellationToken::new();
        let (shared, watch, until) = (faults.clone(), lifted.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    () = until.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let (faults, lifted, stop) = (shared.clone(), watch.subscribe(), until.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    connection(client, server, faults, lifted, stop).await;
                });
            }
        });
        FaultProxy {
            addr,
            faults,
            lifted,
            stop,
        }
    }

    /// `http://<proxy>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// `nats://<proxy>`.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Holds every byte, both ways, until [`FaultProxy::lift`]; connections stay open.
    pub fn blackhole(&self) {
        self.faults.blackhole.store(true, Ordering::SeqCst);
    }

    /// Lets bytes pass again, the held ones first.
    pub fn lift(&self) {
        self.faults.blackhole.store(false, Ordering::SeqCst);
        self.lifted.send_replace(());
    }

    /// Delays every chunk by `latency`.
    pub fn latency(&self, latency: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Cuts the next `answers` chunks from the target that hold `marker`: half of each is
    /// passed on, then both sides of its connection are reset. The word `marker` begins (up
    /// to a character other than a letter, digit, `-` or `_`) is the answer's tag, and each tag
    /// is cut once: the answer of a call run again after its cut passes.
    pub fn cut_answers(&self, marker: &str, answers: u32) {
        *self.faults.cut_marker.lock().expect("marker") = marker.as_bytes().to_vec();
        self.faults.cuts_left.store(answers, Ordering::SeqCst);
    }

    /// Answers cut so far.
    pub fn cut(&self) -> u32 {
        self.faults.cut.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.faults.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Pumps one connection both ways until either side closes, a cut resets it, or the proxy stops.
async fn connection(
    client: TcpStream,
    server: TcpStream,
    faults: Arc<Faults>,
    lifted: watch::Receiver<()>,
    stop: CancellationToken,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let cut = CancellationToken::new();
    let up = pump(
        client_read,
        server_write,
        faults.clone(),
        lifted.clone(),
        false,
        cut.clone(),
    );
    let down = pump(server_read, client_write, faults, lifted, true, cut.clone());
    tokio::select! {
        () = stop.cancelled() => {}
        _ = futures::future::join(up, down) => {}
    }
}

/// Copies `from` to `to`, applying the faults; `answers` marks the target-to-client direction.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
    mut lifted: watch::Receiver<()>,
    answers: bool,
    cut: CancellationToken,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            () = cut.cancelled() => return,
            read = from.read(&mut buffer) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        while faults.blackhole.load(Ordering::SeqCst) {
            tokio::select! {
                () = cut.cancelled() => return,
                changed = lifted.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let latency = faults.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let chunk = &buffer[..n];
        if answers && should_cut(&faults, chunk) {
            let _ = to.write_all(&chunk[..n / 2]).await;
            let _ = to.flush().await;
            faults.cut.fetch_add(1, Ordering::SeqCst);
            // A reset, not a close: the client sees the connection broken mid-answer. With a
            // zero linger the socket resets when its read half (the other pump's) is dropped.
            let _ = to.as_ref().set_zero_linger();
            to.forget();
            cut.cancel();
            return;
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

fn should_cut(faults: &Faults, chunk: &[u8]) -> bool {
    let marker = faults.cut_marker.lock().expect("marker").clone();
    if marker.is_empty() {
        return false;
    }
    let Some(at) = chunk
        .windows(marker.len())
        .position(|w| w == marker.as_slice())
    else {
        return false;
    };
    let tag: Vec<u8> = chunk[at..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
        .copied()
        .collect();
    let mut cut = faults.cut_tags.lock().expect("cut tags");
    if cut.contains(&tag) {
        return false;
    }
    let take = faults
        .cuts_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if take {
        cut.insert(tag);
    }
    take
}
