//! Cluster administration (protocol.md §20): the cluster as one node sees it, adding and
//! removing nodes, moving a group's leadership. Administrators only.
//!
//! ```text
//! ClusterStatus:         (empty)
//! ClusterStatusOk:       node_id u64, flags u8 (bit 0: member), metadata_leader u64 (0 = none),
//!                        metadata_term u64,
//!                        members u16 × { id u64, flags u8 (bit 0: voter, bit 1: http_addr),
//!                                        cluster_addr str, client_addr str, [http_addr str] },
//!                        groups u16 × { group_id u64, name str, leader u64 (0 = none), term u64,
//!                                       last_index u64,
//!                                       replicas u8 × { node u64, flags u8 (bit 0: voter,
//!                                                       bit 1: lag known), lag u64 } }
//! AddNode:               node_id u64, cluster_addr str        -> AddNodeOk (empty)
//! RemoveNode:            node_id u64                          -> RemoveNodeOk (empty)
//! TransferLeadership:    queue str (empty: the metadata group), to u64
//!                                                             -> TransferLeadershipOk (empty)
//! ```

use bytes::BytesMut;

use super::error::WireError;
use super::frame::Payload;
use super::primitives::{self as p, Reader};

/// Most members or groups one `ClusterStatusOk` lists.
pub const MAX_CLUSTER_ITEMS: usize = u16::MAX as usize;
/// Most replicas one group lists.
pub const MAX_GROUP_REPLICAS: usize = u8::MAX as usize;

const MEMBER_FLAG: u8 = 0x01;
const VOTER_FLAG: u8 = 0x01;
const HTTP_FLAG: u8 = 0x02;
const LAG_FLAG: u8 = 0x02;
/// Smallest encoded member: id, flags, two empty strings.
const MIN_MEMBER_LEN: usize = 8 + 1 + 2 + 2;
/// Smallest encoded group: id, empty name, leader, term, last index, no replicas.
const MIN_GROUP_LEN: usize = 8 + 2 + 8 + 8 + 8 + 1;
const REPLICA_LEN: usize = 8 + 1 + 8;

/// A member of the cluster, in `ClusterStatusOk`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMember {
    /// Its node id.
    pub id: u64,
    /// It votes in the metadata group (a node being added is a learner first).
    pub voter: bool,
    /// Where the other nodes reach it.
    pub cluster_addr: String,
    /// Where clients reach it.
    pub client_addr: String,
    /// Its HTTP API, if it runs one.
    pub http_addr: Option<String>,
}

/// One replica of a group, in `ClusterStatusOk`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupReplica {
    /// The node holding it.
    pub node: u64,
    /// It votes in the group.
    pub voter: bool,
    /// Log entries it is behind the leader; known only on the leader.
    pub lag: Option<u64>,
}

/// A Raft group hosted on the answering node, in `ClusterStatusOk`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterGroup {
    /// 0: the metadata group; otherwise a replicated queue's uid.
    pub group_id: u64,
    /// The queue's name (`vhost/name` outside the default vhost); empty for the metadata group.
    pub name: String,
    /// Its leader, when known.
    pub leader: Option<u64>,
    /// The term that leader knowledge is from.
    pub term: u64,
    /// Index of the last entry in the answering node's log.
    pub last_index: u64,
    /// Its replicas.
    pub replicas: Vec<GroupReplica>,
}

/// `ClusterStatusOk` (0x0702): the cluster as the answering node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStatusOk {
    /// The answering node.
    pub node_id: u64,
    /// The answering node votes in the metadata group.
    pub member: bool,
    /// The metadata group's leader, when known.
    pub metadata_leader: Option<u64>,
    /// The metadata group's term.
    pub metadata_term: u64,
    /// Every member.
    pub members: Vec<ClusterMember>,
    /// Every group hosted on the answering node, the metadata group first.
    pub groups: Vec<ClusterGroup>,
}

fn put_count(
    buf: &mut BytesMut,
    what: &'static str,
    n: usize,
    max: usize,
) -> Result<(), WireError> {
    let n = p::checked_len(what, n, max)?;
    if max <= u8::MAX as usize {
        p::put_u8(buf, n as u8);
    } else {
        p::put_u16(buf, n as u16);
    }
    Ok(())
}

/// A node id where 0 means none (node ids start at 1).
fn put_node(buf: &mut BytesMut, node: Option<u64>) {
    p::put_u64(buf, node.unwrap_or(0));
}

fn read_node(r: &mut Reader<'_>) -> Result<Option<u64>, WireError> {
    Ok(Some(r.u64()?).filter(|n| *n != 0))
}

