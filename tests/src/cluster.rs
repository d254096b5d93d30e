//! A cluster of real `sluice serve` processes on loopback, for the cluster suites.
//!
//! Node `i` (1-based, also its `--node-id`) gets its own data directory (`DIR/node-i`), a
//! client listener and an HTTP API on free ports of 127.0.0.1, and its cluster listener on
//! **127.0.0.(10+i)** (127.0.0.11, .12, .13, ...): a node binds its outgoing cluster
//! connections to that IP, so a peer (or a [`Proxy`](crate::proxy::Proxy)) tells nodes apart
//! by source IP. Node 1 starts first with no `--join` and bootstraps the cluster; the others
//! `--join` node 1's announced cluster address. [`ClusterProcess::start`] returns once every
//! node answers `/readyz` with 200 (a member that knows the metadata leader).
//!
//! A restarted node gets back the ports it had (client, HTTP, cluster), as a real server
//! would: its peers know it by its cluster address, clients by the client one.
//!
//! Every process is stopped by its pid: [`ClusterProcess::stop`] with SIGTERM (and a bounded
//! wait), dropping the cluster with SIGKILL.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use sluice_client::{QueueArguments, QueueOptions};

use crate::broker::{sluice_command, wait_output, BrokerProcess, WAIT};
use crate::http::HttpClient;
use crate::proxy::{Fault, Proxy};

/// A node's id, as given to `--node-id` (1-based).
pub type NodeId = u64;

/// How often a wait on the nodes' HTTP API asks again.
const POLL: Duration = Duration::from_millis(100);

/// The IP of node `id`'s cluster listener.
pub fn cluster_ip(id: NodeId) -> String {
    assert!(
        (1..=200).contains(&id),
        "node ids 1..=200 fit 127.0.0.(10+id)"
    );
    format!("127.0.0.{}", 10 + id)
}

/// The IP node `id`'s proxy listens on, in a cluster started with
/// [`ClusterProcess::start_proxied`].
pub fn proxy_ip(id: NodeId) -> String {
    assert!(
        (1..=200).contains(&id),
        "node ids 1..=200 fit 127.0.0.(20+id)"
    );
    format!("127.0.0.{}", 20 + id)
}

/// One node: its process while it runs, and what outlives the process.
#[derive(Debug)]
pub struct ClusterNode {
    id: NodeId,
    data_dir: PathBuf,
    process: Option<BrokerProcess>,
    /// Addresses of its first start, reused on every restart.
    client_addr: String,
    http_addr: String,
    cluster_addr: String,
    /// The address its peers reach it at: its proxy's, or its cluster address.
    advertised: String,
    /// Everything its processes logged on stderr so far (read from the current one on demand:
    /// a process's lines can be read only once).
    log: Mutex<String>,
}

impl ClusterNode {
    /// Its node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether its process runs (it may have exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(BrokerProcess::is_running)
    }

    /// Its process; panics if it was killed or stopped.
    pub fn process(&self) -> &BrokerProcess {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is down", self.id))
    }

    /// The process id; panics if it is down.
    pub fn pid(&self) -> u32 {
        self.process().pid()
    }

    /// `host:port` of its client listener (the same across restarts).
    pub fn addr(&self) -> &str {
        &self.client_addr
    }

    /// The connection URL to this node alone, as guest.
    pub fn url(&self) -> String {
        format!("sluice://guest:guest@{}", self.client_addr)
    }

    /// `host:port` of its HTTP API (the same across restarts).
    pub fn http_addr(&self) -> &str {
        &self.http_addr
    }

    /// A client of its HTTP API, as guest (an administrator).
    pub fn http(&self) -> HttpClient {
        HttpClient::new(&self.http_addr, "guest", "guest")
    }

    /// `host:port` of its cluster listener, as it announced it.
    pub fn cluster_addr(&self) -> &str {
        &self.cluster_addr
    }

    /// The cluster address its peers use: its proxy's when the cluster is proxied.
    pub fn advertised_addr(&self) -> &str {
        &self.advertised
    }

    /// Everything it logged on stderr so far, its earlier processes' logs first.
    pub fn log(&self) -> String {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = &self.process {
            append_lines(&mut log, &p.log());
        }
        log.clone()
    }

    /// Takes in the last lines of a process that ended.
    fn keep_log(&mut self, last: String) {
        let log = self.log.get_mut().unwrap_or_else(|p| p.into_inner());
        append_lines(log, &last);
        log.push_str("--- process ended ---\n");
    }
}

