//! Moving ready messages from one queue to another (protocol.md §18), for example a
//! dead-letter queue back to its source: started as a task in the server, then watched.
//!
//! ```text
//! MoveMessages:   source str, destination str, max u64 (0 = every message ready at the start)
//! MoveMessagesOk: move_id u64
//! MoveStatus:     move_id u64
//! MoveStatusOk:   state u8 (0 running, 1 done, 2 failed), moved u64, requested u64,
//!                 and only if failed: code u16, message str
//! ```

use bytes::BytesMut;

use super::error::{ErrorCode, WireError};
use super::frame::Payload;
use super::primitives::{self as p, Reader};

/// Names a move on the server; increases from 1 for the life of the server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MoveId(pub u64);

impl std::fmt::Display for MoveId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `MoveMessages` (0x0611): starts moving ready messages from `source` to `destination`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveMessages {
    /// The queue the messages leave.
    pub source: String,
    /// The queue they go to.
    pub destination: String,
    /// Most messages to move; 0 = as many as were ready in `source` when the move started.
    pub max: u64,
}

impl Payload for MoveMessages {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_str(buf, "source queue name", &self.source)?;
        p::put_str(buf, "destination queue name", &self.destination)?;
        p::put_u64(buf, self.max);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(MoveMessages {
            source: r.string()?,
            destination: r.string()?,
            max: r.u64()?,
        })
    }
}

/// `MoveMessagesOk` (0x0612): the move started; watch it with `MoveStatus`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveMessagesOk {
    /// The move's number.
    pub move_id: MoveId,
}

impl Payload for MoveMessagesOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.move_id.0);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(MoveMessagesOk {
            move_id: MoveId(r.u64()?),
        })
    }
}

/// `MoveStatus` (0x0613): asks how a move is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveStatus {
    /// The move.
    pub move_id: MoveId,
}

impl Payload for MoveStatus {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u64(buf, self.move_id.0);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(MoveStatus {
            move_id: MoveId(r.u64()?),
        })
    }
}

/// Where a move stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MoveState {
    /// Still moving.
    #[default]
    Running,
    /// Finished: `requested` messages moved, or the source had no more ready ones.
    Done,
    /// Stopped early; messages not moved are back in the source.
    Failed {
        /// Why, as a wire error code (e.g. `NOT_FOUND`, `QUEUE_FULL`, `STORAGE_FULL`).
        code: ErrorCode,
        /// Detail.
        message: String,
    },
}

impl MoveState {
    const RUNNING: u8 = 0;
    const DONE: u8 = 1;
    const FAILED: u8 = 2;

    /// Whether the move has stopped (done or failed).
    pub fn is_finished(&self) -> bool {
        !matches!(self, MoveState::Running)
    }

    /// `"running"`, `"done"` or `"failed"`.
    pub fn name(&self) -> &'static str {
        match self {
            MoveState::Running => "running",
            MoveState::Done => "done",
            MoveState::Failed { .. } => "failed",
        }
    }
}

/// `MoveStatusOk` (0x0614): a move's state and progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveStatusOk {
    /// Running, done or failed.
    pub state: MoveState,
    /// Messages moved so far (stored durably in the destination and removed from the source).
    pub moved: u64,
    /// Messages the move set out to move.
    pub requested: u64,
}

impl Payload for MoveStatusOk {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        let state = match &self.state {
            MoveState::Running => MoveState::RUNNING,
            MoveState::Done => MoveState::DONE,
            MoveState::Failed { .. } => MoveState::FAILED,
        };
        p::put_u8(buf, state);
        p::put_u64(buf, self.moved);
        p::put_u64(buf, self.requested);
        if let MoveState::Failed { code, message } = &self.state {
            p::put_u16(buf, code.as_u16());
            p::put_str(buf, "move error message", message)?;
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let state = r.u8()?;
        let moved = r.u64()?;
        let requested = r.u64()?;
        let state = match state {
            MoveState::RUNNING => MoveState::Running,
            MoveState::DONE => MoveState::Done,
            MoveState::FAILED => MoveState::Failed {
                code: ErrorCode::from_u16(r.u16()?),
                message: r.string()?,
            },
            other => {
                return Err(WireError::InvalidValue {
                    what: "move state",
                    value: u64::from(other),
                })
            }
        };
        Ok(MoveStatusOk {
            state,
            moved,
            requested,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wire::testing::{check_payload, hex};

    #[test]
    fn move_messages_and_its_answer() {
        check_payload(
            &MoveMessages {
                source: "dlq".into(),
                destination: "q".into(),
                max: 5,
            },
            &hex("03 00 64 6c 71  01 00 71  05 00 00 00 00 00 00 00"),
        );
        check_payload(
            &MoveMessagesOk { move_id: MoveId(3) },
            &hex("03 00 00 00 00 00 00 00"),
        );
        check_payload(
            &MoveStatus {
                move_id: MoveId(0x0102),
            },
            &hex("02 01 00 00 00 00 00 00"),
        );
    }

    #[test]
    fn move_status_ok_in_each_state() {
        check_payload(
            &MoveStatusOk {
                state: MoveState::Running,
                moved: 2,
                requested: 10,
            },
            &hex("00  02 00 00 00 00 00 00 00  0a 00 00 00 00 00 00 00"),
        );
        check_payload(
            &MoveStatusOk {
                state: MoveState::Done,
                moved: 10,
                requested: 10,
            },
            &hex("01  0a 00 00 00 00 00 00 00  0a 00 00 00 00 00 00 00"),
        );
        check_payload(
            &MoveStatusOk {
                state: MoveState::Failed {
                    code: ErrorCode::QueueFull,
                    message: "full".into(),
                },
                moved: 1,
                requested: 10,
            },
            &hex("02  01 00 00 00 00 00 00 00  0a 00 00 00 00 00 00 00
                  2f 01  04 00 66 75 6c 6c"),
        );
    }

    #[test]
    fn an_unknown_move_state_is_refused() {
        let bad = hex("03  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00");
        assert_eq!(
            MoveStatusOk::decode_exact(&Bytes::from(bad)),
            Err(WireError::InvalidValue {
                what: "move state",
                value: 3
            })
        );
    }
}
