//! Closing a device.

use std::time::Duration;

use super::handle::Device;
use crate::session::LinkState;

impl Device {
    /// Waits (up to the timeout) until the core has processed every delivery the relay
    /// pushed so far, then closes the connection and the database.
    pub async fn close(mut self) {
        if let Some(m) = self.returned.take() {
            let _ = self.mark_shown(&m).await;
        }
        if matches!(self.session.link(), LinkState::CaughtUp) {
            let _ = self.session.settled(Duration::from_secs(5)).await;
        }
        let _ = self.session.stop().await;
    }

    /// Closes without waiting for anything (simulates a device going away abruptly,
    /// e.g. in tests; the database stays consistent because every step is transactional).
    pub async fn close_now(self) {
        let _ = self.session.stop().await;
    }
}