/// A running cluster of `sluice serve` processes; every process is SIGKILLed when dropped.
#[derive(Debug)]
pub struct ClusterProcess {
    dir: PathBuf,
    extra: Vec<String>,
    nodes: Vec<ClusterNode>,
    /// Proxy `i` is in front of node `i+1`'s cluster listener; empty when not proxied.
    proxies: Vec<Proxy>,
}

/// The election timeout the test clusters run with, unless a test passes its own: twice the
/// broker's default, because debug builds on a loaded 2-core machine can stall for longer
/// than a heartbeat budget of release builds allows, and a leader lost to a stall would make
/// tests that are about something else wait for an election.
pub const TEST_ELECTION_TIMEOUT_MS: &str = "2000";

impl ClusterProcess {
    /// Starts `n` nodes under `dir` (node 1 bootstraps, the others join it), each with
    /// `extra` flags besides the cluster ones, and waits (bounded) until every node is ready.
    pub async fn start(dir: &Path, n: usize, extra: &[&str]) -> ClusterProcess {
        Self::start_nodes(dir, n, extra, false).await
    }

    /// Like [`start`](Self::start), with a [`Proxy`] in front of every node's cluster
    /// listener (node `i`'s on `127.0.0.(20+i)`, advertised with `--cluster-advertise`), so
    /// that every cluster connection goes through a proxy and a test can partition nodes
    /// ([`isolate`](Self::isolate), [`proxy`](Self::proxy)). Must run on a multi-thread
    /// runtime or one not blocked by the test: the proxies are tasks on it.
    pub async fn start_proxied(dir: &Path, n: usize, extra: &[&str]) -> ClusterProcess {
        Self::start_nodes(dir, n, extra, true).await
    }

    async fn start_nodes(dir: &Path, n: usize, extra: &[&str], proxied: bool) -> ClusterProcess {
        assert!(n >= 1, "a cluster has at least one node");
        let mut cluster = ClusterProcess {
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            nodes: Vec::with_capacity(n),
            proxies: Vec::new(),
        };
        for id in 1..=n as NodeId {
            let join = cluster.nodes.first().map(|first| first.advertised.clone());
            let proxy = if proxied {
                let proxy = Proxy::start(&format!("{}:0", proxy_ip(id)), None)
                    .await
                    .unwrap_or_else(|e| panic!("starting node {id}'s proxy: {e}"));
                Some(proxy)
            } else {
                None
            };
            let listen = Listen {
                client: "127.0.0.1:0".to_owned(),
                http: "127.0.0.1:0".to_owned(),
                cluster: format!("{}:0", cluster_ip(id)),
                advertise: proxy.as_ref().map(|p| p.addr().to_string()),
            };
            let data_dir = dir.join(format!("node-{id}"));
            let process = cluster.spawn(id, &data_dir, &listen, join.as_slice()).await;
            let cluster_addr = process
                .cluster_addr()
                .expect("a cluster listener")
                .to_owned();
            if let Some(proxy) = proxy {
                let target = cluster_addr
                    .parse()
                    .unwrap_or_else(|e| panic!("node {id}'s cluster address {cluster_addr}: {e}"));
                proxy.set_target(target);
                cluster.proxies.push(proxy);
            }
            cluster.nodes.push(ClusterNode {
                id,
                data_dir,
                client_addr: process.addr().to_owned(),
                http_addr: process.http_addr().expect("HTTP API on").to_owned(),
                advertised: listen.advertise.unwrap_or_else(|| cluster_addr.clone()),
                cluster_addr,
                process: Some(process),
                log: Mutex::new(String::new()),
            });
        }
        for id in 1..=n as NodeId {
            cluster.wait_ready(id).await;
        }
        cluster
    }

    /// The proxy in front of node `id`'s cluster listener; panics unless the cluster was
    /// started with [`start_proxied`](Self::start_proxied).
    pub fn proxy(&self, id: NodeId) -> &Proxy {
        let index = usize::try_from(id).ok().and_then(|i| i.checked_sub(1));
        index
            .and_then(|i| self.proxies.get(i))
            .unwrap_or_else(|| panic!("no proxy for node {id}: start the cluster proxied"))
    }

