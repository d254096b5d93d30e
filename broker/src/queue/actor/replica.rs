//! The replicated mode of the queue task (see `queue::replicated`): applying the group's
//! committed ops, snapshots, leadership changes, and the requests that go through the group
//! instead of the local log. A local queue never reaches this code: every hook is one branch
//! on `Actor::replica`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_client::wire::{ErrorCode, RequestId};

use super::Actor;
use crate::cluster::{MachineError, MAX_COMMAND_BYTES};
use crate::error::RequestError;
use crate::queue::dedup::Dedup;
use crate::queue::replicated::{
    self, Barrier, LeaderView, OpMessage, OpRejection, OpResult, Proposer, QueueOp, QueueSnapshot,
    SettleJob, Settler, SnapshotMessage,
};
use crate::queue::{
    ConnEvent, ConnId, ConnLink, Incoming, PublishOrigin, PublishRoom, QueueCmd, Settlement,
};
use crate::storage::StorageError;

/// What a replicated queue's task knows of its group.
#[derive(Debug, Default)]
pub(super) struct Replica {
    /// Where proposals go; `None` until the group is attached.
    proposer: Option<Arc<dyn Proposer>>,
    /// Proposes this leader's settles, in order (set with the proposer).
    settler: Option<Settler>,
    /// Who leads the group.
    leader: LeaderView,
    /// The seq the group gives the next published message.
    next_seq: u64,
    /// The newest op time applied: the dedup window's clock, the same on every replica.
    last_ts_ms: u64,
    /// Deliveries this node made while it led the group, by (connection, tag): their acks
    /// still delete the message (through the new leader) after the leadership moved. Bounded
    /// by the deliveries in flight at the step-down; a connection's go when it closes, all
    /// of them when this node leads again.
    orphans: HashMap<(ConnId, u64), u64>,
    /// Why this replica could not follow its group (its storage failed, or it could not
    /// decode an op or a snapshot). Its state is then somewhere inside a batch: it applies
    /// nothing more, gives no snapshot, and never leads; the group stopped here.
    failed: Option<MachineError>,
}

impl Replica {
    fn new() -> Self {
        Self {
            next_seq: 1,
            ..Self::default()
        }
    }

    /// The newest op time applied: the replicated queue's clock for its dedup window.
    pub(super) fn clock_ms(&self) -> u64 {
        self.last_ts_ms
    }
}

impl Actor {
    /// Turns a new queue task into a replicated queue's: its dedup window lives in memory
    /// (the group's snapshot carries it), and nothing is ready until the group applies.
    pub(super) fn become_replicated(&mut self) {
        self.dedup = Dedup::in_memory(&self.meta.arguments, Vec::new());
        self.replica = Some(Box::new(Replica::new()));
    }

    /// Handles the commands only a replicated queue gets, and those it serves differently
    /// from a local one; gives the others back.
    pub(super) fn handle_replicated(&mut self, cmd: QueueCmd) -> Option<QueueCmd> {
        match cmd {
            QueueCmd::Apply { ops, reply } => {
                let _ = reply.send(self.guarded(|a| a.apply_ops(&ops)));
            }
            QueueCmd::Snapshot { reply } => {
                let _ = reply.send(self.guarded(|a| a.replica_snapshot().map(|s| s.encode())));
            }
            QueueCmd::Install { data, reply } => {
                let _ = reply.send(self.guarded(|a| {
                    let snapshot = QueueSnapshot::decode(&data)
                        .map_err(|e| a.undecodable("a snapshot", e.to_string()))?;
                    a.install_snapshot(snapshot)
                }));
            }
            QueueCmd::Attach { proposer } => {
                let settler = Settler::spawn(Arc::clone(&proposer), Arc::clone(&self.meta.name));
                let r = self.replica_mut();
                r.proposer = Some(proposer);
                r.settler = Some(settler);
            }
            QueueCmd::Inspect { conn, request_id } => {
                let reply = self.inspect();
                match self.replica.as_ref().and_then(|r| r.settler.as_ref()) {
                    Some(settler) => settler.send(SettleJob::Barrier(Box::new(Barrier {
                        conn,
                        request_id,
                        reply,
                    }))),
                    None => conn.send(ConnEvent::Reply { request_id, reply }),
                }
            }
            QueueCmd::Leadership(view) => self.on_leadership(view),
            QueueCmd::Publish {
                conn,
                batch,
                messages,
                room,
                origin,
            } => self.propose_publish(conn, batch, messages, room, origin),
            QueueCmd::Purge { conn, request_id } => self.propose_purge(conn, request_id),
            QueueCmd::Consume {
                ref conn,
                request_id,
                ..
            }
            | QueueCmd::Get {
                ref conn,
                request_id,
            }
            | QueueCmd::GetMany {
                ref conn,
                request_id,
                ..
            }
            | QueueCmd::Browse {
                ref conn,
                request_id,
                ..
            } => {
                if self.is_leader() {
                    return Some(cmd);
                }
                self.refuse_not_leader(conn, request_id);
            }
            QueueCmd::Settle {
                conn,
                request_id,
                deliveries,
                how,
                reason,
            } if self.replica.as_ref().is_some_and(|r| !r.orphans.is_empty()) => {
                let deliveries = self.settle_orphans(conn.id, deliveries, how);
                return Some(QueueCmd::Settle {
                    conn,
                    request_id,
                    deliveries,
                    how,
                    reason,
                });
            }
            QueueCmd::ConnectionClosed { conn_id } => {
                self.replica_mut()
                    .orphans
                    .retain(|&(conn, _), _| conn != conn_id);
                return Some(QueueCmd::ConnectionClosed { conn_id });
            }
            QueueCmd::TakeForMove { reply, .. } => {
                let _ = reply.send(Err(RequestError::precondition(format!(
                    "queue '{}' is replicated: moving its messages is not supported yet",
                    self.meta.name
                ))));
            }
            other => return Some(other),
        }
        None
    }

