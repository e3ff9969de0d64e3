//! The encrypted history backup, the shell's half (the format and the decisions are
//! `cove_core::backup`'s): upload the rows stored since the last backup as sealed segments
//! and index them on the relay (`cove backup`, and after `sync`/`listen` rounds), and
//! restore a user's whole backup on a new device (`cove restore-history`, `cove login`).
//!
//! ```text
//! backup:  plan (core, rows after the marks) -> seal -> upload blob -> AppendBackupSegment
//!          -> commit the marks (core)            (a failed step leaves the marks: retried)
//! restore: ListBackupSegments (pages) -> per entry: order check -> download blob -> open
//!          -> import (core: dedup by message id, group names)   (refused ones are counted)
//! ```
//!
//! A device without the account secrets (no password account) makes no backup and cannot
//! restore one.

use cove_core::backup::{
    self, BackupError as FormatError, BackupKey, MAX_SEALED_SEGMENT, OrderCheck, SegmentEntry,
};
use cove_core::cove_store::Store;
use cove_wire::{BackupSegment, ErrorReply, NewBackupSegment, Payload, Reply, Request, UserName};

use crate::device::{Device, DeviceError};
use crate::session::now_ms;
use crate::transfer::{BlobClient, TransferError};

/// Rows stored since the last backup after which a `sync` or `listen` round backs up
/// (fewer wait for the next round or for `cove backup`).
pub const BACKUP_BATCH: usize = 100;

/// Segments a restore downloads and opens ahead of the one it imports.
const PREFETCH: usize = 4;

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The device has no account secrets (its user has no password account here).
    #[error("this device has no account secrets: history backup needs a password account")]
    NoAccount,
    /// The device failed (not registered, the relay did not answer, the database).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Uploading or downloading a segment failed.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// The relay refused a backup request.
    #[error("the relay refused: {0}")]
    Refused(ErrorReply),
    /// The relay answered something else than the request's reply.
    #[error("unexpected answer from the relay")]
    Unexpected,
    /// A segment could not be sealed (a bug: the plan keeps segments within bounds).
    #[error("sealing a segment failed: {0}")]
    Seal(FormatError),
}

impl From<cove_core::cove_store::StoreError> for BackupError {
    fn from(e: cove_core::cove_store::StoreError) -> Self {
        BackupError::Device(e.into())
    }
}

/// What a backup uploaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupReport {
    /// Segments uploaded and indexed.
    pub segments: usize,
    /// Rows in them.
    pub messages: usize,
    /// Sealed bytes uploaded.
    pub bytes: u64,
}

/// A segment the restore refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedSegment {
    /// Its position in the index.
    pub position: u64,
    /// Why (tampered, another user's, renumbered, out of order, not downloadable).
    pub reason: String,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Segments opened and imported.
    pub segments: usize,
    /// Rows stored (not here before).
    pub messages: usize,
    /// Rows skipped (already here).
    pub duplicates: usize,
    /// Groups created or named from the backup.
    pub groups_named: usize,
    /// Segments refused (never imported).
    pub refused: Vec<RefusedSegment>,
}

/// The way a backup or a restore reaches the relay: the device, and a request/reply path on
/// its session. A [`Device`] that owns its event stream reads the replies from it; the
/// daemon, whose event pump owns the stream, routes the replies of these requests here.
#[allow(async_fn_in_trait)]
pub trait RelayLink {
    /// The device (its session, its relay, its blob access).
    fn device(&self) -> &Device;
    /// Sends `body` on the device's session and returns the relay's answer.
    async fn relay_request(
        &mut self,
        body: Request,
    ) -> Result<Result<Reply, ErrorReply>, DeviceError>;
}

impl RelayLink for Device {
    fn device(&self) -> &Device {
        self
    }

    async fn relay_request(
        &mut self,
        body: Request,
    ) -> Result<Result<Reply, ErrorReply>, DeviceError> {
        Device::relay_request(self, body).await
    }
}

/// Backs up the rows stored since the last backup (see the module doc): `NoAccount` on a
/// device without account secrets. Segments go one by one; each one's marks are recorded
/// once the relay indexed it, so a failure leaves the rest for the next backup.
pub async fn backup(link: &mut impl RelayLink) -> Result<BackupReport, BackupError> {
    let (user, key) = secrets(link.device()).await?;
    let me = link
        .device()
        .session()
        .call(|c| c.device())
        .await
        .map_err(DeviceError::from)?
        .ok_or(DeviceError::NotRegistered)?;
    let planner = user.clone();
    let planned = link
        .device()
        .session()
        .call(move |c| backup::plan(c.store(), &planner, me))
        .await
        .map_err(DeviceError::from)??;
    let mut report = BackupReport::default();
    if planned.is_empty() {
        return Ok(report);
    }
    let client = BlobClient::for_device(link.device()).await?;
    for p in planned {
        let sealed =
            backup::seal(&key, &p.segment, &mut rand::rngs::OsRng).map_err(BackupError::Seal)?;
        let size = sealed.len() as u64;
        let blob = client.upload_bytes(sealed).await?;
        let entry = SegmentEntry {
            version: backup::BACKUP_VERSION,
            id: p.segment.id,
        };
        let body = Request::AppendBackupSegment {
            user: user.clone(),
            segment: NewBackupSegment {
                blob,
                size,
                entry: Payload(entry.encode()),
            },
        };
        match link.relay_request(body).await? {
            Ok(Reply::BackupSegmentAppended { .. }) => {}
            Ok(_) => return Err(BackupError::Unexpected),
            Err(e) => return Err(BackupError::Refused(e)),
        }
        let marks = p.marks;
        link.device()
            .session()
            .call(move |c| backup::commit_marks(c.store(), &marks))
            .await
            .map_err(DeviceError::from)??;
        report.segments += 1;
        report.messages += p.segment.messages.len();
        report.bytes += size;
    }
    Ok(report)
}