    /// Cuts node `id` off from every other node, both ways (a blackhole: connections stay
    /// open, nothing passes). Clients still reach it directly.
    pub fn isolate(&self, id: NodeId) {
        let isolated: std::net::IpAddr = cluster_ip(id).parse().expect("an IP");
        for other in self.nodes.iter().map(|n| n.id).filter(|&o| o != id) {
            let peer = cluster_ip(other).parse().expect("an IP");
            self.proxy(id).set_fault_from(peer, Fault::Blackhole);
            self.proxy(other).set_fault_from(isolated, Fault::Blackhole);
        }
    }

    /// Lifts every fault of every proxy.
    pub fn heal(&self) {
        for proxy in &self.proxies {
            proxy.heal();
        }
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never: [`start`](Self::start) wants one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: NodeId) -> &ClusterNode {
        let index = usize::try_from(id).ok().and_then(|i| i.checked_sub(1));
        index
            .and_then(|i| self.nodes.get(i))
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {}", self.nodes.len()))
    }

    fn node_mut(&mut self, id: NodeId) -> &mut ClusterNode {
        let n = self.nodes.len();
        let index = usize::try_from(id).ok().and_then(|i| i.checked_sub(1));
        index
            .and_then(|i| self.nodes.get_mut(i))
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {n}"))
    }