    fn replica_mut(&mut self) -> &mut Replica {
        self.replica.as_mut().expect("a replicated queue")
    }

    fn is_leader(&self) -> bool {
        self.replica.as_ref().is_some_and(|r| r.leader.is_self)
    }

    // ------------------------------------------------------------------------------------
    // Local failures: fatal for the group on this node
    // ------------------------------------------------------------------------------------

    /// Runs a state-machine call unless this replica failed before; a failure is recorded,
    /// and this node stops leading at once (its group stops too, once openraft has the error;
    /// the leadership watch then names another replica).
    fn guarded<T>(
        &mut self,
        call: impl FnOnce(&mut Self) -> Result<T, MachineError>,
    ) -> Result<T, MachineError> {
        if let Some(e) = &self.replica.as_ref().expect("a replicated queue").failed {
            return Err(e.clone());
        }
        call(self).inspect_err(|e| {
            self.replica_mut().failed = Some(e.clone());
            if self.is_leader() {
                self.on_leadership(LeaderView::default());
            }
        })
    }

    fn machine_name(&self) -> String {
        format!("queue '{}'", self.meta.name)
    }

    /// This node's storage could not do what the group's log says.
    fn storage_failure(&self, what: String, e: StorageError) -> MachineError {
        MachineError::Storage {
            machine: self.machine_name(),
            cause: format!("{what}: {e}"),
        }
    }

    fn undecodable(&self, what: &'static str, cause: String) -> MachineError {
        MachineError::Undecodable {
            machine: self.machine_name(),
            what,
            cause,
        }
    }

    fn refuse_not_leader(&self, conn: &Arc<ConnLink>, request_id: RequestId) {
        let leader = self
            .replica
            .as_ref()
            .map(|r| r.leader.clone())
            .unwrap_or_default();
        conn.send(ConnEvent::Error {
            request_id,
            error: replicated::not_leader(&leader),
        });
    }

    // ------------------------------------------------------------------------------------
    // Proposing
    // ------------------------------------------------------------------------------------

    fn proposer(&self) -> Option<Arc<dyn Proposer>> {
        self.replica.as_ref().and_then(|r| r.proposer.clone())
    }

