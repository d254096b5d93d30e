//! The vocabulary every part of the cluster shares: ids, node addresses, the openraft type
//! configuration, and the errors callers see.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster, chosen by the operator (`--node-id`), never reused for another
/// machine's data.
pub type NodeId = u64;

/// A Raft group: 0 is the cluster's metadata, any other value the uid of a replicated queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The metadata group: members and the replicated-queue catalog.
    pub const META: GroupId = GroupId(0);

    /// The name of the group's directory under `<data>/cluster/groups/`.
    pub(crate) fn dir_name(self) -> String {
        format!("{:016x}", self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {:016x}", self.0)
    }
}

/// Where a node is reached: by its peers, by clients, by operators.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The cluster listener's advertised address (`host:port`).
    pub cluster_addr: String,
    /// The client (wire protocol) listener's address, as clients should dial it.
    pub client_addr: String,
    /// The HTTP admin listener's address, if the node runs one.
    pub http_addr: Option<String>,
}

/// A group's command: opaque bytes the group's machine decodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<u8>);

/// A group machine's answer to one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Vec<u8>);

openraft::declare_raft_types!(
    /// The one openraft type configuration every group uses.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;
pub(crate) type Membership = openraft::StoredMembership<NodeId, NodeInfo>;

/// Who leads a group, as this node knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The leader, when one is known.
    pub leader: Option<NodeId>,
    /// The term the knowledge is from.
    pub term: u64,
    /// This node leads the group.
    pub is_self: bool,
}

/// Why a proposal did not commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    /// No leader is known (an election is under way, or no quorum): retry shortly.
    #[error("the group has no leader right now")]
    NoLeader,
    /// The leader (or every replica asked) could not be reached.
    #[error("the group's leader is unreachable: {0}")]
    Unreachable(String),
    /// This node's cluster is stopping.
    #[error("the cluster is shutting down")]
    Shutdown,
    /// The group failed in a way retrying cannot fix (storage failure, bad command).
    #[error("the group failed: {0}")]
    Fatal(String),
}

/// What cluster operations fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster I/O failed: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster storage failed: {0}")]
    Storage(String),
    #[error("raft failed: {0}")]
    Raft(String),
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error("{0} is already hosted on this node")]
    AlreadyHosted(GroupId),
    #[error("{0} is not hosted on this node")]
    NotHosted(GroupId),
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    #[error("{wanted} replicas need {wanted} members, the cluster has {members}")]
    NotEnoughNodes { wanted: usize, members: usize },
    #[error("invalid cluster setting: {0}")]
    Config(String),
    #[error("{0}")]
    Refused(String),
    /// What the member that handled a forwarded request answered (the metadata leader).
    #[error("{0}")]
    Remote(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClusterError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }
}