    /// Ids of the nodes whose process runs.
    pub fn running(&mut self) -> Vec<NodeId> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then_some(n.id))
            .collect()
    }

    /// A URL naming every node's client address, in node order, as guest.
    pub fn url(&self) -> String {
        let hosts: Vec<&str> = self.nodes.iter().map(|n| n.addr()).collect();
        format!("sluice://guest:guest@{}", hosts.join(","))
    }

    /// SIGKILL of node `id`: a crash. Its data directory stays.
    pub fn kill9(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let process = node
            .process
            .take()
            .unwrap_or_else(|| panic!("node {id} is already down"));
        node.keep_log(process.kill9_and_log());
    }

    /// SIGTERM of node `id` and a bounded wait for its clean exit.
    pub fn stop_node(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let process = node
            .process
            .take()
            .unwrap_or_else(|| panic!("node {id} is already down"));
        let log = process.stop_and_log();
        node.keep_log(log);
    }

    /// Starts node `id` again on its data directory and its former addresses, `--join`ing
    /// the running nodes (a member ignores that), and waits until it is ready.
    pub async fn restart(&mut self, id: NodeId) {
        self.start_again(id).await;
        self.wait_ready(id).await;
    }

    /// Like [`restart`](Self::restart), without waiting until the node is ready (one that
    /// is expected never to be).
    pub async fn start_again(&mut self, id: NodeId) {
        let join = self.live_cluster_addrs(id);
        let node = self.node(id);
        assert!(node.process.is_none(), "node {id} is still running");
        let listen = Listen {
            client: node.client_addr.clone(),
            http: node.http_addr.clone(),
            cluster: node.cluster_addr.clone(),
            advertise: (node.advertised != node.cluster_addr).then(|| node.advertised.clone()),
        };
        let data_dir = node.data_dir.clone();
        let process = self.spawn(id, &data_dir, &listen, &join).await;
        self.node_mut(id).process = Some(process);
    }

    /// Starts one more node (id = the next one, empty data directory, not proxied) that
    /// `--join`s the running nodes, waits until it is ready, and returns its id.
    pub async fn add_node(&mut self) -> NodeId {
        let id = self.nodes.len() as NodeId + 1;
        assert!(
            self.proxies.is_empty(),
            "add_node does not put a proxy in front of the new node"
        );
        let join = self.live_cluster_addrs(id);
        let listen = Listen {
            client: "127.0.0.1:0".to_owned(),
            http: "127.0.0.1:0".to_owned(),
            cluster: format!("{}:0", cluster_ip(id)),
            advertise: None,
        };
        let data_dir = self.dir.join(format!("node-{id}"));
        let process = self.spawn(id, &data_dir, &listen, &join).await;
        let cluster_addr = process
            .cluster_addr()
            .expect("a cluster listener")
            .to_owned();
        self.nodes.push(ClusterNode {
            id,
            data_dir,
            client_addr: process.addr().to_owned(),
            http_addr: process.http_addr().expect("HTTP API on").to_owned(),
            advertised: cluster_addr.clone(),
            cluster_addr,
            process: Some(process),
            log: Mutex::new(String::new()),
        });
        self.wait_ready(id).await;
        id
    }

    /// Kills node `id` (SIGKILL) if it runs, deletes its data directory, and starts it again
    /// empty under its id, joining the running nodes: a replaced disk. Not waited for: the
    /// cluster refuses it (it forgot the member's votes).
    pub async fn wipe_and_start_again(&mut self, id: NodeId) {
        if self.node(id).process.is_some() {
            self.kill9(id);
        }
        let dir = self.node(id).data_dir.clone();
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("wiping {}: {e}", dir.display()));
        self.start_again(id).await;
    }

    /// `sluice --json cluster ARGS` against node `id` (as guest, an administrator, from
    /// loopback); its JSON answer. Panics with the nodes' logs if it fails.
    pub async fn cli(&self, id: NodeId, args: &[&str]) -> Value {
        let url = format!("sluice://{}", self.node(id).addr());
        let mut all = vec![
            "--url".to_owned(),
            url,
            "--json".to_owned(),
            "cluster".to_owned(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let output = tokio::task::spawn_blocking(move || {
            let child = sluice_command()
                .args(&all)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start sluice");
            wait_output(child)
        })
        .await
        .expect("the CLI's thread");
        assert!(
            output.status.success(),
            "sluice cluster {args:?} on node {id} failed: {}\nlogs:\n{}",
            String::from_utf8_lossy(&output.stderr),
            (1..=self.len() as NodeId)
                .map(|n| format!("--- node {n}\n{}", self.node(n).log()))
                .collect::<Vec<_>>()
                .join("\n")
        );
        serde_json::from_slice(&output.stdout).expect("JSON on stdout")
    }

    /// Waits (bounded) until node `id` has logged a line containing `text`; panics with its
    /// log if it does not.
    pub async fn await_log(&self, id: NodeId, text: &str) {
        let logged = async {
            while !self.node(id).log().contains(text) {
                tokio::time::sleep(POLL).await;
            }
        };
        if tokio::time::timeout(WAIT, logged).await.is_err() {
            panic!(
                "node {id} did not log {text:?} within {WAIT:?}; its log:\n{}",
                self.node(id).log()
            );
        }
    }

    /// The leader of queue `queue` (default vhost) as node `id` knows it (`GET
    /// /api/queues/NAME`, whose `leader` a replicated queue has), or `None` while it knows
    /// none or does not know the queue.
    pub async fn leader_seen_by(&self, id: NodeId, queue: &str) -> Option<NodeId> {
        let path = format!("/api/queues/{}", percent_encode(queue));
        let response = self.node(id).http().get(&path).await;
        if response.status == 404 {
            return None;
        }
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        let status: Value = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {}", response.body));
        queue_leader(&status)
    }

    /// The leader of queue `queue` (default vhost) as the first running node sees it.
    pub async fn leader_of(&mut self, queue: &str) -> Option<NodeId> {
        let asked = *self.running().first().expect("a running node");
        self.leader_seen_by(asked, queue).await
    }

    /// Waits (bounded) until the running nodes agree that queue `queue` has a leader other
    /// than `not` (a node just killed), and returns it.
    pub async fn await_leader_of(&mut self, queue: &str, not: Option<NodeId>) -> NodeId {
        let running = self.running();
        let wait = async {
            loop {
                let mut seen = Vec::with_capacity(running.len());
                for &id in &running {
                    seen.push(self.leader_seen_by(id, queue).await);
                }
                if let Some(Some(leader)) = seen.first().copied() {
                    if Some(leader) != not && seen.iter().all(|s| *s == Some(leader)) {
                        return leader;
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("queue {queue}: no agreed leader within {WAIT:?}"))
    }

    /// Stops every running node: SIGTERM to all at once, then a bounded wait for each clean
    /// exit; panics (with the logs) if one does not exit cleanly.
    pub fn stop(mut self) {
        let stopping: Vec<(NodeId, BrokerProcess)> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.process.take().map(|p| (n.id, p)))
            .collect();
        let failures: Vec<String> = std::thread::scope(|scope| {
            let waits: Vec<_> = stopping
                .into_iter()
                .map(|(id, p)| {
                    scope.spawn(move || {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.stop()))
                            .err()
                            .map(|e| format!("node {id}: {}", panic_text(&e)))
                    })
                })
                .collect();
            waits
                .into_iter()
                .filter_map(|w| w.join().expect("stop thread"))
                .collect()
        });
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Advertised cluster addresses of the running nodes other than `id`.
    fn live_cluster_addrs(&mut self, id: NodeId) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter(|n| n.id != id)
            .filter_map(|n| n.is_running().then(|| n.advertised.clone()))
            .collect()
    }

    /// Starts one node's process off the async runtime (a start blocks on its stdout, and a
    /// proxy task on this runtime may have to forward its join).
    async fn spawn(
        &self,
        id: NodeId,
        data_dir: &Path,
        listen: &Listen,
        join: &[String],
    ) -> BrokerProcess {
        let mut args = vec![
            "--node-id".to_owned(),
            id.to_string(),
            "--listen".to_owned(),
            listen.client.clone(),
            "--http-listen".to_owned(),
            listen.http.clone(),
            "--cluster-listen".to_owned(),
            listen.cluster.clone(),
        ];
        if let Some(advertise) = &listen.advertise {
            args.push("--cluster-advertise".to_owned());
            args.push(advertise.clone());
        }
        if !join.is_empty() {
            args.push("--join".to_owned());
            args.push(join.join(","));
        }
        if !self
            .extra
            .iter()
            .any(|a| a.starts_with("--cluster-election-timeout-ms"))
        {
            args.push("--cluster-election-timeout-ms".to_owned());
            args.push(TEST_ELECTION_TIMEOUT_MS.to_owned());
        }
        args.extend(self.extra.iter().cloned());
        let data_dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            BrokerProcess::start(&data_dir, &args)
        })
        .await
        .unwrap_or_else(|e| panic!("starting node {id}: {e}"))
    }

    /// Waits (bounded) until node `id` answers `GET /readyz` with 200; panics with its log
    /// if it exits meanwhile or is not ready in time.
    async fn wait_ready(&mut self, id: NodeId) {
        let readyz = HttpClient::anonymous(self.node(id).http_addr());
        let mut last = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            let node = self.node_mut(id);
            if !node.is_running() {
                panic!("node {id} exited while starting; its log:\n{}", node.log());
            }
            // Bounded per request too: a node stuck mid-answer must not outlast the deadline.
            match tokio::time::timeout(POLL * 20, readyz.get("/readyz")).await {
                Ok(response) if response.status == 200 => return,
                Ok(response) => last = Some(format!("{} {}", response.status, response.body)),
                Err(_) => last = Some("no answer".to_owned()),
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "node {id} not ready within {WAIT:?} (last /readyz: {}); its log:\n{}",
            last.as_deref().unwrap_or("none"),
            self.node(id).log()
        );
    }

    /// The directory the nodes' data directories are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Addresses one node listens on.
