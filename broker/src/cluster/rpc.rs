//! What nodes say to each other on the cluster transport: openraft's three RPCs, plus ours
//! (a proposal forwarded to the leader, a request to join, a node's self-description, an
//! election nudge for leadership transfer).

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::types::{GroupId, NodeId, NodeInfo, TypeConfig};

/// One frame on a cluster connection. Either side may send requests; replies carry the id of
/// the request they answer, so many requests (of many groups) share one connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// First frame of a connection: who dialled (`None`: a one-off call by address).
    Hello {
        node: Option<NodeId>,
    },
    Request {
        id: u64,
        group: GroupId,
        body: Request,
    },
    Reply {
        id: u64,
        body: Reply,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command for the group's leader to propose.
    Propose(Vec<u8>),
    /// Add (or refresh the addresses of) `node` as a member; sent to any member, which
    /// forwards it to the metadata leader.
    Join {
        node: NodeId,
        info: NodeInfo,
    },
    /// Remove `node` from the cluster (metadata leader only; forwarded like `Join`).
    Leave {
        node: NodeId,
    },
    /// Who are you?
    Info,
    /// Start an election in the group now (the target of a leadership transfer).
    Elect,
    /// Move the group's leadership to `to` (run by the group's current leader).
    TransferLeadership {
        to: NodeId,
    },
    /// Start no election in the group for `ms` milliseconds (0: allow them again now), so
    /// that the target of a leadership transfer is the only candidate.
    HoldElections {
        ms: u64,
    },
    /// Hand over the leadership of every queue group this node leads (it is being removed
    /// from the cluster: after that it hears of no new placement, and while it leads a group
    /// nobody else can change the group's voters).
    StepDown,
    /// May `node`, whose data directory is new, join under its id? (Metadata leader only;
    /// forwarded like `Join`.) No if the id is a voter or a member: its owner voted and
    /// acknowledged entries this node has forgotten.
    MayJoin {
        node: NodeId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    AppendEntries(AppendEntriesResponse<NodeId>),
    Vote(VoteResponse<NodeId>),
    InstallSnapshot(InstallSnapshotResponse<NodeId>),
    Proposed(Vec<u8>),
    Done,
    Info { node: NodeId, info: NodeInfo },
    Failed(Failure),
}

/// Why the remote side could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The group is not hosted on that node (yet, or any more).
    NotHosted,
    /// That node is not the group's leader; the leader it knows, if any.
    NotLeader(Option<(NodeId, NodeInfo)>),
    ShuttingDown,
    /// Anything else, as text for the log and the operator.
    Other(String),
    /// The cluster's answer to a membership request is no, and asking again changes
    /// nothing (a removed node's id).
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotHosted => f.write_str("group not hosted there"),
            Failure::NotLeader(Some((id, _))) => write!(f, "not the leader; node {id} is"),
            Failure::NotLeader(None) => f.write_str("not the leader; no leader known"),
            Failure::ShuttingDown => f.write_str("node shutting down"),
            Failure::Other(s) => f.write_str(s),
            Failure::Refused(s) => f.write_str(s),
        }
    }
}
