//! The drive commands over a [`crate::Device`]: `cove drive ls/put/get/mkdir/mv/rm/restore/
//! empty-trash/versions/share/unshare/shared/link/usage`. The methods below are the seam the
//! CLI and the sync engine (`sync`) build on; the commands are in `commands`.
//!
//! How a device gets a drive's tree: it replays the drive group's stored operations
//! ([`cove_core::Client::drive_ops`]) into a [`Tree`], starting from the newest
//! [`DriveOp::Snapshot`] posted by the drive's owner (the user named in the group name) when
//! there is one, else from the log's start (its `Init`). A device with neither (it joined
//! after the tree began) posts a [`DriveOp::SnapshotRequest`] and gets
//! [`DriveError::NoSnapshot`]; any device of the owner that opens the drive later answers an
//! unanswered request with a snapshot.
//!
//! The personal drive is the group `drive/<user>/home-<random tag>` (see
//! [`cove_core::drive::personal_drive_name`]; its members are only the user's devices), created with its `Init` by the user's first
//! drive command on any device; its other devices are added by the group creation. If two
//! devices raced and created two, the one with the smaller group id is the drive.

use cove_core::drive::op::SealedBlob;
use cove_core::drive::seal::SNAPSHOT_AAD;
use cove_core::drive::{DRIVE_GROUP_PREFIX, DriveOp, Tree, is_drive_group};
use cove_core::{Content, GroupInfo};
use cove_wire::{GroupId, UserName};

use super::DriveError;
use crate::device::Device;
use crate::session;
use crate::transfer::{BlobClient, Retention};

/// Largest snapshot blob a device fetches (a tree state of about a million entries).
pub const MAX_SNAPSHOT_BYTES: u64 = 512 * 1024 * 1024;

/// A drive as this device sees it.
#[derive(Clone, Debug)]
pub struct DriveHandle {
    /// Its MLS group.
    pub group: GroupId,
    /// The group's name (`drive/...`).
    pub group_name: String,
    /// Its tree, up to the last operation this device has (see [`Device::drive_refresh`]).
    pub tree: Tree,
}

/// A device-level error as a drive error.
pub(super) fn de<E>(e: E) -> DriveError
where
    crate::device::DeviceError: From<E>,
{
    DriveError::Device(crate::device::DeviceError::from(e))
}

/// The owner a drive group's name names: `drive/<owner>` or `drive/<owner>/<tag>`.
pub(super) fn owner_of(group_name: &str) -> Option<UserName> {
    let rest = group_name.strip_prefix(DRIVE_GROUP_PREFIX)?;
    let owner = rest.split('/').next()?;
    UserName::new(owner).ok()
}

/// The tree replayed from `ops` (the whole log of a drive, in order) starting at `start`
/// (a snapshot's decoded tree) or empty.
fn replay(start: Option<Tree>, ops: &[(u64, UserName, DriveOp)]) -> Tree {
    let mut tree = start.unwrap_or_default();
    for (seq, author, op) in ops {
        // Refused operations change nothing, on every member alike; stale ones were in the
        // snapshot.
        let _ = tree.apply(*seq, author, op);
    }
    tree
}

/// The newest snapshot posted by `owner` among `ops`: its log position and its blob.
fn newest_snapshot<'a>(
    ops: &'a [(u64, UserName, DriveOp)],
    owner: Option<&UserName>,
) -> Option<(u64, &'a SealedBlob)> {
    ops.iter().rev().find_map(|(seq, author, op)| match op {
        DriveOp::Snapshot { blob, .. } if Some(author) == owner => Some((*seq, blob)),
        _ => None,
    })
}

/// Whether a snapshot request in `ops` (a drive's whole log) came after its newest snapshot.
fn unanswered_request(ops: &[(u64, UserName, DriveOp)]) -> bool {
    let last_snapshot = ops
        .iter()
        .rev()
        .find_map(|(seq, _, op)| matches!(op, DriveOp::Snapshot { .. }).then_some(*seq))
        .unwrap_or(0);
    ops.iter()
        .any(|(seq, _, op)| *seq > last_snapshot && matches!(op, DriveOp::SnapshotRequest))
}