#[derive(Debug)]
struct Listen {
    client: String,
    http: String,
    cluster: String,
    advertise: Option<String>,
}

/// The leader in a `GET /api/queues/NAME` answer: its `leader` field, a node id or `null`.
/// Kept apart: the field is the replicated queue's, and the one place to follow a change.
fn queue_leader(queue: &Value) -> Option<NodeId> {
    queue.get("leader").and_then(Value::as_u64)
}

/// `name` for a URL path: unreserved characters as they are, every other byte as `%XX`.
fn percent_encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn append_lines(log: &mut String, lines: &str) {
    if !lines.is_empty() {
        log.push_str(lines);
        log.push('\n');
    }
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".to_owned())
}

/// Queue options of a queue replicated on 3 nodes, with `arguments` otherwise.
pub fn replicated(arguments: QueueArguments) -> QueueOptions {
    let mut options = QueueOptions::new();
    options.arguments = QueueArguments {
        replicas: Some(3),
        ..arguments
    };
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_map_to_distinct_loopback_ips() {
        assert_eq!(cluster_ip(1), "127.0.0.11");
        assert_eq!(cluster_ip(3), "127.0.0.13");
    }

    #[test]
    fn a_queue_leader_is_read_from_the_queue_resource() {
        let queue = serde_json::json!({ "name": "a", "leader": 2, "replicas": [] });
        assert_eq!(queue_leader(&queue), Some(2));
        assert_eq!(queue_leader(&serde_json::json!({ "leader": null })), None);
        assert_eq!(queue_leader(&serde_json::json!({ "name": "local" })), None);
    }

    #[test]
    fn queue_names_are_percent_encoded_for_paths() {
        assert_eq!(percent_encode("orders-1.v2_x~"), "orders-1.v2_x~");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
