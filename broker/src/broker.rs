//! The broker's shared state: the store, the queues and the routing table, and the durable
//! topology that ties them together.
//!
//! Connections read the [`Registry`] as an immutable snapshot (routing a publish batch, finding
//! a queue): taking one is a pointer copy under a lock held for nanoseconds, so routing never
//! holds a lock that a declare waits on. Topology changes are serialized by one writer lock and
//! follow one order: build the next registry on a copy, write `definitions.bin` durably, and
//! only then publish the copy. A change whose write fails (a full disk) is not visible to
//! anyone and the client gets the typed cause: a declare that was answered survives a crash,
//! and one that was refused left nothing behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::BytesMut;
use sluice_client::wire::{
    self, DeclareExchange, DeclareQueue, DeclareQueueOk, ErrorCode, Headers, Overflow, Payload,
    QueueArguments, MAX_NAME_LEN, MAX_PRIORITY, MAX_REPLICAS,
};

use crate::auth::{AccessStore, VhostLimits};
use crate::config::ServerConfig;
use crate::definitions::{self, ChangeKind, DefinitionsError, Entry, QueueDef, Topology};
use crate::error::RequestError;
use crate::flow::{Blocking, Cause, Flow};
use crate::metrics::Metrics;
use crate::moves::Moves;
use crate::queue::{self, ConnId, QueueHandle, QueueMeta, QueueStats};
use crate::routing::{namespace, Binding, Exchange, HeaderLimits, RoutingTable};
use crate::storage::{DurabilityConfig, LogConfig, Store, StoreConfig};

mod cluster_topology;
mod replicated;

use cluster_topology::ManagedTopology;

pub(crate) use replicated::is_replicated;
pub use replicated::{ReplicaLag, ReplicationStatus};

/// How often the free disk space is checked when little is published.
const DISK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Free space is checked again after each `1/DISK_CHECK_SLICES` of `min_free_disk_bytes` published.
const DISK_CHECK_SLICES: u64 = 8;

/// Names with this prefix belong to the server.
pub const RESERVED_PREFIX: &str = "sluice.";

/// Queues and exchanges, read by every connection as an immutable snapshot.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Exchanges and bindings.
    pub routing: RoutingTable,
    /// Queues by name.
    pub queues: HashMap<Arc<str>, QueueHandle>,
    /// The exchanges and bindings that came from the cluster's metadata group (none on a
    /// single node): not in `definitions.bin`.
    cluster_managed: Arc<ManagedTopology>,
    /// Stored bindings of this node's queues to a cluster-wide exchange, waiting at start
    /// for the metadata group to declare the exchange here again; kept in the file.
    pending_bindings: Vec<Binding>,
}

/// The broker.
#[derive(Debug)]
pub struct Broker {
    /// Its settings.
    pub config: ServerConfig,
    /// Users, vhosts and permissions (the users file), and logins against them.
    pub access: Arc<AccessStore>,
    /// The published snapshot; replaced whole, never changed in place.
    registry: RwLock<Arc<Registry>>,
    /// Serializes topology changes and remembers what `definitions.bin` holds.
    topology: Mutex<TopologyWriter>,
    next_conn_id: AtomicU64,
    next_generated: AtomicU64,
    /// Bytes published since the last free-space check (see [`Broker::note_published`]).
    published_since_check: AtomicU64,
    /// Why publishing is blocked, if it is; sessions turn changes into `Blocked`/`Unblocked`.
    flow: Arc<Flow>,
    /// Moves of messages between queues, running and recently finished.
    moves: Arc<Moves>,
    /// Broker-wide metrics (the queues keep their own counters).
    metrics: Arc<Metrics>,
    /// The cluster this node is part of; unset on a single node (no `--node-id`).
    cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    /// The groups of the replicated queues hosted here (empty on a single node).
    replicated: replicated::HostedGroups,
    /// Where spans go (`--otlp-endpoint`); `None`: no spans are made.
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    // Last: dropped after the queues' logs, which the queue tasks close first.
    store: Store,
}

/// The writer's side of topology changes: what is on disk now, so a change that leaves the
/// durable topology as it is (a transient queue, an idempotent declare) writes nothing.
#[derive(Debug)]
struct TopologyWriter {
    persisted: Topology,
}