    fn propose_publish(
        &mut self,
        conn: Arc<ConnLink>,
        batch: u64,
        messages: Vec<Incoming>,
        room: Option<PublishRoom>,
        origin: PublishOrigin,
    ) {
        let publish_seqs: Vec<u64> = messages.iter().map(|m| m.publish_seq).collect();
        let bytes: usize = messages
            .iter()
            .map(|m| m.meta.len() + m.body.len() + OP_MESSAGE_OVERHEAD)
            .sum();
        if bytes > MAX_COMMAND_BYTES {
            // An entry this large could never be replicated: refuse it before it is proposed.
            let error = RequestError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "a publish of {bytes} bytes to a replicated queue is over the \
                     {MAX_COMMAND_BYTES} bytes one replicated command may hold"
                ),
            );
            return refuse_publish(&conn, batch, publish_seqs, &error);
        }
        let op = QueueOp::Publish {
            ts_ms: super::now_ms(),
            dedup: origin == PublishOrigin::Client && self.dedup.is_some(),
            messages: messages
                .into_iter()
                .map(|m| OpMessage {
                    meta: m.meta.to_vec(),
                    body: m.body.to_vec(),
                })
                .collect(),
        };
        match self.proposer() {
            Some(p) => replicated::publish(p, conn, batch, publish_seqs, op, room),
            None => {
                let error = replicated::not_leader(&LeaderView::default());
                refuse_publish(&conn, batch, publish_seqs, &error);
            }
        }
    }

    fn propose_purge(&mut self, conn: Arc<ConnLink>, request_id: RequestId) {
        let (true, Some(proposer)) = (self.is_leader(), self.proposer()) else {
            return self.refuse_not_leader(&conn, request_id);
        };
        let through = self.replica_mut().next_seq.saturating_sub(1);
        let except = self.in_flight.seqs();
        replicated::purge(
            proposer,
            conn,
            request_id,
            QueueOp::Purge { through, except },
        );
    }

    /// Deletes settled messages through the group (acks, and rejects: the replicated mode
    /// has no dead-letter exchange). They are neither ready nor in flight meanwhile.
    pub(super) fn propose_settle(&mut self, acks: Vec<u64>) {
        if acks.is_empty() {
            return;
        }
        match self.replica.as_ref().and_then(|r| r.settler.as_ref()) {
            Some(settler) => settler.send(SettleJob::Delete(acks)),
            None => tracing::warn!(queue = %self.meta.name, "settles without a group: ignored"),
        }
    }

    /// Settles the deliveries made before a step-down: an ack or a reject deletes the message
    /// through the group, a requeue needs nothing (it is ready on the leader). Gives back the
    /// others.
    fn settle_orphans(
        &mut self,
        conn: ConnId,
        deliveries: Vec<(u64, u64)>,
        how: Settlement,
    ) -> Vec<(u64, u64)> {
        let orphans = &mut self.replica.as_mut().expect("a replicated queue").orphans;
        let mut deleted = Vec::new();
        let rest = deliveries
            .into_iter()
            .filter(|&(tag, seq)| match orphans.get(&(conn, tag)) {
                Some(&s) if s == seq => {
                    orphans.remove(&(conn, tag));
                    if matches!(how, Settlement::Ack | Settlement::Reject) {
                        deleted.push(seq);
                    }
                    false
                }
                _ => true,
            })
            .collect();
        self.propose_settle(deleted);
        rest
    }

    // ------------------------------------------------------------------------------------
    // Applying (every replica, in log order; deterministic)
    // ------------------------------------------------------------------------------------

    /// Applies a batch of committed ops, in order; stops at the first this replica cannot.
    fn apply_ops(&mut self, ops: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, MachineError> {
        ops.iter()
            .map(|op| self.apply_op(op).map(|r| r.encode()))
            .collect()
    }

    fn apply_op(&mut self, bytes: &[u8]) -> Result<OpResult, MachineError> {
        // An op that does not decode here (a newer version's) cannot be skipped: the other
        // replicas apply it, and this one's seqs and messages would differ from theirs.
        let op = QueueOp::decode(bytes).map_err(|e| self.undecodable("an op", e.to_string()))?;
        Ok(match op {
            QueueOp::Publish {
                ts_ms,
                dedup,
                messages,
            } => self.apply_publish(ts_ms, dedup, &messages)?,
            QueueOp::Settle { acks } => OpResult::Settled {
                messages: self.apply_deletions(acks)?,
            },
            QueueOp::Purge { through, except } => {
                let except: HashSet<u64> = except.into_iter().collect();
                let seqs = self
                    .log()
                    .live_seqs()
                    .into_iter()
                    .take_while(|&s| s <= through)
                    .filter(|s| !except.contains(s))
                    .collect();
                OpResult::Purged {
                    messages: self.apply_deletions(seqs)?,
                }
            }
        })
    }

    fn apply_publish(
        &mut self,
        ts_ms: u64,
        dedup: bool,
        messages: &[OpMessage],
    ) -> Result<OpResult, MachineError> {
        // The window's clock only moves forward in log order: ops proposed on different
        // nodes carry different wall clocks, and a clock going back could make one replica
        // find a duplicate where another, whose maintenance already forgot the id, does not;
        // their seqs would differ from then on, and an ack would delete another message.
        let r = self.replica_mut();
        r.last_ts_ms = r.last_ts_ms.max(ts_ms);
        let ts_ms = r.last_ts_ms;
        let mut duplicates = Vec::new();
        let mut rejections = Vec::new();
        let mut stored = 0;
        for (i, m) in messages.iter().enumerate() {
            if dedup
                && self
                    .dedup
                    .as_mut()
                    .is_some_and(|d| d.is_duplicate(&m.meta, ts_ms))
            {
                duplicates.push(i as u32);
                continue;
            }
            let seq = self.replica_mut().next_seq;
            self.replica_mut().next_seq += 1;
            let log = self.log();
            match log
                .skip_to(seq)
                .and_then(|()| log.append(&m.meta, &m.body, ts_ms))
            {
                Ok(_) => {
                    stored += 1;
                    self.ready.push_new(seq, 0, None);
                    // Only a stored message enters the window: a refused one may be sent again.
                    if dedup {
                        if let Some(d) = self.dedup.as_mut() {
                            d.accepted(&m.meta, ts_ms, None);
                        }
                    }
                }
                // The same answer on every replica, so it is a refusal, not this node's
                // failure: the group's seqs ran out (the seq is the group's), or the record
                // is over the log's record limit (a constant of the build, not a setting).
                Err(
                    e @ (StorageError::SeqsExhausted { .. } | StorageError::RecordTooLarge { .. }),
                ) => {
                    let err = RequestError::from(e);
                    rejections.push(OpRejection {
                        index: i as u32,
                        code: err.code.as_u16(),
                        message: err.message,
                    });
                }
                // Anything else is this node's own disk (full, out of descriptors, an I/O
                // error): the others stored it, and this replica must not go on without it.
                Err(e) => {
                    return Err(self.storage_failure(format!("message seq {seq} not stored"), e))
                }
            }
        }
        let stats = &self.meta.stats;
        stats.published.fetch_add(stored, Ordering::Relaxed);
        stats
            .duplicates_dropped
            .fetch_add(duplicates.len() as u64, Ordering::Relaxed);
        self.await_confirm(0, stored);
        Ok(OpResult::Published {
            duplicates,
            rejections,
        })
    }

    /// Deletes messages wherever they are here (ready on a follower; taken out already on
    /// the leader that proposed it); returns how many were live. A deletion the local log
    /// cannot record is fatal: the message would live on here, and in this replica's
    /// snapshots.
    fn apply_deletions(&mut self, seqs: Vec<u64>) -> Result<u64, MachineError> {
        let mut deleted = 0;
        for seq in seqs {
            if !self.log().contains(seq) {
                continue;
            }
            self.ready.remove(seq);
            match self.log().ack(seq) {
                Ok(()) | Err(StorageError::NotLive(_)) => {}
                Err(e) => {
                    return Err(self.storage_failure(format!("message seq {seq} not deleted"), e))
                }
            }
            self.dirty = true;
            deleted += 1;
        }
        Ok(deleted)
    }

    // ------------------------------------------------------------------------------------
    // Snapshots
    // ------------------------------------------------------------------------------------

    /// This replica's whole state. A message it cannot read fails it: a snapshot without
    /// it would be sent to followers and purge the log entries that still had it.
    fn replica_snapshot(&mut self) -> Result<QueueSnapshot, MachineError> {
        let log = self
            .log
            .as_ref()
            .expect("the log is open while the task runs");
        let mut messages = Vec::new();
        for seq in log.live_seqs() {
            match log.read(seq) {
                Ok(m) => messages.push(SnapshotMessage {
                    seq,
                    ts_ms: m.timestamp_ms,
                    meta: m.meta.to_vec(),
                    body: m.body.to_vec(),
                }),
                Err(e) => {
                    return Err(self.storage_failure(format!("message seq {seq} unreadable"), e))
                }
            }
        }
        let r = self.replica.as_ref().expect("a replicated queue");
        Ok(QueueSnapshot {
            next_seq: r.next_seq,
            last_ts_ms: r.last_ts_ms,
            messages,
            dedup: self.dedup.as_ref().map(Dedup::entries).unwrap_or_default(),
        })
    }

    /// Makes this replica's state the snapshot's. This replica's state is an earlier state
    /// of the same group (openraft installs a snapshot only ahead of what was applied), so
    /// its live messages are the snapshot's plus some acked since: those are deleted, and
    /// the snapshot's messages past the local log's end are appended at their seqs.
    fn install_snapshot(&mut self, snapshot: QueueSnapshot) -> Result<(), MachineError> {
        let keep: HashSet<u64> = snapshot.messages.iter().map(|m| m.seq).collect();
        let gone: Vec<u64> = self
            .log()
            .live_seqs()
            .into_iter()
            .filter(|s| !keep.contains(s))
            .collect();
        self.apply_deletions(gone)?;
        for m in &snapshot.messages {
            let log = self.log();
            if m.seq < log.next_seq() {
                if !log.contains(m.seq) {
                    // Deleted here by an op the snapshot does not reflect: this replica's
                    // state is not an earlier state of the group's.
                    return Err(MachineError::Storage {
                        machine: self.machine_name(),
                        cause: format!(
                            "the snapshot's message seq {} was deleted here and cannot be restored",
                            m.seq
                        ),
                    });
                }
                continue;
            }
            if let Err(e) = log
                .skip_to(m.seq)
                .and_then(|()| log.append(&m.meta, &m.body, m.ts_ms))
            {
                return Err(self.storage_failure(
                    format!("the snapshot's message seq {} not stored", m.seq),
                    e,
                ));
            }
            self.ready.push_new(m.seq, 0, None);
        }
        let r = self.replica_mut();
        r.next_seq = snapshot.next_seq.max(r.next_seq);
        r.last_ts_ms = snapshot.last_ts_ms;
        self.dedup = Dedup::in_memory(&self.meta.arguments, snapshot.dedup);
        self.after_state_replaced();
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Leadership
    // ------------------------------------------------------------------------------------

    fn on_leadership(&mut self, mut view: LeaderView) {
        // A replica that failed never leads, whatever a late view says (and does not send
        // clients back to itself).
        if view.is_self && self.replica.as_ref().is_some_and(|r| r.failed.is_some()) {
            view = LeaderView::default();
        }
        let was_leader = self.is_leader();
        let is_leader = view.is_self;
        self.replica_mut().leader = view;
        if was_leader && !is_leader {
            self.step_down();
        }
        if !was_leader && is_leader {
            self.replica_mut().orphans.clear();
            // Any message may have gone out from the old leader: flag them all redelivered.
            self.maybe_delivered_below = self.replica_mut().next_seq;
            self.after_state_replaced();
        }
    }

    /// No longer the leader: consumers end with `LEADER_MOVED` naming the new leader, and
    /// every delivery leaves flight here (the new leader has those messages ready); an ack
    /// of one still deletes its message (see `Replica::orphans`).
    fn step_down(&mut self) {
        let reason = self
            .replica
            .as_ref()
            .map(|r| r.leader.client_addr.clone())
            .unwrap_or_default();
        let orphans: Vec<((ConnId, u64), u64)> = self
            .in_flight
            .drain()
            .into_iter()
            .map(|(seq, d)| ((d.conn.id, d.tag.0), seq))
            .collect();
        self.replica_mut().orphans.extend(orphans);
        for c in self.consumers.drain() {
            c.conn.send(ConnEvent::ConsumerStopped {
                consumer_id: c.id,
                code: ErrorCode::LeaderMoved,
                reason: reason.clone(),
            });
        }
        self.exclusive_consumer = false;
        self.publish_consumers();
        let leader = self
            .replica
            .as_ref()
            .map(|r| r.leader.clone())
            .unwrap_or_default();
        for get in self.getters.take_all() {
            get.conn.send(ConnEvent::Error {
                request_id: get.request_id,
                error: replicated::not_leader(&leader),
            });
        }
        self.after_state_replaced();
    }

    /// Every live message is ready: on a follower (the leader's deliveries are its own), on
    /// a new leader (the old one's deliveries are void), after a snapshot.
    fn after_state_replaced(&mut self) {
        if self.is_leader() && self.in_flight.len() > 0 {
            // Deliveries of this leader stay out of the ready set.
            let out: HashSet<u64> = self.in_flight.seqs().into_iter().collect();
            self.refill_ready(|seq| !out.contains(&seq));
        } else {
            self.in_flight.clear();
            self.refill_ready(|_| true);
        }
    }

    fn refill_ready(&mut self, keep: impl Fn(u64) -> bool) {
        self.ready.clear();
        for seq in self.log().live_seqs() {
            if keep(seq) {
                self.ready.push_new(seq, 0, None);
            }
        }
    }
}

/// Bytes a message adds to an encoded `QueueOp::Publish` beyond its meta and body (lengths
/// and framing), counted generously.
const OP_MESSAGE_OVERHEAD: usize = 32;

/// Refuses every message of publish batch `batch` with `error`.
fn refuse_publish(conn: &ConnLink, batch: u64, publish_seqs: Vec<u64>, error: &RequestError) {
    let rejections = publish_seqs
        .into_iter()
        .map(|seq| sluice_client::wire::Rejection {
            seq: sluice_client::wire::PublishSeq(seq),
            code: error.code,
            message: error.message.clone(),
        })
        .collect();
    conn.send(ConnEvent::Stored {
        batch,
        epoch: 0,
        rejections,
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;
    use std::time::Duration;

    use sluice_client::wire::{ConsumerId, MessageMeta, Properties, QueueArguments};
    use tokio::sync::mpsc;

    use super::*;
    use crate::queue::replicated::QueueMachine;
    use crate::queue::{spawn_replicated, QueueHandle, QueueMeta, QueueStats};
    use crate::storage::tmpfs::{fill_to, Mount};
    use crate::storage::{Store, StoreConfig};

    const WAIT: Duration = Duration::from_secs(5);

    /// A replicated queue's task on its own store, as one replica runs it.
    struct Replica {
        queue: QueueHandle,
        machine: QueueMachine,
        _store: Store,
        _dir: Option<tempfile::TempDir>,
    }

    fn replica() -> Replica {
        replica_with(StoreConfig::default())
    }

    fn replica_with(config: StoreConfig) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = replica_in(dir.path(), config);
        replica._dir = Some(dir);
        replica
    }

    /// A replica whose data directory is `dir`.
    fn replica_in(dir: &std::path::Path, config: StoreConfig) -> Replica {
        let store = Store::open(dir, config).unwrap();
        let log = store.recreate_queue(9).unwrap();
        let meta = QueueMeta {
            name: "orders".into(),
            uid: 9,
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: QueueArguments {
                replicas: Some(3),
                dedup_window_ms: Some(60_000),
                ..QueueArguments::default()
            },
            stats: QueueStats::default(),
        };
        let queue = spawn_replicated(Arc::new(meta), log, Weak::new());
        Replica {
            machine: QueueMachine::new(queue.clone()),
            queue,
            _store: store,
            _dir: None,
        }
    }

    /// A replica on a disk with about 16 KiB left (a small tmpfs): a message too big for the
    /// space its log has reserved cannot be stored on this node, though others store it.
    fn replica_on_a_full_disk() -> (Replica, Mount) {
        let mount = Mount::tmpfs("2m");
        let replica = replica_in(&mount.path().join("data"), StoreConfig::default());
        fill_to(mount.path(), 16 << 10);
        (replica, mount)
    }

    fn meta(id: Option<&str>) -> Vec<u8> {
        MessageMeta {
            properties: Properties {
                message_id: id.map(str::to_owned),
                persistent: true,
                ..Properties::default()
            },
            ..MessageMeta::new("", "orders")
        }
        .to_bytes()
        .unwrap()
        .to_vec()
    }

    fn publish(ts_ms: u64, ids: &[Option<&str>]) -> Vec<u8> {
        QueueOp::Publish {
            ts_ms,
            dedup: true,
            messages: ids
                .iter()
                .enumerate()
                .map(|(i, id)| OpMessage {
                    meta: meta(*id),
                    body: format!("body {ts_ms}/{i}").into_bytes(),
                })
                .collect(),
        }
        .encode()
    }

    fn ops() -> Vec<Vec<u8>> {
        vec![
            publish(1_000, &[Some("a"), None, Some("b")]),
            QueueOp::Settle { acks: vec![2] }.encode(),
            publish(2_000, &[Some("a"), Some("c"), None]),
            QueueOp::Purge {
                through: 4,
                except: vec![3],
            }
            .encode(),
            QueueOp::Settle { acks: vec![2, 99] }.encode(),
            publish(3_000, &[None]),
        ]
    }

    async fn snapshot(r: &Replica) -> QueueSnapshot {
        let data = tokio::time::timeout(WAIT, r.machine.snapshot())
            .await
            .unwrap()
            .unwrap();
        QueueSnapshot::decode(&data).unwrap()
    }

    async fn apply(r: &Replica, ops: Vec<Vec<u8>>) -> Vec<OpResult> {
        let results = tokio::time::timeout(WAIT, r.machine.apply(ops))
            .await
            .unwrap()
            .unwrap();
        results
            .iter()
            .map(|b| OpResult::decode(b).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_same_ops_give_the_same_seqs_results_and_state_on_two_replicas_however_batched() {
        let (one, two) = (replica(), replica());
        let all = apply(&one, ops()).await;
        let mut each = Vec::new();
        for op in ops() {
            each.extend(apply(&two, vec![op]).await);
        }
        assert_eq!(all, each);
        assert_eq!(
            all[2],
            OpResult::Published {
                duplicates: vec![0],
                rejections: vec![]
            },
            "'a' is a duplicate within the window and takes no seq"
        );
        assert_eq!(
            all[3],
            OpResult::Purged { messages: 2 },
            "1 and 4: 3 is kept, 2 is gone"
        );
        assert_eq!(all[4], OpResult::Settled { messages: 0 });
        let state = snapshot(&one).await;
        assert_eq!(state, snapshot(&two).await);
        let seqs: Vec<u64> = state.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            vec![3, 5, 6],
            "seqs 1..=6 given in order, 1, 2 and 4 deleted"
        );
        assert_eq!(state.next_seq, 7);
        assert_eq!(state.last_ts_ms, 3_000);
        assert_eq!(&state.messages[1].body[..], b"body 2000/2");
        assert_eq!(state.messages[1].ts_ms, 2_000, "time comes from the op");
        let ids: Vec<&str> = state.dedup.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_snapshot_installed_on_a_fresh_or_lagging_replica_gives_the_same_state_and_seqs() {
        let (source, fresh, lagging) = (replica(), replica(), replica());
        apply(&source, ops()).await;
        apply(&lagging, ops()[..2].to_vec()).await;
        let data = tokio::time::timeout(WAIT, source.machine.snapshot())
            .await
            .unwrap()
            .unwrap();
        for r in [&fresh, &lagging] {
            tokio::time::timeout(WAIT, r.machine.install(data.clone()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(snapshot(r).await, snapshot(&source).await);
        }
        // The ops after the snapshot apply the same way everywhere: same seqs, same dedup.
        let next = vec![publish(4_000, &[Some("c"), Some("d")])];
        let expected = apply(&source, next.clone()).await;
        assert_eq!(
            expected,
            vec![OpResult::Published {
                duplicates: vec![0],
                rejections: vec![]
            }]
        );
        for r in [&fresh, &lagging] {
            assert_eq!(apply(r, next.clone()).await, expected);
            assert_eq!(snapshot(r).await, snapshot(&source).await);
        }
        assert_eq!(snapshot(&source).await.messages.last().unwrap().seq, 7);
    }

    fn link() -> (Arc<ConnLink>, mpsc::UnboundedReceiver<ConnEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ConnLink::new(1, tx, Arc::default()), rx)
    }

    fn consume(conn: &Arc<ConnLink>) -> QueueCmd {
        QueueCmd::Consume {
            conn: Arc::clone(conn),
            request_id: RequestId(5),
            consumer_id: ConsumerId(1),
            tag: "c".into(),
            prefetch: 10,
            exclusive: false,
            ack_timeout: None,
            priority: 0,
            circuit_breaker: None,
        }
    }

    /// The view of a replica that leads its group.
    fn leading() -> QueueCmd {
        QueueCmd::Leadership(LeaderView {
            is_self: true,
            client_addr: "127.0.0.11:5680".into(),
        })
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<ConnEvent>) -> ConnEvent {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_follower_refuses_consumers_with_not_leader_naming_the_leader() {
        let r = replica();
        let (conn, mut rx) = link();
        r.queue.send(QueueCmd::Leadership(LeaderView {
            is_self: false,
            client_addr: "127.0.0.12:5680".into(),
        }));
        r.queue.send(consume(&conn));
        match next(&mut rx).await {
            ConnEvent::Error { request_id, error } => {
                assert_eq!(request_id, RequestId(5));
                assert_eq!(error.code, ErrorCode::NotLeader);
                assert_eq!(error.message, "127.0.0.12:5680");
            }
            other => panic!("expected NOT_LEADER, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_leader_that_loses_leadership_cancels_its_consumers_and_its_deliveries_are_ready_again_yet_their_acks_count(
    ) {
        let r = replica();
        let (conn, mut rx) = link();
        r.queue.send(QueueCmd::Attach {
            proposer: Arc::new(Loopback(r.machine.clone())),
        });
        r.queue.send(leading());
        r.queue.send(consume(&conn));
        assert!(
            matches!(next(&mut rx).await, ConnEvent::Reply { .. }),
            "ConsumeOk"
        );
        apply(&r, vec![publish(1_000, &[None, None])]).await;
        let ConnEvent::Deliver { deliveries, .. } = next(&mut rx).await else {
            panic!("deliveries expected");
        };
        assert_eq!(deliveries.len(), 2);
        r.queue.send(QueueCmd::Leadership(LeaderView {
            is_self: false,
            client_addr: "127.0.0.13:5680".into(),
        }));
        match next(&mut rx).await {
            ConnEvent::ConsumerStopped { code, reason, .. } => {
                assert_eq!(code, ErrorCode::LeaderMoved);
                assert_eq!(reason, "127.0.0.13:5680");
            }
            other => panic!("expected LEADER_MOVED, got {other:?}"),
        }
        assert_eq!(snapshot(&r).await.messages.len(), 2, "nothing was deleted");
        r.queue.send(QueueCmd::Inspect {
            conn: Arc::clone(&conn),
            request_id: RequestId(6),
        });
        match next(&mut rx).await {
            ConnEvent::Reply {
                reply: sluice_client::wire::Reply::InspectQueueOk(ok),
                ..
            } => assert_eq!(
                (ok.ready, ok.unacked, ok.consumers),
                (2, 0, 0),
                "ready on a follower"
            ),
            other => panic!("expected InspectQueueOk, got {other:?}"),
        }
        // An ack of a delivery made before the step-down still deletes its message.
        let first = &deliveries[0];
        r.queue.send(QueueCmd::Settle {
            conn: Arc::clone(&conn),
            request_id: RequestId(7),
            deliveries: vec![(first.delivery_tag.0, first.message_seq)],
            how: Settlement::Ack,
            reason: None,
        });
        r.queue.send(QueueCmd::Inspect {
            conn: Arc::clone(&conn),
            request_id: RequestId(8),
        });
        match next(&mut rx).await {
            ConnEvent::Reply { request_id, .. } => assert_eq!(request_id, RequestId(8)),
            other => panic!("expected the inspect after the ack, got {other:?}"),
        }
        let left: Vec<u64> = snapshot(&r).await.messages.iter().map(|m| m.seq).collect();
        assert_eq!(left, vec![deliveries[1].message_seq]);
    }

    /// A replica whose queue log takes records of at most `max` bytes (the limit is a
    /// constant of the build, the same on every replica; a small one makes small tests).
    fn replica_with_record_limit(max: usize) -> Replica {
        let mut config = StoreConfig::default();
        config.log.max_record_bytes = max;
        replica_with(config)
    }

    fn big_publish(ts_ms: u64) -> Vec<u8> {
        QueueOp::Publish {
            ts_ms,
            dedup: false,
            messages: vec![OpMessage {
                meta: meta(None),
                // Past the first space a log reserves: storing it needs more disk.
                body: vec![7; 256 << 10],
            }],
        }
        .encode()
    }

    async fn try_apply(r: &Replica, ops: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, MachineError> {
        tokio::time::timeout(WAIT, r.machine.apply(ops))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_replica_that_cannot_store_a_committed_message_fails_instead_of_applying_without_it()
    {
        let (healthy, (small, _disk)) = (replica(), replica_on_a_full_disk());
        let ops = vec![publish(1_000, &[None]), big_publish(2_000)];
        let results = apply(&healthy, ops.clone()).await;
        assert_eq!(
            results[1],
            OpResult::Published {
                duplicates: vec![],
                rejections: vec![]
            },
            "stored where the limit allows it"
        );
        let failed = try_apply(&small, ops).await;
        match &failed {
            Err(MachineError::Storage { machine, cause }) => {
                assert_eq!(machine, "queue 'orders'");
                assert!(cause.contains("message seq 2 not stored"), "{cause}");
            }
            other => panic!("expected a storage failure, got {other:?}"),
        }
        // Failed for good: nothing more is applied, no snapshot is given, none is installed.
        assert_eq!(
            try_apply(&small, vec![publish(3_000, &[None])]).await,
            failed
        );
        let snapshot = tokio::time::timeout(WAIT, small.machine.snapshot())
            .await
            .unwrap();
        assert_eq!(snapshot.unwrap_err(), failed.clone().unwrap_err());
        let data = tokio::time::timeout(WAIT, healthy.machine.snapshot())
            .await
            .unwrap()
            .unwrap();
        let installed = tokio::time::timeout(WAIT, small.machine.install(data))
            .await
            .unwrap();
        assert_eq!(installed.unwrap_err(), failed.unwrap_err());
    }

    #[tokio::test]
    async fn a_message_over_the_record_limit_is_refused_on_every_replica_and_may_be_sent_again() {
        // The limit is the build's, so every replica refuses alike: an answer, not a failure.
        let r = replica_with_record_limit(1024);
        let mut op = QueueOp::decode(&big_publish(1_000)).unwrap();
        if let QueueOp::Publish {
            messages, dedup, ..
        } = &mut op
        {
            messages[0].meta = meta(Some("big"));
            *dedup = true;
        }
        let results = apply(&r, vec![op.encode()]).await;
        match &results[0] {
            OpResult::Published {
                duplicates,
                rejections,
            } => {
                assert!(duplicates.is_empty());
                assert_eq!(rejections.len(), 1);
                assert_eq!(rejections[0].code, ErrorCode::MessageTooLarge.as_u16());
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Its id did not enter the dedup window: the same id, smaller, is stored.
        let again = apply(&r, vec![publish(2_000, &[Some("big")])]).await;
        assert_eq!(
            again[0],
            OpResult::Published {
                duplicates: vec![],
                rejections: vec![]
            }
        );
        let live: Vec<u64> = snapshot(&r).await.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            live,
            vec![2],
            "seq 1 went to the refused message on every replica"
        );
    }

    #[tokio::test]
    async fn a_snapshot_that_cannot_be_stored_or_decoded_fails_the_replica() {
        let source = replica();
        apply(&source, vec![publish(1_000, &[None]), big_publish(2_000)]).await;
        let data = tokio::time::timeout(WAIT, source.machine.snapshot())
            .await
            .unwrap()
            .unwrap();
        let (small, _disk) = replica_on_a_full_disk();
        let installed = tokio::time::timeout(WAIT, small.machine.install(data))
            .await
            .unwrap();
        assert!(
            matches!(&installed, Err(MachineError::Storage { cause, .. }) if cause.contains("seq 2 not stored")),
            "got {installed:?}"
        );
        let garbled = replica();
        let installed = tokio::time::timeout(WAIT, garbled.machine.install(vec![0xff; 5]))
            .await
            .unwrap();
        assert!(
            matches!(
                installed,
                Err(MachineError::Undecodable {
                    what: "a snapshot",
                    ..
                })
            ),
            "got {installed:?}"
        );
    }

    #[tokio::test]
    async fn an_op_that_does_not_decode_fails_the_replica_rather_than_being_skipped() {
        let r = replica();
        let result = try_apply(&r, vec![publish(1_000, &[None]), vec![0xee; 3]]).await;
        assert!(
            matches!(result, Err(MachineError::Undecodable { what: "an op", .. })),
            "got {result:?}"
        );
    }

    #[tokio::test]
    async fn a_queue_task_that_ended_answers_errors_never_an_empty_state() {
        let r = replica();
        apply(&r, vec![publish(1_000, &[None, None])]).await;
        let (done, closed) = tokio::sync::oneshot::channel();
        r.queue.send(QueueCmd::Shutdown { done });
        let _ = tokio::time::timeout(WAIT, closed).await.unwrap();
        let stopped = MachineError::Stopped {
            machine: "queue 'orders'".into(),
        };
        let applied = try_apply(&r, vec![publish(2_000, &[None])]).await;
        assert_eq!(applied, Err(stopped.clone()));
        let snapshot = tokio::time::timeout(WAIT, r.machine.snapshot())
            .await
            .unwrap();
        assert_eq!(snapshot, Err(stopped.clone()));
        let installed =
            tokio::time::timeout(WAIT, r.machine.install(QueueSnapshot::default().encode()))
                .await
                .unwrap();
        assert_eq!(installed, Err(stopped));
    }

    #[tokio::test]
    async fn a_leader_that_fails_stops_its_consumers_and_never_leads_again() {
        let (r, _disk) = replica_on_a_full_disk();
        let (conn, mut rx) = link();
        r.queue.send(leading());
        r.queue.send(consume(&conn));
        assert!(
            matches!(next(&mut rx).await, ConnEvent::Reply { .. }),
            "ConsumeOk"
        );
        assert!(try_apply(&r, vec![big_publish(1_000)]).await.is_err());
        match next(&mut rx).await {
            ConnEvent::ConsumerStopped { code, .. } => assert_eq!(code, ErrorCode::LeaderMoved),
            other => panic!("expected LEADER_MOVED, got {other:?}"),
        }
        // A late view naming this node changes nothing: consumers are sent elsewhere.
        r.queue.send(leading());
        r.queue.send(consume(&conn));
        match next(&mut rx).await {
            ConnEvent::Error { error, .. } => assert_eq!(error.code, ErrorCode::NotLeader),
            other => panic!("expected NOT_LEADER, got {other:?}"),
        }
    }

    /// A group of one, in process: a proposal is applied by the queue's own machine.
    #[derive(Debug)]
    struct Loopback(QueueMachine);

    impl Proposer for Loopback {
        fn propose(
            &self,
            command: Vec<u8>,
        ) -> futures_util::future::BoxFuture<'static, Result<Vec<u8>, replicated::ProposeFailure>>
        {
            let applied = self.0.apply(vec![command]);
            Box::pin(async move {
                applied
                    .await
                    .map(|mut r| r.remove(0))
                    .map_err(|e| replicated::ProposeFailure::Unavailable(e.to_string()))
            })
        }
    }
}
