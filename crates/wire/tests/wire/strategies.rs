//! proptest strategies for every wire type.

use cove_wire::identity::{
    DeviceName, EntryBody, EntryHash, IdentityKey, ListEntry, ListHead, ListOp,
};
use cove_wire::{BackupSegment, BlobId, NewBackupSegment};
use cove_wire::{
    BoundedVec, ClaimedKeyPackage, ClientFrame, Delivery, DeviceId, DeviceInfo, DeviceKey,
    EntryKind, Epoch, ErrorCode, ErrorReply, GroupEntry, GroupId, GroupSummary, InboxEntry,
    InboxKind, LinkCloseReason, OwnDevice, Payload, PostKind, Reply, Request, RequestId, Seq,
    ServerFrame, Signature, Stream, UserName,
};
use proptest::collection::vec;
use proptest::prelude::*;

pub fn user_name() -> impl Strategy<Value = UserName> {
    "[a-z0-9][a-z0-9_.-]{0,31}".prop_map(|s| UserName::new(s).unwrap())
}

pub fn device_id() -> impl Strategy<Value = DeviceId> {
    any::<u64>().prop_map(DeviceId)
}

pub fn epoch() -> impl Strategy<Value = Epoch> {
    any::<u64>().prop_map(Epoch)
}

pub fn seq() -> impl Strategy<Value = Seq> {
    any::<u64>().prop_map(Seq)
}

pub fn request_id() -> impl Strategy<Value = RequestId> {
    any::<u32>().prop_map(RequestId)
}

pub fn group_id() -> impl Strategy<Value = GroupId> {
    any::<[u8; 16]>().prop_map(GroupId)
}

pub fn device_key() -> impl Strategy<Value = DeviceKey> {
    any::<[u8; 32]>().prop_map(DeviceKey)
}

pub fn signature() -> impl Strategy<Value = Signature> {
    prop::array::uniform::<_, 64>(any::<u8>()).prop_map(Signature)
}

pub fn payload() -> impl Strategy<Value = Payload> {
    vec(any::<u8>(), 0..48).prop_map(Payload)
}

pub fn bounded<S: Strategy>(s: S) -> impl Strategy<Value = BoundedVec<S::Value>> {
    vec(s, 0..4).prop_map(BoundedVec)
}

pub fn post_kind() -> impl Strategy<Value = PostKind> {
    prop_oneof![
        Just(PostKind::Application),
        Just(PostKind::Proposal),
        (
            bounded(device_id()),
            bounded(device_id()),
            proptest::option::of(payload()),
            payload()
        )
            .prop_map(|(added, removed, welcome, group_info)| PostKind::Commit {
                added,
                removed,
                welcome,
                group_info
            }),
    ]
}

pub fn stream() -> impl Strategy<Value = Stream> {
    prop_oneof![group_id().prop_map(Stream::Group), Just(Stream::Inbox)]
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (user_name(), device_key(), signature()).prop_map(|(user, key, signature)| {
            Request::Register {
                user,
                key,
                signature,
            }
        }),
        (
            user_name(),
            device_key(),
            signature(),
            device_id(),
            signature()
        )
            .prop_map(|(user, key, signature, authorizer, authorization)| {
                Request::RegisterDevice {
                    user,
                    key,
                    signature,
                    authorizer,
                    authorization,
                }
            }),
        (user_name(), device_id(), signature()).prop_map(|(user, device, signature)| {
            Request::Authenticate {
                user,
                device,
                signature,
            }
        }),
        user_name().prop_map(|user| Request::ListDevices { user }),
        (bounded(payload()), proptest::option::of(payload())).prop_map(
            |(key_packages, last_resort)| Request::UploadKeyPackages {
                key_packages,
                last_resort
            }
        ),
        user_name().prop_map(|user| Request::ClaimKeyPackages { user }),
        Just(Request::KeyPackageStock),
        (group_id(), payload(), payload()).prop_map(|(group, group_info, tree)| {
            Request::CreateGroup {
                group,
                group_info,
                tree,
            }
        }),
        (group_id(), epoch(), post_kind(), payload()).prop_map(|(group, epoch, kind, payload)| {
            Request::Post {
                group,
                epoch,
                kind,
                payload,
            }
        }),
        (group_id(), seq(), any::<u32>()).prop_map(|(group, after, limit)| Request::Fetch {
            group,
            after,
            limit
        }),
        (stream(), seq()).prop_map(|(stream, seq)| Request::Ack { stream, seq }),
        Just(Request::ListGroups),
        Just(Request::Ping),
        Just(Request::TurnCredentials),
        bounded(list_entry()).prop_map(|entries| Request::PublishDeviceList { entries }),
        user_name().prop_map(|user| Request::FetchDeviceList { user }),
        Just(Request::OpenLink),
        any::<u32>().prop_map(|nameplate| Request::JoinLink { nameplate }),
        payload().prop_map(|bytes| Request::LinkSend { bytes }),
        Just(Request::ListOwnDevices),
        any::<[u8; 16]>().prop_map(|g| Request::LeaveGroup { group: GroupId(g) }),
        payload().prop_map(|request| Request::AccountRegisterStart { request }),
        (payload(), payload(), payload(), any::<[u8; 32]>()).prop_map(
            |(upload, password_bundle, recovery_bundle, recovery_key)| {
                Request::AccountRegisterFinish {
                    upload,
                    password_bundle,
                    recovery_bundle,
                    recovery_key,
                }
            }
        ),
        (user_name(), payload())
            .prop_map(|(user, request)| Request::AccountLoginStart { user, request }),
        payload().prop_map(|finalization| Request::AccountLoginFinish { finalization }),
        (user_name(), signature())
            .prop_map(|(user, signature)| Request::FetchRecoveryBundle { user, signature }),
        payload().prop_map(|request| Request::AccountPasswordStart { request }),
        (payload(), payload(), proptest::option::of(signature())).prop_map(
            |(upload, password_bundle, reset_signature)| Request::AccountPasswordFinish {
                upload,
                password_bundle,
                reset_signature,
            }
        ),
        Just(Request::AccountDelete),
        Just(Request::UserGroups),
        (user_name(), any::<[u8; 16]>(), any::<u64>(), payload()).prop_map(
            |(user, blob, size, entry)| Request::AppendBackupSegment {
                user,
                segment: NewBackupSegment {
                    blob: BlobId(blob),
                    size,
                    entry,
                },
            }
        ),
        (user_name(), any::<u64>())
            .prop_map(|(user, after)| Request::ListBackupSegments { user, after }),
    ]
}