/// Backs up when at least `threshold` rows wait (after a `sync`/`listen` round; `1` at
/// close): `None` when nothing was due or the device has no account secrets.
pub async fn backup_if_due(
    link: &mut impl RelayLink,
    threshold: usize,
) -> Result<Option<BackupReport>, BackupError> {
    let due = link
        .device()
        .session()
        .call(
            |c| -> Result<Option<usize>, cove_core::cove_store::StoreError> {
                if c.store().account_secrets()?.is_none() {
                    return Ok(None);
                }
                Ok(Some(backup::pending(c.store())?))
            },
        )
        .await
        .map_err(DeviceError::from)??;
    match due {
        Some(n) if n >= threshold.max(1) => Ok(Some(backup(link).await?)),
        _ => Ok(None),
    }
}

/// Restores the user's backup on this device (see the module doc): every indexed segment
/// that opens as this user's is imported; the others are reported in
/// [`RestoreReport::refused`] and never imported.
pub async fn restore_history(link: &mut impl RelayLink) -> Result<RestoreReport, BackupError> {
    let (user, key) = secrets(link.device()).await?;
    let client = BlobClient::for_device(link.device()).await?;
    let mut report = RestoreReport::default();
    let mut order = OrderCheck::default();
    let mut after = 0u64;
    loop {
        let body = Request::ListBackupSegments {
            user: user.clone(),
            after,
        };
        let (segments, more) = match link.relay_request(body).await? {
            Ok(Reply::BackupSegments { segments, more }) => (segments.0, more),
            Ok(_) => return Err(BackupError::Unexpected),
            Err(e) => return Err(BackupError::Refused(e)),
        };
        let Some(last) = segments.last().map(|s| s.position) else {
            break;
        };
        if last <= after {
            // Positions must grow; a relay that pages backwards is not followed.
            return Err(BackupError::Unexpected);
        }
        after = last;
        // Downloads and opens run ahead of the imports (up to `PREFETCH` segments), so the
        // network and the decryption overlap the database writes; the order check runs in
        // index order before a download starts.
        let mut ahead = std::collections::VecDeque::new();
        let mut listed = segments.into_iter();
        loop {
            while ahead.len() < PREFETCH {
                let Some(segment) = listed.next() else { break };
                let position = segment.position;
                let checked = SegmentEntry::decode(segment.entry.as_bytes())
                    .and_then(|entry| order.accept(&entry).map(|()| entry));
                let (client, key, user) = (client.clone(), key.clone(), user.clone());
                ahead.push_back((
                    position,
                    tokio::spawn(async move {
                        let entry = checked.map_err(|e| e.to_string())?;
                        fetch_and_open(&client, &key, &user, &entry, segment).await
                    }),
                ));
            }
            let Some((position, task)) = ahead.pop_front() else {
                break;
            };
            let opened = task
                .await
                .unwrap_or_else(|_| Err("the download task failed".to_owned()));
            match opened {
                Ok(segment) => {
                    let imported = link
                        .device()
                        .session()
                        .call(move |c| c.import_backup_segment(now_ms(), segment))
                        .await
                        .map_err(DeviceError::from)??;
                    report.segments += 1;
                    report.messages += imported.messages;
                    report.duplicates += imported.duplicates;
                    report.groups_named += imported.groups_named;
                }
                Err(reason) => {
                    tracing::warn!(position, %reason, "history-backup segment refused");
                    report.refused.push(RefusedSegment { position, reason });
                }
            }
        }
        if !more {
            break;
        }
    }
    Ok(report)
}

/// Downloads the blob of a checked index entry and opens it; the reason on refusal.
async fn fetch_and_open(
    client: &BlobClient,
    key: &BackupKey,
    user: &UserName,
    entry: &SegmentEntry,
    listed: BackupSegment,
) -> Result<backup::Segment, String> {
    let sealed = client
        .download_bytes(listed.blob, MAX_SEALED_SEGMENT as u64)
        .await
        .map_err(|e| e.to_string())?;
    backup::open(key, user, entry, &sealed).map_err(|e| e.to_string())
}

/// The user and the backup key, from the device's account secrets.
async fn secrets(device: &Device) -> Result<(UserName, BackupKey), BackupError> {
    let secrets = device
        .session()
        .call(|c| c.store().account_secrets())
        .await
        .map_err(DeviceError::from)??
        .ok_or(BackupError::NoAccount)?;
    Ok((secrets.user, BackupKey::new(secrets.backup_key)))
}