/// A topology change in progress: the writer lock and the copy being changed. Nothing is
/// visible until [`Broker::commit`] has made it durable.
struct Change<'a> {
    writer: MutexGuard<'a, TopologyWriter>,
    next: Registry,
}

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The storage engine refused the data directory.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// The topology file is unreadable or damaged.
    #[error("topology: {0}")]
    Definitions(#[from] definitions::DefinitionsError),
    /// The users file cannot be read, created or used.
    #[error("{0}")]
    Users(#[from] crate::auth::UsersFileError),
}

impl Broker {
    /// Opens the data directory, recovers every durable queue and its topology, and starts the
    /// queue tasks. Must run inside a tokio runtime.
    pub fn open(config: ServerConfig) -> Result<Arc<Self>, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| crate::storage::StorageError::io(&config.data_dir, e))?;
        let metrics = Arc::new(Metrics::default());
        let store = Store::open(
            &config.data_dir,
            StoreConfig {
                log: LogConfig {
                    segment_bytes: config.segment_bytes,
                    ..LogConfig::default()
                },
                durability: DurabilityConfig {
                    observer: Some(Arc::clone(&metrics) as _),
                    ..DurabilityConfig::default()
                },
            },
        )?;
        let topology = definitions::load(&config.data_dir)?;
        definitions::keep_reserve(&config.data_dir, 0);
        let access = Arc::new(AccessStore::open(
            &config.users_file_path(),
            config.loopback_users.clone(),
        )?);
        let telemetry = config
            .otlp
            .as_ref()
            .map(|o| crate::telemetry::Telemetry::start(o, "sluice".to_owned()));
        let broker = Arc::new(Self {
            config,
            access,
            registry: RwLock::new(Arc::new(Registry {
                routing: RoutingTable::new(),
                queues: HashMap::new(),
                cluster_managed: Arc::default(),
                pending_bindings: Vec::new(),
            })),
            topology: Mutex::new(TopologyWriter {
                persisted: topology.clone(),
            }),
            next_conn_id: AtomicU64::new(1),
            next_generated: AtomicU64::new(1),
            published_since_check: AtomicU64::new(0),
            flow: Arc::default(),
            moves: Arc::default(),
            metrics,
            cluster: std::sync::OnceLock::new(),
            replicated: replicated::HostedGroups::default(),
            telemetry,
            store,
        });
        broker.restore(topology)?;
        Ok(broker)
    }

    fn restore(self: &Arc<Self>, topology: Topology) -> Result<(), StartError> {
        let mut change = self.begin_change();
        let reg = &mut change.next;
        let known: std::collections::HashSet<u64> = topology.queues.iter().map(|q| q.uid).collect();
        for uid in self.store.queue_uids()? {
            if !known.contains(&uid) {
                // A transient queue of an earlier run, one created just before a crash, or
                // one whose deletion was recorded just before a stop.
                self.store.remove_queue_dir(uid)?;
            }
        }
        for q in topology.queues {
            let Some(log) = self.recover_queue(&q)? else {
                continue;
            };
            let meta = Arc::new(QueueMeta {
                name: Arc::from(q.name.as_str()),
                uid: q.uid,
                durable: true,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments: q.arguments,
                stats: QueueStats::default(),
            });
            let handle = queue::spawn(Arc::clone(&meta), log, Arc::downgrade(self));
            reg.routing.add_queue(&q.name);
            reg.queues.insert(Arc::clone(&meta.name), handle);
        }
        for x in topology.exchanges {
            let entry = Entry::Exchange(x.name.clone());
            reg.routing
                .declare_exchange(x)
                .map_err(|e| self.bad_entry(entry, e))?;
        }
        for b in topology.bindings {
            if !reg.routing.has_queue(&b.queue) {
                tracing::error!(queue = %b.queue, exchange = %b.exchange,
                    "binding skipped: its queue could not be recovered");
                continue;
            }
            if self.config.cluster.is_some() && reg.routing.exchange(&b.exchange).is_none() {
                // A cluster-wide exchange: not in this file, the metadata group declares it.
                reg.pending_bindings.push(b);
                continue;
            }
            let entry = Entry::binding(&b);
            reg.routing.bind(b).map_err(|e| self.bad_entry(entry, e))?;
        }
        report_exchanges_over_limit(&reg.routing, self.config.limits.max_bindings_per_exchange);
        // Nothing to write: the file already says this (less what could not be recovered,
        // which the next change drops from it).
        self.publish(change.next);
        Ok(())
    }

    /// A stored topology entry the routing table refuses (it could not have been written so):
    /// corruption of the topology file.
    fn bad_entry(&self, entry: Entry, e: crate::routing::RoutingError) -> DefinitionsError {
        DefinitionsError::BadEntry {
            path: self.config.data_dir.join(definitions::FILE_NAME),
            entry,
            reason: e.to_string(),
        }
    }

    /// Opens the log of a queue the topology names. A queue whose directory is gone (deleted
    /// by hand, or by an older version that removed it before recording the deletion) is
    /// reported and skipped, so one lost queue does not keep the broker from starting.
    fn recover_queue(&self, q: &QueueDef) -> Result<Option<crate::storage::QueueLog>, StartError> {
        if !self.store.queue_dir_exists(q.uid)? {
            tracing::error!(queue = %q.name, uid = format!("{:016x}", q.uid),
                "queue skipped: the topology names it but its directory is gone");
            return Ok(None);
        }
        let log = self.store.open_queue(q.uid)?;
        let report = log.recovery_report();
        if let Some(t) = &report.torn_tail {
            tracing::info!(queue = %q.name, segment = t.segment_no, offset = t.offset, "cut a torn tail left by an unclean stop");
        }
        for d in &report.damage {
            tracing::error!(queue = %q.name, damage = ?d, "damaged records quarantined; the rest of the queue is served");
        }
        tracing::info!(queue = %q.name, messages = report.messages, "queue recovered");
        Ok(Some(log))
    }

    /// The storage engine.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Joins the broker to its cluster, once, after `Cluster::start`.
    pub async fn attach_cluster(self: &Arc<Self>, cluster: crate::cluster::Cluster) {
        if self.cluster.set(cluster).is_err() {
            tracing::error!("the broker is attached to a cluster already");
            return;
        }
        self.start_replicated_queues().await;
    }

    /// The cluster this broker is part of, if any.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.get()
    }

    /// Moves of messages between queues (see [`crate::moves`]).
    pub fn moves(&self) -> &Arc<Moves> {
        &self.moves
    }

    /// Broker-wide metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The span exporter, when `--otlp-endpoint` is set.
    pub fn telemetry(&self) -> Option<&Arc<crate::telemetry::Telemetry>> {
        self.telemetry.as_ref()
    }

    /// A fresh connection number.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether publishing is blocked (disk space, memory).
    pub fn is_blocked(&self) -> bool {
        self.flow.is_blocked()
    }

    /// Follows whether publishing is blocked, and why.
    pub fn flow(&self) -> tokio::sync::watch::Receiver<Option<Blocking>> {
        self.flow.subscribe()
    }

    /// Publisher flow control, for the watchers that block and unblock publishing.
    pub fn flow_control(&self) -> &Arc<Flow> {
        &self.flow
    }

    /// Counts published bytes and checks the free space again once a slice of the threshold
    /// has been published since the last check, so a fast publisher cannot run far past the
    /// threshold between two ticks of [`watch_disk`](Self::watch_disk).
    pub fn note_published(&self, bytes: usize) {
        // Without a threshold nothing can block publishers: no check, on the publish path
        // least of all (a slice of 0 would mean a statvfs per publish batch).
        let slice = self.config.min_free_disk_bytes / DISK_CHECK_SLICES;
        if slice == 0 {
            return;
        }
        let before = self
            .published_since_check
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if before < slice && before + bytes as u64 >= slice {
            self.check_disk();
        }
    }

    /// Checks the data directory's free space every 100 ms (and after every slice of published
    /// bytes, see [`note_published`](Self::note_published)) and blocks publishers while it is
    /// below `min_free_disk_bytes`, so the disk never fills up under a running broker; acks,
    /// which free space, keep flowing. Runs until the broker is dropped.
    pub async fn watch_disk(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        let mut tick = tokio::time::interval(DISK_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let Some(broker) = weak.upgrade() else { return };
            broker.check_disk();
        }
    }

    /// One free-space check; see [`watch_disk`](Self::watch_disk).
    pub fn check_disk(&self) {
        self.published_since_check.store(0, Ordering::Relaxed);
        let dir = &self.config.data_dir;
        let free = match rustix::fs::statvfs(dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read free disk space");
                return;
            }
        };
        let min = self.config.min_free_disk_bytes;
        let blocked = free < min;
        if blocked != self.flow.holds(Cause::Disk) {
            let reason = blocked.then(|| {
                format!(
                    "free disk space {} MiB is below {} MiB on {}",
                    free >> 20,
                    min >> 20,
                    dir.display()
                )
            });
            match &reason {
                Some(r) => tracing::warn!("publishing blocked: {r}"),
                None => tracing::info!("publishing resumed: free disk space is back"),
            }
            self.flow.set(Cause::Disk, reason);
        }
    }

    /// The queues a dead-lettered message goes to, by exchange and routing key.
    pub fn route(&self, exchange: &str, routing_key: &str, headers: &Headers) -> Vec<QueueHandle> {
        let reg = self.read();
        match reg.routing.route(exchange, routing_key, headers) {
            Ok(r) => r
                .queues
                .iter()
                .filter_map(|q| reg.queues.get(q).cloned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The current snapshot of queues and exchanges. Holding it blocks no one; a change made
    /// meanwhile shows in the next snapshot.
    pub fn read(&self) -> Arc<Registry> {
        Arc::clone(&self.registry.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Starts a topology change: takes the writer lock and copies the current snapshot.
    fn begin_change(&self) -> Change<'_> {
        let writer = self.topology.lock().unwrap_or_else(|e| e.into_inner());
        let next = Registry::clone(&self.read());
        Change { writer, next }
    }

    /// Makes a change durable, then visible. On error nothing changed, on disk or in memory.
    fn commit(&self, change: Change<'_>, kind: ChangeKind) -> Result<(), RequestError> {
        let Change { mut writer, next } = change;
        let topology = durable_topology(&next);
        if topology != writer.persisted {
            definitions::store(&self.config.data_dir, &topology, kind).map_err(topology_error)?;
            writer.persisted = topology;
        }
        self.publish(next);
        Ok(())
    }

    fn publish(&self, next: Registry) {
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    /// Gives a vhost its default and `amq.*` exchanges if it has none yet (they are made at
    /// its first use, never stored).
    pub fn open_vhost(&self, namespace: &namespace::Namespace) {
        if self.read().routing.exchange(namespace.prefix()).is_some() {
            return;
        }
        let mut change = self.begin_change();
        if change.next.routing.ensure_namespace(namespace.prefix()) {
            self.publish(change.next);
        }
    }

    /// The limits of `vhost`, from the users file (none for a vhost without a record).
    pub fn vhost_limits(&self, vhost: &str) -> VhostLimits {
        let Ok(vhost) = crate::auth::VhostName::new(vhost) else {
            return VhostLimits::default();
        };
        let access = self.access.snapshot();
        access.vhosts().get(&vhost).cloned().unwrap_or_default()
    }

    /// The queue `name`, if it exists and `conn` may use it.
    pub fn queue(&self, name: &str, conn: ConnId) -> Result<QueueHandle, RequestError> {
        let reg = self.read();
        let q = reg
            .queues
            .get(name)
            .ok_or_else(|| RequestError::no_queue(name))?;
        if !q.meta.accessible_by(conn) {
            return Err(RequestError::locked(name));
        }
        Ok(q.clone())
    }

    /// Every queue, sorted by name.
    pub fn queues(&self) -> Vec<QueueHandle> {
        let mut v: Vec<QueueHandle> = self.read().queues.values().cloned().collect();
        v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        v
    }

    /// Declares a queue (protocol.md §6.1).
    ///
    /// `req.name` is the internal name ([`crate::routing::namespace`]); a name empty in its
    /// vhost's terms gets a generated one in that vhost. A new queue past the vhost's
    /// `max_queues` is `LIMIT_EXCEEDED`.
    pub fn declare_queue(
        self: &Arc<Self>,
        conn: ConnId,
        req: DeclareQueue,
        limits: &VhostLimits,
    ) -> Result<DeclareQueueOk, RequestError> {
        let local_empty = namespace::split(&req.name).local.is_empty();
        if req.passive {
            if local_empty {
                return Err(RequestError::invalid(
                    "a passive declare needs a queue name",
                ));
            }
            let q = self.queue(&req.name, conn)?;
            return Ok(declare_ok(&q));
        }
        validate_name("queue", &req.name)?;
        validate_arguments(&req.arguments)?;
        req.arguments
            .encode(&mut BytesMut::new())
            .map_err(|e| RequestError::invalid(format!("queue arguments: {e}")))?;
        if is_replicated(&req.arguments) {
            if local_empty {
                return Err(RequestError::invalid("a replicated queue needs a name"));
            }
            return self.declare_replicated(req);
        }
        let mut change = self.begin_change();
        if let Some(q) = change.next.queues.get(req.name.as_str()) {
            if !q.meta.accessible_by(conn) {
                return Err(RequestError::locked(&req.name));
            }
            check_same_queue(&q.meta, &req)?;
            q.send(queue::QueueCmd::Touch);
            return Ok(declare_ok(q));
        }
        check_count(
            "queues",
            limits.max_queues,
            &req.name,
            change.next.queues.keys().map(|k| &**k),
        )?;
        let name = if local_empty {
            format!(
                "{}sluice.gen-{}-{}",
                req.name,
                conn,
                self.next_generated.fetch_add(1, Ordering::Relaxed)
            )
        } else {
            req.name.clone()
        };
        warn_if_dead_letter_exchange_missing(&change.next.routing, &name, &req.arguments);
        let durable = req.durable && !req.exclusive;
        let log = self.store.create_queue().map_err(RequestError::from)?;
        let meta = Arc::new(QueueMeta {
            name: Arc::from(name.as_str()),
            uid: log.uid(),
            durable,
            exclusive_owner: req.exclusive.then_some(conn),
            auto_delete: req.auto_delete,
            arguments: req.arguments,
            stats: QueueStats::default(),
        });
        let handle = queue::spawn(Arc::clone(&meta), log, Arc::downgrade(self));
        change.next.routing.add_queue(&name);
        change
            .next
            .queues
            .insert(Arc::clone(&meta.name), handle.clone());
        if let Err(e) = self.commit(change, ChangeKind::Grows) {
            // Never visible to anyone: its task removes its log (it is not in the registry, so
            // its deletion changes no topology).
            let (reply, _) = tokio::sync::oneshot::channel();
            handle.send(queue::QueueCmd::Delete {
                if_unused: false,
                if_empty: false,
                reply,
            });
            return Err(e);
        }
        Ok(declare_ok(&handle))
    }

    /// Removes a queue that is being deleted from the registry and the routing table, durably
    /// (called by its task before it removes its log). On error the queue stays as it was:
    /// a deletion that could not be recorded must not remove files the topology still names.
    pub(crate) fn forget_queue(&self, meta: &QueueMeta) -> Result<(), RequestError> {
        let current = |reg: &Registry| {
            reg.queues
                .get(&meta.name)
                .is_some_and(|q| q.meta.uid == meta.uid)
        };
        // A replicated queue a client deletes: the metadata group records it first, and every
        // node removes it. (One the group deleted is out of the registry already.)
        if is_replicated(&meta.arguments) && current(&self.read()) {
            self.delete_replicated(meta)?;
        }
        let mut change = self.begin_change();
        let reg = &mut change.next;
        let current = reg
            .queues
            .get(&meta.name)
            .is_some_and(|q| q.meta.uid == meta.uid);
        if !current {
            return Ok(());
        }
        reg.queues.remove(&meta.name);
        reg.pending_bindings.retain(|b| b.queue != *meta.name);
        for exchange in reg.routing.remove_queue(&meta.name) {
            let _ = reg.routing.delete_exchange(&exchange, false);
        }
        self.commit(change, ChangeKind::Shrinks)
    }

    /// Declares an exchange (protocol.md §7.1), named by its internal name; its alternate
    /// exchange is named in its vhost's terms. A new exchange past the vhost's
    /// `max_exchanges` is `LIMIT_EXCEEDED`.
    pub fn declare_exchange(
        &self,
        req: DeclareExchange,
        limits: &VhostLimits,
    ) -> Result<(), RequestError> {
        let local = namespace::split(&req.name).local;
        if req.passive {
            if local.is_empty() || self.read().routing.exchange(&req.name).is_some() {
                return Ok(());
            }
            return Err(RequestError::new(
                ErrorCode::NotFound,
                format!("no exchange '{}'", req.name),
            ));
        }
        if local.starts_with(RESERVED_PREFIX) {
            return Err(RequestError::new(
                ErrorCode::NotAllowed,
                format!("exchange names starting with '{RESERVED_PREFIX}' are reserved"),
            ));
        }
        validate_name("exchange", &req.name)?;
        if let Some(alternate) = &req.alternate_exchange {
            namespace::check_local(alternate)?;
            validate_name("alternate exchange", alternate)?;
        }
        let mut change = self.begin_change();
        if change.next.routing.exchange(&req.name).is_none() {
            let exchanges = change.next.routing.exchanges();
            let declared = exchanges
                .iter()
                .filter(|x| {
                    let local = namespace::split(&x.name).local;
                    !local.is_empty() && !local.starts_with("amq.")
                })
                .map(|x| x.name.as_str());
            check_count("exchanges", limits.max_exchanges, &req.name, declared)?;
        }
        let exchange = Exchange {
            name: req.name,
            kind: req.kind.into(),
            durable: req.durable,
            auto_delete: req.auto_delete,
            alternate_exchange: req.alternate_exchange,
            hash_header: req.hash_header,
        };
        // Tried on the copy first: a conflict with this node's exchange is answered here.
        let created = change.next.routing.declare_exchange(exchange.clone())?;
        if let Some(cluster) = self.cluster() {
            if change.next.cluster_managed.holds_exchange(&exchange.name) {
                return Ok(());
            }
            drop(change);
            return self.declare_exchange_in_cluster(cluster, &exchange);
        }
        if created {
            self.commit(change, ChangeKind::Grows)?;
        }
        Ok(())
    }

    /// Deletes an exchange (protocol.md §7.2).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), RequestError> {
        let mut change = self.begin_change();
        let managed = change.next.cluster_managed.holds_exchange(name);
        let deleted = change.next.routing.delete_exchange(name, if_unused)?;
        // In a cluster, also when this node does not have it: it may not have applied the
        // declare yet (the group answers a delete of what it does not hold with no harm).
        if let Some(cluster) = self.cluster().filter(|_| managed || !deleted) {
            drop(change);
            return self.delete_exchange_in_cluster(cluster, name, if_unused);
        }
        if deleted {
            self.commit(change, ChangeKind::Shrinks)?;
        }
        Ok(())
    }

    /// Binds or unbinds (protocol.md §7.3).
    pub fn bind(&self, conn: ConnId, mut binding: Binding, bind: bool) -> Result<(), RequestError> {
        let mut change = self.begin_change();
        let reg = &mut change.next;
        // A weighted or consistent-hash exchange binds a queue once, whatever the routing key:
        // the key is dropped, so that every node and the metadata records agree on the binding.
        // Also known from the cluster's records when this node has not applied the declare.
        let sole = match reg.routing.exchange(&binding.exchange) {
            Some(x) => x.kind.picks_one(),
            None => self
                .cluster()
                .is_some_and(|c| cluster_topology::binds_once(&c.topology(), &binding.exchange)),
        };
        if sole {
            binding.routing_key.clear();
        }
        let queue_ok = match reg.queues.get(binding.queue.as_str()) {
            Some(q) if !q.meta.accessible_by(conn) => {
                return Err(RequestError::locked(&binding.queue))
            }
            Some(_) => true,
            None => false,
        };
        // A binding to a replicated queue is the cluster's: every node routes by it.
        let cluster_wide = reg
            .queues
            .get(binding.queue.as_str())
            .is_some_and(|q| is_replicated(&q.meta.arguments));
        let managed = reg.cluster_managed.holds_binding(&binding);
        let shared = binding.clone();
        let changed = if bind {
            if !queue_ok {
                return Err(RequestError::no_queue(&binding.queue));
            }
            validate_binding(&binding, &self.config.limits.headers)?;
            let exchange = binding.exchange.clone();
            let before = reg.routing.binding_count(&exchange);
            let added = reg.routing.bind(binding)?;
            // Checked once the binding is in the copy: a binding that exists already (or a
            // re-weight, which changes one) is no new one, and the copy is dropped uncommitted
            // when the limit refuses it.
            let count = reg.routing.binding_count(&exchange);
            if count > before {
                let max = self.config.limits.max_bindings_per_exchange;
                check_bindings_per_exchange(&exchange, count, max)?;
            }
            added.then_some(ChangeKind::Grows)
        } else {
            let outcome = reg.routing.unbind(&binding)?;
            if let Some(exchange) = outcome.unused_auto_delete {
                reg.routing.delete_exchange(&exchange, false)?;
            }
            outcome.removed.then_some(ChangeKind::Shrinks)
        };
        if let Some(cluster) = self.cluster().filter(|_| cluster_wide) {
            // Checked on the copy above; proposed unless this node already routes by it.
            // An unbind always is: this node may not have applied the bind yet.
            if !(bind && managed) {
                drop(change);
                return self.bind_in_cluster(cluster, &shared, bind, sole);
            }
            return Ok(());
        }
        if let Some(kind) = changed {
            self.commit(change, kind)?;
        }
        Ok(())
    }

    /// Stops every queue task, letting each write what is pending and close its log; true when
    /// every one of them did.
    pub async fn shutdown_queues(&self) -> bool {
        let queues = self.queues();
        let mut waits = Vec::new();
        for q in queues {
            let (done, wait) = tokio::sync::oneshot::channel();
            if q.send(queue::QueueCmd::Shutdown { done }) {
                waits.push(wait);
            }
        }
        let mut all_closed = true;
        for w in waits {
            // The sender is dropped once the log is closed: `Err` is the normal answer.
            all_closed &= w.await.is_err();
        }
        all_closed
    }
}

/// The part of a registry that survives a restart, as `definitions.bin` stores it.
fn durable_topology(reg: &Registry) -> Topology {
    // A replicated queue's durable record is the cluster's catalog, not this file, and the
    // cluster-wide exchanges and bindings are the metadata group's.
    let kept = |q: &QueueHandle| q.meta.durable && !is_replicated(&q.meta.arguments);
    let durable_queue = |name: &str| reg.queues.get(name).is_some_and(kept);
    let managed = &reg.cluster_managed;
    let mut queues: Vec<QueueDef> = reg
        .queues
        .values()
        .filter(|q| kept(q))
        .map(|q| QueueDef {
            name: q.meta.name.to_string(),
            uid: q.meta.uid,
            auto_delete: q.meta.auto_delete,
            arguments: q.meta.arguments.clone(),
        })
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut exchanges = reg.routing.durable_exchanges();
    exchanges.retain(|x| !managed.holds_exchange(&x.name));
    let mut bindings = reg.routing.durable_bindings(durable_queue);
    bindings.retain(|b| !managed.holds_binding(b));
    bindings.extend(reg.pending_bindings.iter().cloned());
    Topology {
        queues,
        exchanges,
        bindings,
    }
}

/// A topology write that failed, as the client sees it: `STORAGE_FULL` for a full disk, the
/// cause otherwise. Nothing changed.
fn topology_error(e: definitions::DefinitionsError) -> RequestError {
    tracing::error!(error = %e, "could not write the topology; the change was not made");
    let e = match e {
        definitions::DefinitionsError::Io { path, source } => {
            RequestError::from(crate::storage::StorageError::io(path, source))
        }
        other => RequestError::internal(other.to_string()),
    };
    RequestError::new(
        e.code,
        format!("the topology change was not made: {}", e.message),
    )
}

fn declare_ok(q: &QueueHandle) -> DeclareQueueOk {
    DeclareQueueOk {
        name: q.meta.name.to_string(),
        ready: q.meta.stats.ready.load(Ordering::Relaxed),
        consumers: q.meta.stats.consumers.load(Ordering::Relaxed),
    }
}

/// `PRECONDITION_FAILED` naming, in words, the first setting in which an existing queue
/// differs from a declaration of it (protocol.md §6.1).
fn check_same_queue(meta: &QueueMeta, req: &DeclareQueue) -> Result<(), RequestError> {
    let name = &meta.name;
    let durable = req.durable && !req.exclusive;
    let flags = [
        ("durable", meta.durable, durable),
        ("exclusive", meta.exclusive_owner.is_some(), req.exclusive),
        ("auto_delete", meta.auto_delete, req.auto_delete),
    ];
    if let Some((field, have, want)) = flags.into_iter().find(|(_, h, w)| h != w) {
        return Err(RequestError::precondition(format!(
            "queue '{name}' exists with {field}={have}; the declare asked {field}={want}"
        )));
    }
    if let Some(d) = first_argument_difference(&meta.arguments, &req.arguments) {
        return Err(RequestError::precondition(format!(
            "queue '{name}' exists with other arguments; {d}"
        )));
    }
    Ok(())
}

/// A queue may name a dead-letter exchange that does not exist yet (as in RabbitMQ: the
/// exchange is often declared after the queue, and definitions are imported in any order), so
/// the declaration succeeds; the broker says so in its log. Messages dead-lettered while it
/// is missing are dropped, counted and logged (`queue::actor::dead_letter`).
fn warn_if_dead_letter_exchange_missing(routing: &RoutingTable, queue: &str, a: &QueueArguments) {
    let Some(dlx) = &a.dead_letter_exchange else {
        return;
    };
    let internal = format!("{}{dlx}", namespace::prefix_of(queue));
    if routing.exchange(&internal).is_none() {
        let queue = namespace::split(queue);
        tracing::warn!(
            vhost = queue.vhost,
            queue = queue.local,
            dead_letter_exchange = dlx.as_str(),
            "queue declared with a dead-letter exchange that does not exist: its dead letters \
             are dropped until the exchange is declared"
        );
    }
}

/// One queue argument that differs between the existing queue and a declaration, its values
/// as text (`None`: not set).
#[derive(Debug, PartialEq, Eq)]
struct ArgumentDifference {
    field: &'static str,
    have: Option<String>,
    want: Option<String>,
}

/// `argument message_ttl_ms: existing 60000, requested absent`.
impl std::fmt::Display for ArgumentDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "absent".to_owned());
        write!(
            f,
            "argument {}: existing {}, requested {}",
            self.field,
            show(&self.have),
            show(&self.want)
        )
    }
}