pub fn list_entry() -> impl Strategy<Value = ListEntry> {
    let op = prop_oneof![
        any::<[u8; 32]>().prop_map(|k| ListOp::Create {
            identity: IdentityKey(k)
        }),
        (device_key(), "[a-z ]{1,64}").prop_map(|(device, name)| ListOp::Add {
            device,
            name: DeviceName::new(name).unwrap()
        }),
        device_key().prop_map(|device| ListOp::Revoke { device }),
    ];
    (
        user_name(),
        any::<u64>(),
        proptest::option::of(any::<[u8; 32]>().prop_map(EntryHash)),
        any::<u64>(),
        op,
        signature(),
    )
        .prop_map(|(user, index, prev, time_ms, op, signature)| ListEntry {
            body: EntryBody {
                user,
                index,
                prev,
                time_ms,
                op,
            },
            signature,
        })
}

pub fn client_frame() -> impl Strategy<Value = ClientFrame> {
    (request_id(), request()).prop_map(|(id, body)| ClientFrame::Request { id, body })
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    use ErrorCode::*;
    prop::sample::select(vec![
        Malformed,
        TooLarge,
        Unauthenticated,
        AuthenticationFailed,
        AlreadyAuthenticated,
        InvalidRequest,
        UserTaken,
        UnknownUser,
        UnknownDevice,
        UnknownGroup,
        GroupExists,
        NotMember,
        StaleEpoch,
        TooManyDevices,
        StockFull,
        RateLimited,
        Unavailable,
        Displaced,
        SlowReader,
        IdleTimeout,
        Internal,
        LinkNotFound,
        LinkTaken,
        LinkExpired,
        NotInDeviceList,
        LoginFailed,
        NotOwner,
        BackupFull,
    ])
}

pub fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (
        error_code(),
        ".{0,24}",
        proptest::option::of(any::<u32>()),
        proptest::option::of(epoch()),
    )
        .prop_map(
            |(code, message, retry_after_ms, current_epoch)| ErrorReply {
                code,
                message,
                retry_after_ms,
                current_epoch,
            },
        )
}

pub fn entry_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        Just(EntryKind::Application),
        Just(EntryKind::Proposal),
        (bounded(device_id()), bounded(device_id()))
            .prop_map(|(added, removed)| EntryKind::Commit { added, removed }),
    ]
}

pub fn group_entry() -> impl Strategy<Value = GroupEntry> {
    (
        group_id(),
        seq(),
        epoch(),
        device_id(),
        entry_kind(),
        any::<u64>(),
        payload(),
    )
        .prop_map(
            |(group, seq, epoch, sender, kind, received_at_ms, payload)| GroupEntry {
                group,
                seq,
                epoch,
                sender,
                kind,
                received_at_ms,
                payload,
            },
        )
}

