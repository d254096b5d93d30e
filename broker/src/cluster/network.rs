//! openraft's network for one group, over the shared cluster transport: every group on a
//! node sends through the same connections, its requests tagged with its `GroupId`.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

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

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
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