/// The first argument, in wire order, that `want` sets differently from `have`; a plain
/// description for the PRECONDITION_FAILED message instead of a dump of both.
fn first_argument_difference(
    have: &QueueArguments,
    want: &QueueArguments,
) -> Option<ArgumentDifference> {
    fn text<T: ToString>(v: &Option<T>) -> Option<String> {
        v.as_ref().map(ToString::to_string)
    }
    let overflow = |o: &Option<Overflow>| {
        o.map(|o| match o {
            Overflow::DropHead => "drop-head".to_owned(),
            Overflow::RejectPublish => "reject-publish".to_owned(),
            Overflow::RejectPublishDlx => "reject-publish-dlx".to_owned(),
        })
    };
    let quoted = |v: &Option<String>| v.as_ref().map(|s| format!("'{s}'"));
    let backoff = |b: &Option<sluice_client::wire::RetryBackoff>| {
        b.map(|b| {
            format!(
                "initial {} ms, ×{}%, at most {} ms",
                b.initial_ms, b.multiplier_percent, b.max_ms
            )
        })
    };
    let fields = [
        ("max_length", text(&have.max_length), text(&want.max_length)),
        (
            "max_length_bytes",
            text(&have.max_length_bytes),
            text(&want.max_length_bytes),
        ),
        (
            "overflow",
            overflow(&have.overflow),
            overflow(&want.overflow),
        ),
        (
            "message_ttl_ms",
            text(&have.message_ttl_ms),
            text(&want.message_ttl_ms),
        ),
        (
            "dead_letter_exchange",
            quoted(&have.dead_letter_exchange),
            quoted(&want.dead_letter_exchange),
        ),
        (
            "dead_letter_routing_key",
            quoted(&have.dead_letter_routing_key),
            quoted(&want.dead_letter_routing_key),
        ),
        (
            "ack_timeout_ms",
            text(&have.ack_timeout_ms),
            text(&want.ack_timeout_ms),
        ),
        (
            "delivery_limit",
            text(&have.delivery_limit),
            text(&want.delivery_limit),
        ),
        ("expires_ms", text(&have.expires_ms), text(&want.expires_ms)),
        (
            "max_message_bytes",
            text(&have.max_message_bytes),
            text(&want.max_message_bytes),
        ),
        (
            "max_priority",
            text(&have.max_priority),
            text(&want.max_priority),
        ),
        (
            "single_active_consumer",
            text(&have.single_active_consumer),
            text(&want.single_active_consumer),
        ),
        (
            "dedup_window_ms",
            text(&have.dedup_window_ms),
            text(&want.dedup_window_ms),
        ),
        (
            "dedup_window_count",
            text(&have.dedup_window_count),
            text(&want.dedup_window_count),
        ),
        (
            "retry_backoff",
            backoff(&have.retry_backoff),
            backoff(&want.retry_backoff),
        ),
    ];
    fields
        .into_iter()
        .find(|(_, h, w)| h != w)
        .map(|(field, have, want)| ArgumentDifference { field, have, want })
}