impl Device {
    /// Opens a drive: `""` is this user's personal drive (created, with its `Init`, when the
    /// user has none yet), `OWNER:FOLDER` a shared folder by its owner and display name.
    /// Receives what is pending first. [`DriveError::NoSnapshot`] when this device joined
    /// after the tree began and no snapshot is here yet (a request for one is posted).
    pub async fn drive_open(&self, drive: &str) -> Result<DriveHandle, DriveError> {
        self.settle_shared().await.map_err(de)?;
        if drive.is_empty() {
            return self.personal_drive().await;
        }
        let Some((owner, folder)) = drive.split_once(':') else {
            return Err(DriveError::Invalid(format!(
                "{drive:?}: a shared folder is OWNER:FOLDER"
            )));
        };
        let owner = UserName::new(owner)
            .map_err(|_| DriveError::Invalid(format!("{owner:?} is not a user name")))?;
        let prefix = format!("{DRIVE_GROUP_PREFIX}{owner}/");
        let mut found = Vec::new();
        let mut waiting = false;
        for g in self.drive_groups().await? {
            if !g.name.starts_with(&prefix) {
                continue;
            }
            match self.drive_handle_asked(g.id, g.name.clone()).await {
                Ok(h) if h.0.tree.info().is_some_and(|(n, _)| n == folder) => found.push(h),
                Ok(_) => {}
                Err(DriveError::NoSnapshot(_)) => waiting = true,
                // Not a drive of the owner its name names: not a candidate.
                Err(DriveError::NoDrive(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match found.len() {
            1 => {
                let (handle, asked) = found.remove(0);
                self.answer_snapshot_requests(&handle, asked).await?;
                Ok(handle)
            }
            0 if waiting => Err(DriveError::NoSnapshot(drive.to_owned())),
            0 => Err(DriveError::NoDrive(format!(
                "no shared folder {drive:?} here (see `cove drive shared`)"
            ))),
            _ => Err(DriveError::NoDrive(format!(
                "several shared folders are {drive:?}: {}",
                found
                    .iter()
                    .map(|(h, _)| h.group.to_hex())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Opens the drive of group `group` (a shared folder a `Mount` node points at, or any
    /// drive group of this device) and answers snapshot requests like
    /// [`Device::drive_open`].
    pub async fn drive_open_group(&self, group: GroupId) -> Result<DriveHandle, DriveError> {
        let info = self
            .drive_groups()
            .await?
            .into_iter()
            .find(|g| g.id == group)
            .ok_or_else(|| {
                DriveError::NoDrive(format!(
                    "this device is not in the shared folder {}",
                    group.to_hex()
                ))
            })?;
        let (handle, asked) = self.drive_handle_asked(group, info.name).await?;
        self.answer_snapshot_requests(&handle, asked).await?;
        Ok(handle)
    }

    /// Receives what is pending and applies the drive's new operations to `handle.tree`.
    pub async fn drive_refresh(&self, handle: &mut DriveHandle) -> Result<(), DriveError> {
        self.settle_shared().await.map_err(de)?;
        let (group, after) = (handle.group, handle.tree.applied());
        let ops = self
            .session()
            .call(move |c| c.drive_ops(&group, after))
            .await
            .map_err(de)?
            .map_err(de)?;
        for (seq, author, op) in &ops {
            let _ = handle.tree.apply(*seq, author, op);
        }
        Ok(())
    }

    /// Posts operations to a drive, in order, and waits until the relay stored them (they
    /// are then in this device's log, so a refresh applies them). Refused with
    /// [`DriveError::ReadOnly`] when this user may not write.
    pub async fn drive_post(&self, group: GroupId, ops: Vec<DriveOp>) -> Result<(), DriveError> {
        let needs_write = ops.iter().any(|op| {
            !matches!(
                op,
                DriveOp::SnapshotRequest | DriveOp::Snapshot { .. } | DriveOp::Init { .. }
            )
        });
        if needs_write {
            let name = self.drive_group_name(group).await?;
            let handle = self.drive_handle(group, name).await?;
            return self.drive_post_to(&handle, ops).await;
        }
        self.drive_post_unchecked(group, ops).await
    }

    /// [`Device::drive_post`] to the drive of `handle`, checking write access against its
    /// tree rather than the log read again (the sync engine holds a refreshed handle per
    /// pass; a change of access since then is refused by every member's tree anyway).
    pub async fn drive_post_to(
        &self,
        handle: &DriveHandle,
        ops: Vec<DriveOp>,
    ) -> Result<(), DriveError> {
        if !handle.tree.can_write(self.user()) {
            return Err(DriveError::ReadOnly);
        }
        self.drive_post_unchecked(handle.group, ops).await
    }

    /// A blob client for drive contents: signed as this device, blobs kept until deleted.
    pub async fn drive_blobs(&self) -> Result<BlobClient, DriveError> {
        Ok(BlobClient::for_device(self)
            .await?
            .with_retention(Retention::Keep))
    }

    /// This device's name as drive versions and conflict copies show it.
    pub fn drive_device_name(&self) -> String {
        match self.device_id() {
            Some(id) => format!("{} device {}", self.user(), id.0),
            None => format!("{} device", self.user()),
        }
    }

    // ----------------------------------------------------------------------------------

    /// The drive groups this device is an active member of (chat listings leave them out).
    pub async fn drive_groups(&self) -> Result<Vec<GroupInfo>, DriveError> {
        let groups = self.session().call(|c| c.groups()).await.map_err(de)?;
        Ok(groups
            .into_iter()
            .filter(|g| g.active && is_drive_group(&g.name))
            .collect())
    }

    async fn drive_group_name(&self, group: GroupId) -> Result<String, DriveError> {
        self.drive_groups()
            .await?
            .into_iter()
            .find(|g| g.id == group)
            .map(|g| g.name)
            .ok_or_else(|| DriveError::NoDrive(format!("no drive {}", group.to_hex())))
    }

    /// Posts without the write check (snapshots and requests, which read-only members
    /// and joiners post too).
    pub(super) async fn drive_post_unchecked(
        &self,
        group: GroupId,
        ops: Vec<DriveOp>,
    ) -> Result<(), DriveError> {
        self.reachable().await.map_err(de)?;
        self.caught_up_for_sending().await;
        let send = |op: DriveOp| {
            self.session().op(self.timeout(), move |c| {
                c.send_content(session::now_ms(), group, Content::Drive(Box::new(op)))
            })
        };
        // File and folder changes go in batches (one message for up to ~48 KiB of them).
        // Versions of files (a sync's or a put's) do not depend on each other: all their
        // messages are queued at once and waited for together. Anything else goes one
        // message at a time: the outbox posts in order, but a post it must reseal (the
        // epoch moved) can go after a later one, and a folder must exist before what goes
        // in it.
        let independent = ops
            .iter()
            .all(|op| matches!(op, DriveOp::PutVersion { .. }));
        let messages = cove_core::drive::op::pack(ops);
        if independent {
            for sent in futures_util::future::join_all(messages.into_iter().map(send)).await {
                sent.map_err(de)?.map_err(de)?;
            }
        } else {
            for op in messages {
                send(op).await.map_err(de)?.map_err(de)?;
            }
        }
        Ok(())
    }

    /// The tree of drive `group` from this device's log (see the module documentation);
    /// [`DriveError::NoSnapshot`] (after posting a request, once) when there is none.
    pub(super) async fn drive_handle(
        &self,
        group: GroupId,
        group_name: String,
    ) -> Result<DriveHandle, DriveError> {
        Ok(self.drive_handle_asked(group, group_name).await?.0)
    }

    /// [`Device::drive_handle`], and whether a snapshot request in the log is unanswered
    /// (read from the same log, for [`Device::answer_snapshot_requests`]).
    async fn drive_handle_asked(
        &self,
        group: GroupId,
        group_name: String,
    ) -> Result<(DriveHandle, bool), DriveError> {
        let ops = self
            .session()
            .call(move |c| c.drive_ops(&group, 0))
            .await
            .map_err(de)?
            .map_err(de)?;
        let owner = owner_of(&group_name);
        let start = match newest_snapshot(&ops, owner.as_ref()) {
            Some((_, sealed)) => {
                let blobs = self.drive_blobs().await?;
                let bytes =
                    super::content::get_sealed(&blobs, sealed, SNAPSHOT_AAD, MAX_SNAPSHOT_BYTES)
                        .await?;
                Some(Tree::decode_state(&bytes)?)
            }
            None => None,
        };
        let has_init = ops
            .iter()
            .any(|(_, _, op)| matches!(op, DriveOp::Init { .. }));
        if start.is_none() && !has_init {
            let me = self.user().clone();
            let asked = ops
                .iter()
                .any(|(_, a, op)| *a == me && matches!(op, DriveOp::SnapshotRequest));
            if !asked {
                self.drive_post_unchecked(group, vec![DriveOp::SnapshotRequest])
                    .await?;
            }
            return Err(DriveError::NoSnapshot(group_name));
        }
        let tree = replay(start, &ops);
        // The tree's owner (its `Init`'s author, or what the owner's snapshot says) must be
        // the user the group's name names: a member who made a group named after another
        // user's drive cannot pass it off as that user's.
        if tree.info().map(|(_, o)| o) != owner.as_ref() {
            return Err(DriveError::NoDrive(format!(
                "{group_name} is not a drive of its named owner (refused)"
            )));
        }
        let handle = DriveHandle {
            group,
            group_name,
            tree,
        };
        Ok((handle, unanswered_request(&ops)))
    }

    /// Answers a snapshot request posted after the newest snapshot (`asked`, from
    /// [`Device::drive_handle_asked`]), when this device's user owns the drive (only the
    /// owner's snapshots are trusted).
    async fn answer_snapshot_requests(
        &self,
        handle: &DriveHandle,
        asked: bool,
    ) -> Result<(), DriveError> {
        if asked && owner_of(&handle.group_name).as_ref() == Some(self.user()) {
            self.drive_post_snapshot(handle).await?;
        }
        Ok(())
    }

    /// Posts a snapshot of `handle.tree` (covering what it applied).
    pub(super) async fn drive_post_snapshot(&self, handle: &DriveHandle) -> Result<(), DriveError> {
        let blobs = self.drive_blobs().await?;
        let sealed =
            super::content::put_sealed(&blobs, SNAPSHOT_AAD, &handle.tree.encode_state()).await?;
        self.drive_post_unchecked(
            handle.group,
            vec![DriveOp::Snapshot {
                covers: handle.tree.applied(),
                blob: sealed,
            }],
        )
        .await
    }

    /// Adds this user's devices that a drive group lacks (a device linked since) to every
    /// drive group this device is in, and, in the drives this user owns, posts a snapshot
    /// after the add so that the new device has the tree (it cannot read the operations
    /// from before its add). In shared folders of other owners, the new device asks for a
    /// snapshot itself. Failures are per drive and reported as the number of drives not
    /// done. Called by [`Device::link`].
    pub async fn drive_welcome_own_devices(&self) -> usize {
        let Ok(groups) = self.drive_groups().await else {
            return 0;
        };
        let mut failed = 0;
        for g in groups {
            let (hex, me) = (g.id.to_hex(), vec![self.user().clone()]);
            let added = self
                .session()
                .op(self.timeout(), move |c| {
                    c.add_users(session::now_ms(), &hex, &me)
                })
                .await;
            // "Nothing to add" (the core added them already on seeing the user's list
            // grow) is not a failure here: the snapshot below is what the new device needs.
            let added = matches!(added, Ok(Ok(())));
            if owner_of(&g.name).as_ref() != Some(self.user()) {
                failed += usize::from(!added);
                continue;
            }
            let posted = match self.drive_handle(g.id, g.name).await {
                Ok(mut h) => match self.drive_refresh(&mut h).await {
                    Ok(()) => self.drive_post_snapshot(&h).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if posted.is_err() || !added {
                failed += 1;
            }
        }
        failed
    }

    /// This user's personal drive, created with its `Init` when there is none.
    async fn personal_drive(&self) -> Result<DriveHandle, DriveError> {
        let group = match self.personal_drive_group().await? {
            Some(g) => g,
            None => {
                self.create_drive(
                    |tag| cove_core::drive::personal_drive_name(self.user(), tag),
                    "Drive",
                )
                .await?
            }
        };
        let (handle, asked) = self.drive_handle_asked(group.id, group.name).await?;
        self.answer_snapshot_requests(&handle, asked).await?;
        Ok(handle)
    }

    /// Creates a drive group named `name(random tag)` (this user's other devices are added
    /// with it) and posts its `Init` with display name `display`, this user the owner.
    pub(super) async fn create_drive(
        &self,
        name: impl FnOnce(&str) -> String,
        display: &str,
    ) -> Result<GroupInfo, DriveError> {
        self.reachable().await.map_err(de)?;
        let mut tag = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut tag);
        let name = name(&hex::encode(tag));
        let owned = name.clone();
        self.session()
            .op(self.timeout(), move |c| {
                c.create_drive_group(session::now_ms(), &owned)
            })
            .await
            .map_err(de)?
            .map_err(de)?;
        let group = self
            .drive_groups()
            .await?
            .into_iter()
            .find(|g| g.name == name)
            .ok_or_else(|| DriveError::NoDrive(format!("the drive group {name} was not made")))?;
        self.drive_post_unchecked(
            group.id,
            vec![DriveOp::Init {
                name: display.to_owned(),
                owner: self.user().clone(),
            }],
        )
        .await?;
        Ok(group)
    }

    /// The personal drive among this device's groups: a personal-drive name of this user
    /// and no other user in it (a hostile user can make a group of such a name and add us;
    /// it is never ours); of several (two devices raced), the smallest group id.
    async fn personal_drive_group(&self) -> Result<Option<GroupInfo>, DriveError> {
        let me = self.user().clone();
        Ok(self
            .drive_groups()
            .await?
            .into_iter()
            .filter(|g| {
                cove_core::drive::is_personal_drive(&g.name, &me)
                    && g.members.iter().all(|m| *m == me)
            })
            .min_by_key(|g| g.id.0))
    }
}
