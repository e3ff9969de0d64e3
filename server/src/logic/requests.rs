//! The requests of an authenticated device that are answered from the store.

use cove_wire::limits::{
    MAX_FETCH_ENTRIES, MAX_FRAME_BYTES, MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD,
    MAX_VEC_ITEMS,
};
use cove_wire::{
    BoundedVec, DeviceId, EntryKind, ErrorCode, ErrorReply, GroupEntry, OwnDevice, Payload, Reply,
    Request,
};
use tracing::error;

use crate::reply::{invalid, store_error_reply};
use crate::store::{RelayStore, StoreError};

/// Room left in a frame for everything but the payload of a stored entry.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 1024;

/// Answers one request of `device` from the store: the directory, device lists, KeyPackages, group
/// creation, fetch, acks, the group list, ping. Posts, authentication and TURN credentials
/// are routed elsewhere ([`super::Connection::route`]) and answered `Internal` here. A
/// `Fetch` reads at most `read_bytes` of payload from the store (at least one entry).
pub fn request(
    store: &dyn RelayStore,
    handshakes: &super::Handshakes,
    device: DeviceId,
    body: Request,
    read_bytes: usize,
) -> Result<Reply, ErrorReply> {
    let stored = |e: StoreError| store_error_reply(&e);
    match body {
        Request::ListDevices { user } => {
            let mut devices = store.devices(&user).map_err(stored)?;
            // Devices the user revoked in the signed list are not in the directory.
            let list = match store.device_list(&user) {
                Ok(list) => list,
                Err(crate::store::StoreError::UnknownUser) => Vec::new(),
                Err(e) => return Err(stored(e)),
            };
            devices.retain(|d| !cove_identity::revokes(&list, &d.key));
            Ok(Reply::Devices {
                user,
                devices: BoundedVec(devices),
            })
        }
        Request::ListOwnDevices => own_devices(store, device),
        Request::UploadKeyPackages {
            key_packages,
            last_resort,
        } => {
            let too_large = |p: &Payload| p.len() > MAX_KEY_PACKAGE_BYTES;
            if key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
                return Err(invalid("too many key packages in one upload"));
            }
            if key_packages
                .iter()
                .chain(last_resort.as_ref())
                .any(too_large)
            {
                return Err(ErrorReply::new(
                    ErrorCode::TooLarge,
                    "key package too large",
                ));
            }
            let kps: Vec<Vec<u8>> = key_packages.into_iter().map(|p| p.into_vec()).collect();
            let last_resort = last_resort.map(|p| p.into_vec());
            let stock = store
                .upload_key_packages(device, kps, last_resort)
                .map_err(stored)?;
            Ok(Reply::KeyPackageStock {
                remaining: stock.remaining,
                has_last_resort: stock.has_last_resort,
            })
        }
        Request::ClaimKeyPackages { user } => {
            let key_packages = store.claim_key_packages(&user).map_err(stored)?;
            Ok(Reply::KeyPackages {
                user,
                key_packages: BoundedVec(key_packages),
            })
        }
        Request::KeyPackageStock => {
            let stock = store.key_package_stock(device).map_err(stored)?;
            Ok(Reply::KeyPackageStock {
                remaining: stock.remaining,
                has_last_resort: stock.has_last_resort,
            })
        }
        Request::CreateGroup {
            group,
            group_info,
            tree,
        } => {
            // The id first, so a taken id answers GroupExists whatever the state.
            if store.public_state(group).is_ok() {
                return Err(stored(StoreError::GroupExists));
            }
            let state = handshakes
                .check_create(store, group, device, group_info.as_bytes(), tree.as_bytes())
                .map_err(|e| e.reply())?;
            store
                .create_group_with_state(group, device, state)
                .map_err(stored)?;
            Ok(Reply::GroupCreated)
        }
        Request::FetchGroupState { group } => {
            // A member, or a device of a user with a member device in the group: the
            // user's new device joins from this state by an external commit.
            if !store.is_member(group, device).map_err(stored)?
                && !user_has_member(store, group, device).map_err(stored)?
            {
                return Err(stored(StoreError::NotMember));
            }
            let state = store
                .public_state(group)
                .map_err(stored)?
                .ok_or_else(|| invalid("the relay keeps no public MLS state for this group"))?;
            if state.group_info.len() + state.tree.len() + ENTRY_OVERHEAD_BYTES > MAX_FRAME_BYTES {
                return Err(ErrorReply::new(
                    ErrorCode::TooLarge,
                    "the group's state does not fit a frame",
                ));
            }
            Ok(Reply::GroupState {
                group,
                group_info: Payload(state.group_info),
                tree: Payload(state.tree),
            })
        }
        Request::Fetch {
            group,
            after,
            limit,
        } => {
            // A member reads from the commit that added it on, never earlier entries.
            let entries = store
                .fetch(
                    group,
                    device,
                    after,
                    limit.min(MAX_FETCH_ENTRIES),
                    read_bytes,
                )
                .map_err(stored)?;
            Ok(Reply::Entries {
                entries: BoundedVec(fit_in_frame(entries)),
            })
        }
        Request::Ack { stream, seq } | Request::QuietAck { stream, seq } => {
            acked(store.ack(device, stream, seq))
        }
        Request::LeaveGroup { group } => {
            store.leave_group(group, device).map_err(stored)?;
            Ok(Reply::Left)
        }
        Request::ListGroups => {
            let mut groups = store.groups_of(device).map_err(stored)?;
            groups.truncate(MAX_VEC_ITEMS);
            Ok(Reply::Groups {
                groups: BoundedVec(groups),
            })
        }
        Request::UserGroups => {
            let mut groups = user_groups(store, device).map_err(stored)?;
            groups.truncate(MAX_VEC_ITEMS);
            Ok(Reply::UserGroups {
                groups: BoundedVec(groups),
            })
        }
        Request::Ping => Ok(Reply::Pong),
        Request::PublishDeviceList { entries } => {
            super::device_lists::publish(store, device, entries.0)
        }
        Request::FetchDeviceList { user } => super::device_lists::fetch(store, &user),
        Request::ListBackupSegments { user, after } => {
            super::backup::list(store, device, &user, after)
        }
        // The relay's connection layer answers it with the blob store's facts
        // (`backup::append`); here (the simulation) there is no blob store.
        Request::AppendBackupSegment { .. } => Err(invalid("this relay keeps no blobs")),
        Request::Post { .. }
        | Request::Register { .. }
        | Request::RegisterDevice { .. }
        | Request::Authenticate { .. }
        | Request::TurnCredentials
        | Request::OpenLink
        | Request::JoinLink { .. }
        | Request::LinkSend { .. }
        | Request::AccountRegisterStart { .. }
        | Request::AccountRegisterFinish { .. }
        | Request::AccountLoginStart { .. }
        | Request::AccountLoginFinish { .. }
        | Request::FetchRecoveryBundle { .. }
        | Request::AccountPasswordStart { .. }
        | Request::AccountPasswordFinish { .. }
        | Request::AccountDelete => {
            error!("request routed to the wrong handler");
            Err(ErrorReply::new(ErrorCode::Internal, "internal error"))
        }
    }
}