/// `LIMIT_EXCEEDED` when the vhost of `name` already holds `max` of the `existing` names.
fn check_count<'a>(
    what: &str,
    max: Option<u64>,
    name: &str,
    existing: impl Iterator<Item = &'a str>,
) -> Result<(), RequestError> {
    let Some(max) = max else { return Ok(()) };
    let prefix = namespace::prefix_of(name);
    let count = existing
        .filter(|n| namespace::prefix_of(n) == prefix)
        .count() as u64;
    if count < max {
        return Ok(());
    }
    let vhost = namespace::split(name).vhost;
    tracing::warn!(
        vhost,
        limit = format!("max_{what}"),
        max,
        "vhost limit reached: declaration refused"
    );
    Err(RequestError::new(
        ErrorCode::LimitExceeded,
        format!("vhost '{vhost}' has reached its max_{what} limit of {max}"),
    ))
}

/// Checks a name in its vhost's terms: length, reserved prefix, no `\0`.
fn validate_name(what: &str, name: &str) -> Result<(), RequestError> {
    let name = namespace::split(name).local;
    namespace::check_local(name)?;
    if name.len() > MAX_NAME_LEN {
        return Err(RequestError::invalid(format!(
            "{what} name is {} bytes; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(RequestError::new(
            ErrorCode::NotAllowed,
            format!("{what} names starting with '{RESERVED_PREFIX}' are reserved"),
        ));
    }
    Ok(())
}

fn validate_arguments(a: &QueueArguments) -> Result<(), RequestError> {
    if a.delivery_limit == Some(0) {
        return Err(RequestError::invalid("delivery_limit must be at least 1"));
    }
    if a.expires_ms == Some(0) {
        return Err(RequestError::invalid("expires_ms must be at least 1"));
    }
    if a.ack_timeout_ms == Some(0) {
        return Err(RequestError::invalid("ack_timeout_ms must be at least 1"));
    }
    if a.max_message_bytes == Some(0) {
        return Err(RequestError::invalid(
            "max_message_bytes must be at least 1",
        ));
    }
    if a.max_priority
        .is_some_and(|p| !(1..=MAX_PRIORITY).contains(&p))
    {
        return Err(RequestError::invalid(format!(
            "max_priority must be between 1 and {MAX_PRIORITY}"
        )));
    }
    if let Some(b) = a.retry_backoff {
        if b.multiplier_percent < 100 || b.initial_ms > b.max_ms {
            return Err(RequestError::invalid(format!(
                "retry_backoff needs multiplier_percent of at least 100 and initial_ms at most max_ms (got {}, {}, {})",
                b.initial_ms, b.multiplier_percent, b.max_ms
            )));
        }
    }
    crate::queue::check_dedup_window(a)?;
    if let Some(n) = a.replicas {
        if !(1..=MAX_REPLICAS).contains(&n) {
            return Err(RequestError::invalid(format!(
                "replicas must be between 1 and {MAX_REPLICAS}"
            )));
        }
    }
    if a.single_active_consumer.is_some_and(|v| v != 1) {
        return Err(RequestError::invalid(
            "single_active_consumer must be 1 when present",
        ));
    }
    if let Some(x) = &a.dead_letter_exchange {
        namespace::check_local(x)?;
        validate_name("dead-letter exchange", x)?;
    }
    if a.dead_letter_routing_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_NAME_LEN)
    {
        return Err(RequestError::invalid(
            "dead_letter_routing_key is longer than 255 bytes",
        ));
    }
    Ok(())
}