impl ClusterMember {
    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.id);
        let flags = if self.voter { VOTER_FLAG } else { 0 }
            | if self.http_addr.is_some() {
                HTTP_FLAG
            } else {
                0
            };
        p::put_u8(buf, flags);
        p::put_str(buf, "cluster address", &self.cluster_addr)?;
        p::put_str(buf, "client address", &self.client_addr)?;
        if let Some(http) = &self.http_addr {
            p::put_str(buf, "http address", http)?;
        }
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let id = r.u64()?;
        let flags = r.flags_u8("member flags", VOTER_FLAG | HTTP_FLAG)?;
        Ok(ClusterMember {
            id,
            voter: flags & VOTER_FLAG != 0,
            cluster_addr: r.string()?,
            client_addr: r.string()?,
            http_addr: if flags & HTTP_FLAG != 0 {
                Some(r.string()?)
            } else {
                None
            },
        })
    }
}

impl ClusterGroup {
    fn put(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.group_id);
        p::put_str(buf, "group name", &self.name)?;
        put_node(buf, self.leader);
        p::put_u64(buf, self.term);
        p::put_u64(buf, self.last_index);
        put_count(
            buf,
            "group replicas",
            self.replicas.len(),
            MAX_GROUP_REPLICAS,
        )?;
        for replica in &self.replicas {
            p::put_u64(buf, replica.node);
            let flags = if replica.voter { VOTER_FLAG } else { 0 }
                | if replica.lag.is_some() { LAG_FLAG } else { 0 };
            p::put_u8(buf, flags);
            p::put_u64(buf, replica.lag.unwrap_or(0));
        }
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let group_id = r.u64()?;
        let name = r.string()?;
        let leader = read_node(r)?;
        let term = r.u64()?;
        let last_index = r.u64()?;
        let n = r.u8()?;
        let n = r.count(n as usize, REPLICA_LEN)?;
        let replicas = (0..n)
            .map(|_| {
                let node = r.u64()?;
                let flags = r.flags_u8("replica flags", VOTER_FLAG | LAG_FLAG)?;
                let lag = r.u64()?;
                Ok(GroupReplica {
                    node,
                    voter: flags & VOTER_FLAG != 0,
                    lag: (flags & LAG_FLAG != 0).then_some(lag),
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(ClusterGroup {
            group_id,
            name,
            leader,
            term,
            last_index,
            replicas,
        })
    }
}

impl Payload for ClusterStatusOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.node_id);
        p::put_u8(buf, if self.member { MEMBER_FLAG } else { 0 });
        put_node(buf, self.metadata_leader);
        p::put_u64(buf, self.metadata_term);
        put_count(
            buf,
            "cluster members",
            self.members.len(),
            MAX_CLUSTER_ITEMS,
        )?;
        for m in &self.members {
            m.put(buf)?;
        }
        put_count(buf, "cluster groups", self.groups.len(), MAX_CLUSTER_ITEMS)?;
        for g in &self.groups {
            g.put(buf)?;
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let node_id = r.u64()?;
        let member = r.flags_u8("cluster status flags", MEMBER_FLAG)? & MEMBER_FLAG != 0;
        let metadata_leader = read_node(r)?;
        let metadata_term = r.u64()?;
        let n = r.u16()?;
        let n = r.count(n as usize, MIN_MEMBER_LEN)?;
        let members = (0..n)
            .map(|_| ClusterMember::read(r))
            .collect::<Result<_, _>>()?;
        let n = r.u16()?;
        let n = r.count(n as usize, MIN_GROUP_LEN)?;
        let groups = (0..n)
            .map(|_| ClusterGroup::read(r))
            .collect::<Result<_, _>>()?;
        Ok(ClusterStatusOk {
            node_id,
            member,
            metadata_leader,
            metadata_term,
            members,
            groups,
        })
    }
}

/// `AddNode` (0x0703): adds node `node_id`, reached at `cluster_addr`, as a member; the node
/// must be running (its other addresses are asked of it). Answered by `AddNodeOk` (0x0704).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddNode {
    /// The new node's id.
    pub node_id: u64,
    /// Its cluster listener's address.
    pub cluster_addr: String,
}

impl Payload for AddNode {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.node_id);
        p::put_str(buf, "cluster address", &self.cluster_addr)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(AddNode {
            node_id: r.u64()?,
            cluster_addr: r.string()?,
        })
    }
}

/// `RemoveNode` (0x0705): removes node `node_id` from the cluster. Answered by
/// `RemoveNodeOk` (0x0706).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveNode {
    /// The node to remove.
    pub node_id: u64,
}