/// The current devices (registered, not revoked in the signed list) of `device`'s user.
fn current_devices_of_user(
    store: &dyn RelayStore,
    device: DeviceId,
) -> Result<Vec<DeviceId>, StoreError> {
    let (user, _) = store.device(device)?.ok_or(StoreError::UnknownDevice)?;
    let list = match store.device_list(&user) {
        Ok(list) => list,
        Err(StoreError::UnknownUser) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(store
        .devices(&user)?
        .into_iter()
        .filter(|d| !cove_identity::revokes(&list, &d.key))
        .map(|d| d.device)
        .collect())
}

/// Whether a current device of `device`'s user is a current member of `group`
/// (`UnknownGroup` if there is no such group).
pub(crate) fn user_has_member(
    store: &dyn RelayStore,
    group: cove_wire::GroupId,
    device: DeviceId,
) -> Result<bool, StoreError> {
    for d in current_devices_of_user(store, device)? {
        if store.is_member(group, d)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The groups in which a current device of `device`'s user is a current member, ordered
/// by id without repeats (`UserGroups`).
fn user_groups(
    store: &dyn RelayStore,
    device: DeviceId,
) -> Result<Vec<cove_wire::GroupId>, StoreError> {
    let mut groups = std::collections::BTreeSet::new();
    for d in current_devices_of_user(store, device)? {
        groups.extend(store.groups_of(d)?.into_iter().map(|g| g.group));
    }
    Ok(groups.into_iter().collect())
}

/// The devices of `device`'s own user with their last-seen times and whether the user's
/// signed list revokes them (`ListOwnDevices`). The user is the authenticated device's,
/// never one the request names: no one learns another user's last-seen times.
fn own_devices(store: &dyn RelayStore, device: DeviceId) -> Result<Reply, ErrorReply> {
    let stored = |e: StoreError| store_error_reply(&e);
    let (user, _) = store
        .device(device)
        .map_err(stored)?
        .ok_or_else(|| stored(StoreError::UnknownDevice))?;
    let devices = store.devices(&user).map_err(stored)?;
    let seen: std::collections::HashMap<DeviceId, Option<u64>> = store
        .last_seen(&user)
        .map_err(stored)?
        .into_iter()
        .collect();
    let list = store.device_list(&user).map_err(stored)?;
    let mut own: Vec<OwnDevice> = devices
        .into_iter()
        .map(|d| OwnDevice {
            device: d.device,
            last_seen_ms: seen.get(&d.device).copied().flatten(),
            revoked: cove_identity::revokes(&list, &d.key),
            key: d.key,
        })
        .collect();
    // A user has at most `MAX_DEVICES_PER_USER` unrevoked devices and a bounded list, so
    // this never cuts in practice; the cap keeps the reply decodable whatever the store holds.
    own.truncate(MAX_VEC_ITEMS);
    Ok(Reply::OwnDevices {
        devices: BoundedVec(own),
    })
}

/// The answer to an acknowledgement the store applied (or refused).
pub fn acked(result: Result<(), StoreError>) -> Result<Reply, ErrorReply> {
    result
        .map(|()| Reply::Acked)
        .map_err(|e| store_error_reply(&e))
}

/// Keeps the leading entries that fit in one frame (always at least one).
fn fit_in_frame(mut entries: Vec<GroupEntry>) -> Vec<GroupEntry> {
    let budget = MAX_FRAME_BYTES.saturating_sub(4 * ENTRY_OVERHEAD_BYTES);
    let mut used = 0usize;
    let mut keep = 0usize;
    for entry in &entries {
        let ids = match &entry.kind {
            EntryKind::Commit { added, removed } => 10 * (added.len() + removed.len()),
            _ => 0,
        };
        used = used.saturating_add(entry.payload.len() + ids + 64);
        if used > budget && keep > 0 {
            break;
        }
        keep += 1;
    }
    entries.truncate(keep);
    entries
}