/// What every binding must be before it is stored, whatever door it came in by (the wire
/// checks the same limits earlier; the HTTP API relies on this one): a stored binding that
/// cannot be encoded again would make `definitions.bin` unreadable.
fn validate_binding(binding: &Binding, header_limits: &HeaderLimits) -> Result<(), RequestError> {
    if binding.routing_key.len() > MAX_NAME_LEN {
        return Err(RequestError::invalid(format!(
            "routing key is {} bytes; the limit is {MAX_NAME_LEN}",
            binding.routing_key.len()
        )));
    }
    header_limits
        .check(&binding.arguments)
        .map_err(|e| RequestError::invalid(format!("binding arguments: {e}")))?;
    wire::put_headers(&mut BytesMut::new(), &binding.arguments)
        .map_err(|e| RequestError::invalid(format!("binding arguments: {e}")))?;
    validate_x_match(&binding.arguments)
}

/// Bindings made before a lower `max_bindings_per_exchange` was configured are kept (a limit
/// never stops the broker from starting or loses topology): logged, and new ones refused.
fn report_exchanges_over_limit(routing: &RoutingTable, max: usize) {
    for (exchange, bindings) in routing.exchanges_over(max) {
        tracing::warn!(
            exchange,
            bindings,
            max_bindings_per_exchange = max,
            "exchange has more bindings than its limit; they are kept, new ones are refused"
        );
    }
}

