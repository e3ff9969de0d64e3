//! Replies: building and encoding the relay's `Response` frames, and the one mapping from
//! store errors to wire error replies. Used by the connection layer ([`crate::session`]) and
//! the post pipeline ([`crate::pipeline`]); depends on neither.

use bytes::Bytes;
use cove_wire::{ErrorCode, ErrorReply, Reply, RequestId, ServerFrame};
use tracing::error;

use crate::store::StoreError;

/// A response frame.
pub(crate) fn response(id: RequestId, result: Result<Reply, ErrorReply>) -> ServerFrame {
    ServerFrame::Response { id, result }
}

/// Encodes a frame into shared bytes; `None` (logged) if it cannot be encoded.
pub(crate) fn encode_frame(frame: &ServerFrame) -> Option<Bytes> {
    match cove_wire::encode(frame) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(e) => {
            error!(error = %e, "cannot encode a server frame");
            None
        }
    }
}

/// The generic error reply for a store error; backend details go to the log only.
pub(crate) fn store_error_reply(e: &StoreError) -> ErrorReply {
    let (code, message) = match e {
        StoreError::UserTaken => (ErrorCode::UserTaken, "user name taken"),
        StoreError::UnknownUser => (ErrorCode::UnknownUser, "unknown user"),
        StoreError::UnknownDevice => (ErrorCode::UnknownDevice, "unknown device"),
        StoreError::TooManyDevices => (ErrorCode::TooManyDevices, "too many devices"),
        StoreError::StockFull => (ErrorCode::StockFull, "key package stock full"),
        StoreError::UnknownGroup => (ErrorCode::UnknownGroup, "unknown group"),
        StoreError::GroupExists => (ErrorCode::GroupExists, "group exists"),
        StoreError::NotMember => (ErrorCode::NotMember, "not a member of the group"),
        StoreError::StaleEpoch { current } => {
            let mut reply = ErrorReply::new(ErrorCode::StaleEpoch, "stale epoch");
            reply.current_epoch = Some(*current);
            return reply;
        }
        StoreError::Invalid(why) => (ErrorCode::InvalidRequest, *why),
        // Answered `Posted` by the pipeline; here only if another path ever reports it.
        StoreError::Duplicate { .. } => (ErrorCode::InvalidRequest, "duplicate post"),
        StoreError::ListChanged { .. } => (
            ErrorCode::InvalidRequest,
            "device list refused: the stored list changed meanwhile; fetch it and publish again",
        ),
        StoreError::BackupFull => (
            ErrorCode::BackupFull,
            "the history backup index is full (segments or bytes)",
        ),
        StoreError::Backend(details) => {
            error!(error = %details, "store failed");
            (ErrorCode::Internal, "internal error")
        }
    };
    ErrorReply::new(code, message)
}

/// An `InvalidRequest` reply saying `message`.
pub(crate) fn invalid(message: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidRequest, message)
}
