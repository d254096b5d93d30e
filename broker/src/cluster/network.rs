//! openraft's network for one group, over the shared cluster transport: every group on a
//! node sends through the same connections, its requests tagged with its `GroupId`.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::EntryPayload;

use super::codec::MAX_COMMAND_BYTES;
use super::rpc::{Failure, Reply, Request};
use super::transport::{Transport, TransportError};
use super::types::{GroupId, NodeId, NodeInfo, TypeConfig};

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

/// Makes a [`PeerClient`] per replication target of one group.
#[derive(Clone, Debug)]
pub(crate) struct GroupNetwork {
    pub(crate) transport: Transport,
    pub(crate) group: GroupId,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
            addr: node.cluster_addr.clone(),
        }
    }
}

/// One group's RPCs to one peer.
#[derive(Debug)]
pub(crate) struct PeerClient {
    transport: Transport,
    group: GroupId,
    target: NodeId,
    addr: String,
}

/// A failed call, in openraft's terms: anything but a slow reply makes openraft back off
/// (`Unreachable`) rather than retry at once, so a down peer costs no busy loop.
fn rpc_error<E: std::error::Error>(
    err: CallError,
) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    match err {
        CallError::Transport(e @ TransportError::Timeout(_)) => {
            RPCError::Network(NetworkError::new(&e))
        }
        CallError::Transport(e) => RPCError::Unreachable(Unreachable::new(&e)),
        CallError::Remote(f) => RPCError::Unreachable(Unreachable::new(&RemoteFailure(f))),
        CallError::Unexpected => RPCError::Unreachable(Unreachable::new(&RemoteFailure(
            Failure::Other("unexpected reply".into()),
        ))),
    }
}

/// Commands' bytes an `AppendEntries` may carry: half a frame, so the log ids and encoding
/// around them never push a frame over [`super::codec::MAX_FRAME_BYTES`].
const ENTRIES_BUDGET: usize = MAX_COMMAND_BYTES;

/// `Some(n)` when the request's entries are over [`ENTRIES_BUDGET`]: the first `n` (at least
/// one) fit. A frame over the limit would be refused on every try, so replication to that
/// peer would stall for good; one entry is at most a client frame, far below a cluster one.
fn entries_that_fit(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<u64> {
    let mut total = 0usize;
    for (i, entry) in rpc.entries.iter().enumerate() {
        if let EntryPayload::Normal(command) = &entry.payload {
            total += command.0.len();
        }
        if total > ENTRIES_BUDGET && rpc.entries.len() > 1 {
            return Some(i.max(1) as u64);
        }
    }
    None
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RemoteFailure(Failure);

enum CallError {
    Transport(TransportError),
    Remote(Failure),
    Unexpected,
}

impl PeerClient {
    async fn call(&self, request: Request, ttl: Duration) -> Result<Reply, CallError> {
        match self
            .transport
            .call(self.target, &self.addr, self.group, request, ttl)
            .await
        {
            Ok(Reply::Failed(f)) => Err(CallError::Remote(f)),
            Ok(reply) => Ok(reply),
            Err(e) => Err(CallError::Transport(e)),
        }
    }
}

/// Pauses after failed RPCs before openraft sends to that peer again (its own default is
/// 500 ms each time): the first short, so a restarted peer hears its leader within a heartbeat
/// or two, then doubling up to a second, so a peer that stays dead costs little (each failure
/// is also a few log lines).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

impl RaftNetwork<TypeConfig> for PeerClient {
    fn backoff(&self) -> openraft::network::Backoff {
        let doubling = std::iter::successors(Some(RETRY_FIRST), |d| Some((*d * 2).min(RETRY_MAX)));
        openraft::network::Backoff::new(doubling)
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        if let Some(fit) = entries_that_fit(&rpc) {
            // openraft sends again at once with the first `fit` entries only.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        match self
            .call(Request::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::AppendEntries(r)) => Ok(r),
            Ok(_) => Err(rpc_error(CallError::Unexpected)),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .call(Request::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::InstallSnapshot(r)) => Ok(r),
            Ok(_) => Err(rpc_error(CallError::Unexpected)),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(r)) => Ok(r),
            Ok(_) => Err(rpc_error(CallError::Unexpected)),
            Err(e) => Err(rpc_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, LogId, Vote};

    use super::*;
    use crate::cluster::types::Command;

    fn request(sizes: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        let entries = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
                payload: EntryPayload::Normal(Command(vec![0; n])),
            })
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn entries_over_half_a_frame_are_sent_in_fewer_at_a_time() {
        let mib = 1 << 20;
        assert_eq!(entries_that_fit(&request(&[mib; 10])), None);
        assert_eq!(entries_that_fit(&request(&[17 * mib; 4])), Some(1));
        assert_eq!(entries_that_fit(&request(&[10 * mib; 5])), Some(3));
        assert_eq!(
            entries_that_fit(&request(&[40 * mib])),
            None,
            "one entry alone is always sent"
        );
    }
}