/// `LIMIT_EXCEEDED` once exchange `exchange` has more than `max` bindings, naming the limit.
fn check_bindings_per_exchange(
    exchange: &str,
    count: usize,
    max: usize,
) -> Result<(), RequestError> {
    if count <= max {
        return Ok(());
    }
    static LOG: crate::limits::LogGate = crate::limits::LogGate::new();
    if let Some(also_refused_since_last_line) = LOG.open() {
        tracing::warn!(
            exchange,
            max_bindings_per_exchange = max,
            also_refused_since_last_line,
            "bind refused: the exchange is at its binding limit"
        );
    }
    Err(RequestError::new(
        ErrorCode::LimitExceeded,
        format!(
            "exchange '{exchange}' is at its limit of {max} bindings (max_bindings_per_exchange)"
        ),
    ))
}

fn validate_x_match(arguments: &Headers) -> Result<(), RequestError> {
    for (k, v) in arguments {
        if k == "x-match" {
            let ok = matches!(v, wire::HeaderValue::Str(s) if ["all", "any", "all-with-x", "any-with-x"].contains(&s.as_str()));
            if !ok {
                return Err(RequestError::invalid(
                    "x-match must be \"all\", \"any\", \"all-with-x\" or \"any-with-x\"",
                ));
            }
        }
    }
    Ok(())
}

/// Reads a kind stored as its wire value (protocol.md §7.1).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_differing_queue_argument_is_named_with_both_values() {
        let have = QueueArguments {
            max_length: Some(10),
            dead_letter_exchange: Some("dlx".into()),
            ..QueueArguments::default()
        };
        let want = QueueArguments {
            max_length: Some(20),
            ..have.clone()
        };
        let d = first_argument_difference(&have, &want).unwrap();
        assert_eq!(
            (d.field, d.have.as_deref(), d.want.as_deref()),
            ("max_length", Some("10"), Some("20"))
        );
        let want = QueueArguments {
            dead_letter_exchange: None,
            overflow: Some(Overflow::RejectPublish),
            ..have.clone()
        };
        let d = first_argument_difference(&have, &want).unwrap();
        assert_eq!(
            (d.field, d.have.as_deref(), d.want.as_deref()),
            ("overflow", None, Some("reject-publish"))
        );
        assert_eq!(first_argument_difference(&have, &have.clone()), None);
    }
}