pub fn inbox_entry() -> impl Strategy<Value = InboxEntry> {
    (
        seq(),
        group_id(),
        seq(),
        device_id(),
        any::<u64>(),
        payload(),
    )
        .prop_map(
            |(seq, group, commit_seq, sender, received_at_ms, payload)| InboxEntry {
                seq,
                kind: InboxKind::Welcome {
                    group,
                    commit_seq,
                    sender,
                },
                received_at_ms,
                payload,
            },
        )
}

pub fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        device_id().prop_map(|device| Reply::Authenticated { device }),
        (
            user_name(),
            bounded(
                (device_id(), device_key()).prop_map(|(device, key)| DeviceInfo { device, key })
            )
        )
            .prop_map(|(user, devices)| Reply::Devices { user, devices }),
        (any::<u32>(), any::<bool>()).prop_map(|(remaining, has_last_resort)| {
            Reply::KeyPackageStock {
                remaining,
                has_last_resort,
            }
        }),
        (
            user_name(),
            bounded((device_id(), payload(), any::<bool>()).prop_map(
                |(device, key_package, last_resort)| ClaimedKeyPackage {
                    device,
                    key_package,
                    last_resort
                }
            ))
        )
            .prop_map(|(user, key_packages)| Reply::KeyPackages { user, key_packages }),
        Just(Reply::GroupCreated),
        seq().prop_map(|seq| Reply::Posted { seq }),
        bounded(group_entry()).prop_map(|entries| Reply::Entries { entries }),
        Just(Reply::Acked),
        bounded((group_id(), epoch()).prop_map(|(group, epoch)| GroupSummary { group, epoch }))
            .prop_map(|groups| Reply::Groups { groups }),
        Just(Reply::Pong),
        (bounded(".{0,40}"), ".{0,40}", ".{0,40}", any::<u64>()).prop_map(
            |(urls, username, password, expires_at_ms)| Reply::TurnCredentials {
                urls,
                username,
                password,
                expires_at_ms
            }
        ),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(index, hash)| Reply::DeviceListHead {
            head: ListHead {
                index,
                hash: EntryHash(hash)
            }
        }),
        bounded(list_entry()).prop_map(|entries| Reply::DeviceList { entries }),
        any::<u32>().prop_map(|nameplate| Reply::LinkOpened { nameplate }),
        Just(Reply::LinkJoined),
        Just(Reply::LinkSent),
        bounded(
            (
                device_id(),
                device_key(),
                proptest::option::of(any::<u64>()),
                any::<bool>()
            )
                .prop_map(|(device, key, last_seen_ms, revoked)| OwnDevice {
                    device,
                    key,
                    last_seen_ms,
                    revoked
                })
        )
        .prop_map(|devices| Reply::OwnDevices { devices }),
        Just(Reply::Left),
        payload().prop_map(|response| Reply::AccountRegisterResponse { response }),
        Just(Reply::AccountRegistered),
        (payload(), any::<u8>()).prop_map(|(response, ksf_version)| Reply::AccountLoginResponse {
            response,
            ksf_version
        }),
        payload().prop_map(|password_bundle| Reply::AccountLoggedIn { password_bundle }),
        payload().prop_map(|recovery_bundle| Reply::RecoveryBundle { recovery_bundle }),
        Just(Reply::AccountPasswordChanged),
        Just(Reply::AccountDeleted),
        bounded(group_id()).prop_map(|groups| Reply::UserGroups { groups }),
        any::<u64>().prop_map(|position| Reply::BackupSegmentAppended { position }),
        (
            bounded(
                (any::<u64>(), any::<[u8; 16]>(), any::<u64>(), payload()).prop_map(
                    |(position, blob, size, entry)| BackupSegment {
                        position,
                        blob: BlobId(blob),
                        size,
                        entry,
                    }
                )
            ),
            any::<bool>()
        )
            .prop_map(|(segments, more)| Reply::BackupSegments { segments, more }),
    ]
}

pub fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (any::<u16>(), any::<[u8; 32]>())
            .prop_map(|(version, nonce)| ServerFrame::Challenge { version, nonce }),
        (
            request_id(),
            prop_oneof![reply().prop_map(Ok), error_reply().prop_map(Err)]
        )
            .prop_map(|(id, result)| ServerFrame::Response { id, result }),
        prop_oneof![
            group_entry().prop_map(Delivery::Group),
            inbox_entry().prop_map(Delivery::Inbox)
        ]
        .prop_map(ServerFrame::Deliver),
        Just(ServerFrame::BacklogDone),
        error_code().prop_map(|code| ServerFrame::Closing { code }),
        Just(ServerFrame::LinkPeerJoined),
        payload().prop_map(|bytes| ServerFrame::LinkMessage { bytes }),
        prop_oneof![
            Just(LinkCloseReason::PeerLeft),
            Just(LinkCloseReason::Expired)
        ]
        .prop_map(|reason| ServerFrame::LinkClosed { reason }),
    ]
}