impl Payload for RemoveNode {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.node_id);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(RemoveNode { node_id: r.u64()? })
    }
}

/// `TransferLeadership` (0x0707): moves the leadership of a replicated queue's group (or, with
/// an empty `queue`, of the metadata group) to node `to`. Answered by
/// `TransferLeadershipOk` (0x0708) once `to` leads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferLeadership {
    /// The replicated queue; empty: the metadata group.
    pub queue: String,
    /// The node that should lead.
    pub to: u64,
}

impl Payload for TransferLeadership {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "queue name", &self.queue)?;
        p::put_u64(buf, self.to);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(TransferLeadership {
            queue: r.string()?,
            to: r.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_frame, check_payload, hex};
    use crate::wire::{Frame, Reply, Request, RequestId};

    #[test]
    fn a_status_lists_members_then_groups_with_their_replicas() {
        let ok = ClusterStatusOk {
            node_id: 2,
            member: true,
            metadata_leader: Some(1),
            metadata_term: 3,
            members: vec![ClusterMember {
                id: 1,
                voter: true,
                cluster_addr: "c".into(),
                client_addr: "d".into(),
                http_addr: Some("h".into()),
            }],
            groups: vec![ClusterGroup {
                group_id: 0,
                name: String::new(),
                leader: None,
                term: 3,
                last_index: 9,
                replicas: vec![GroupReplica {
                    node: 1,
                    voter: true,
                    lag: Some(4),
                }],
            }],
        };
        check_payload(
            &ok,
            &hex("02 00 00 00 00 00 00 00      # node_id 2
                  01                           # member
                  01 00 00 00 00 00 00 00      # metadata_leader 1
                  03 00 00 00 00 00 00 00      # metadata_term 3
                  01 00                        # one member
                  01 00 00 00 00 00 00 00      #   id 1
                  03                           #   voter, http_addr
                  01 00 63  01 00 64  01 00 68 #   c, d, h
                  01 00                        # one group
                  00 00 00 00 00 00 00 00      #   group 0
                  00 00                        #   name empty
                  00 00 00 00 00 00 00 00      #   no leader known
                  03 00 00 00 00 00 00 00      #   term 3
                  09 00 00 00 00 00 00 00      #   last_index 9
                  01                           #   one replica
                  01 00 00 00 00 00 00 00 03   #     node 1, voter, lag known
                  04 00 00 00 00 00 00 00      #     lag 4"),
        );
        check_payload(
            &ClusterStatusOk::default(),
            &hex("00 00 00 00 00 00 00 00  00  00 00 00 00 00 00 00 00
                  00 00 00 00 00 00 00 00  00 00  00 00"),
        );
    }

    #[test]
    fn undefined_flag_bits_are_refused() {
        let bytes = hex("02 00 00 00 00 00 00 00  80  00 00 00 00 00 00 00 00
                         00 00 00 00 00 00 00 00  00 00  00 00");
        assert!(ClusterStatusOk::decode_exact(&bytes.into()).is_err());
    }

    #[test]
    fn node_changes_and_transfers_have_exact_frames() {
        check_frame(
            &Frame::<Request>::new(
                RequestId(5),
                AddNode {
                    node_id: 4,
                    cluster_addr: "h:1".into(),
                },
            ),
            &hex("15 00 00 00  03 07  00 00  05 00 00 00  04 00 00 00 00 00 00 00  03 00 68 3a 31"),
        );
        check_frame(
            &Frame::<Request>::new(RequestId(6), RemoveNode { node_id: 4 }),
            &hex("10 00 00 00  05 07  00 00  06 00 00 00  04 00 00 00 00 00 00 00"),
        );
        check_frame(
            &Frame::<Request>::new(
                RequestId(7),
                TransferLeadership {
                    queue: "q".into(),
                    to: 2,
                },
            ),
            &hex("13 00 00 00  07 07  00 00  07 00 00 00  01 00 71  02 00 00 00 00 00 00 00"),
        );
        check_frame(
            &Frame::<Request>::new(RequestId(8), Request::ClusterStatus),
            &hex("08 00 00 00  01 07  00 00  08 00 00 00"),
        );
        for (code, reply) in [
            (0x04, Reply::AddNodeOk),
            (0x06, Reply::RemoveNodeOk),
            (0x08, Reply::TransferLeadershipOk),
        ] {
            check_frame(
                &Frame::<Reply>::new(RequestId(9), reply),
                &[0x08, 0, 0, 0, code, 0x07, 0, 0, 9, 0, 0, 0],
            );
        }
    }
}
