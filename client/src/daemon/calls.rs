//! Calls through the daemon: incoming calls ring every subscribed client; any of them can
//! answer or decline; `call` places one.

use serde_json::{Value, json};

use cove_core::ReceivedContent;
use cove_wire::{ErrorReply, Reply, RequestId};

use super::rpc::RpcError;
use super::server::Daemon;

/// The daemon's calls.
#[derive(Default)]
pub struct CallManager {}

impl CallManager {
    pub(super) async fn on_content(&self, _daemon: &Daemon, _received: ReceivedContent) {}
    pub(super) fn on_reply(&self, _id: RequestId, _result: Result<Reply, ErrorReply>) {}
    pub(super) async fn on_other(&self, _daemon: &Daemon) {}
    pub(super) async fn hang_up_all(&self, _daemon: &Daemon) {}
    pub(super) fn list(&self) -> Value {
        json!([])
    }
    pub(super) async fn call(&self, _daemon: &Daemon, _params: &Value) -> Result<Value, RpcError> {
        Err(RpcError::cove("Unsupported", "not yet"))
    }
    pub(super) async fn answer(
        &self,
        _daemon: &Daemon,
        _params: &Value,
    ) -> Result<Value, RpcError> {
        Err(RpcError::cove("Unsupported", "not yet"))
    }
    pub(super) async fn decline(
        &self,
        _daemon: &Daemon,
        _params: &Value,
    ) -> Result<Value, RpcError> {
        Err(RpcError::cove("Unsupported", "not yet"))
    }
    pub(super) async fn hangup(
        &self,
        _daemon: &Daemon,
        _params: &Value,
    ) -> Result<Value, RpcError> {
        Err(RpcError::cove("Unsupported", "not yet"))
    }
}
