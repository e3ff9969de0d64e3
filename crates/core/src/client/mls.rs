//! Cove's MLS parameters and credentials: the ciphersuite, the device-certificate leaf
//! extension, the capabilities and join configuration every group
//! uses, and the `cove:<user>:<device id>` credential format with its parser. A leaf: it
//! knows nothing of the client's state.

use cove_wire::identity::DeviceCertificate;
use cove_wire::{DeviceId, UserName};
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, Credential, Extension, ExtensionType, Extensions,
    GroupContext, LeafNode, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, Member, MlsGroupJoinConfig,
    RequiredCapabilitiesExtension, UnknownExtension,
};

use crate::error::{CredentialError, LeafExtensionError};
use crate::identity::LeafRefusal;

/// The one ciphersuite Cove uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Private-use leaf-node extension carrying the device's certificate (its user's identity
/// key and the signed `Add` entry of the device, a postcard-encoded
/// [`DeviceCertificate`]): in every KeyPackage's leaf and in a group creator's leaf, kept on
/// updates. Every member checks it against the user's pinned identity and device list.
pub const DEVICE_CERTIFICATE_EXTENSION: u16 = 0xf0c1;
pub use crate::welcome_envelope::MAX_GROUP_NAME;
pub use cove_wire::roles::ROLES_EXTENSION;
/// Past epochs whose keys are kept to decrypt late application messages.
pub const MAX_PAST_EPOCHS: usize = 8;
/// MLS padding bucket, bytes: every `PrivateMessage` (application messages) is padded so that
/// its encrypted content (content, signature, padding and AEAD tag) is a multiple of this, and
/// the relay sees only the bucket, not the exact length. 512 puts every text up to a few
/// hundred bytes (with the envelope and the Ed25519 signature) in one bucket. See
/// `PROTOCOL.md`, "Padding".
pub const PADDING_BUCKET: usize = 512;

/// What the credential of a member says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MemberId {
    pub(super) user: UserName,
    pub(super) device: DeviceId,
    /// The signature key (empty when only the credential was parsed).
    pub(super) key: Vec<u8>,
}

/// The MLS BasicCredential identity of a device: `cove:<user>:<device id>`.
pub fn credential_identity(user: &UserName, device: DeviceId) -> Vec<u8> {
    format!("cove:{}:{}", user, device.0).into_bytes()
}

/// Parses a Cove credential (the key is left empty).
pub(super) fn parse_credential(credential: &Credential) -> Result<MemberId, CredentialError> {
    let basic = BasicCredential::try_from(credential.clone())?;
    let text = std::str::from_utf8(basic.identity()).map_err(|_| CredentialError::NotUtf8)?;
    let rest = text.strip_prefix("cove:").ok_or(CredentialError::NotCove)?;
    let (user, device) = rest.rsplit_once(':').ok_or(CredentialError::Malformed)?;
    let user = UserName::new(user)?;
    let device = DeviceId(device.parse().map_err(|_| CredentialError::DeviceId)?);
    Ok(MemberId {
        user,
        device,
        key: Vec::new(),
    })
}

/// A group member's credential with its signature key.
pub(super) fn member_id(m: &Member) -> Result<MemberId, CredentialError> {
    let mut id = parse_credential(&m.credential)?;
    id.key = m.signature_key.clone();
    Ok(id)
}

/// The users of `members`, sorted and deduplicated.
pub(super) fn users_of(members: &[MemberId]) -> Vec<UserName> {
    let mut u: Vec<UserName> = members.iter().map(|m| m.user.clone()).collect();
    u.sort();
    u.dedup();
    u
}

/// The leaf capabilities of every Cove device.
pub(super) fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        // A KeyPackage's own extensions must be listed too: the last-resort one is, or
        // every last-resort KeyPackage is refused by the members that claim it.
        Some(&[
            ExtensionType::Unknown(DEVICE_CERTIFICATE_EXTENSION),
            ExtensionType::LastResort,
            // The group roles (admins) in the group context.
            ExtensionType::Unknown(ROLES_EXTENSION),
        ]),
        None,
        None,
    )
}

/// The group-context extensions naming `admins` as the group's admins: the roles
/// ([`ROLES_EXTENSION`]) and the required capabilities that let the group carry them
/// (every leaf must list the roles type, as every Cove leaf does).
pub(super) fn roles_extensions(
    admins: &[UserName],
) -> Result<Extensions<GroupContext>, crate::error::RolesExtensionError> {
    let data = cove_wire::roles::encode_roles(admins)?;
    let required =
        RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(ROLES_EXTENSION)], &[], &[]);
    Ok(Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required),
        Extension::Unknown(ROLES_EXTENSION, UnknownExtension(data)),
    ])?)
}

/// The admins a group context's extensions name: `None` for a group without roles
/// (made before roles existed), `Some(empty)` for roles that do not decode.
pub(super) fn roles_of(extensions: &Extensions<GroupContext>) -> Option<Vec<UserName>> {
    extensions
        .unknown(ROLES_EXTENSION)
        .map(|ext| cove_wire::roles::decode_roles(&ext.0).unwrap_or_default())
}

/// The leaf-node extensions of this device: its certificate.
pub(super) fn certificate_extensions(
    cert: &DeviceCertificate,
) -> Result<Extensions<LeafNode>, LeafExtensionError> {
    let bytes = cove_wire::encode(cert)?;
    Ok(Extensions::single(Extension::Unknown(
        DEVICE_CERTIFICATE_EXTENSION,
        UnknownExtension(bytes),
    ))?)
}

/// The device certificate a leaf carries (refused when it has none or it does not decode).
pub(super) fn leaf_certificate(leaf: &LeafNode) -> Result<DeviceCertificate, LeafRefusal> {
    let ext = leaf
        .extensions()
        .unknown(DEVICE_CERTIFICATE_EXTENSION)
        .ok_or(LeafRefusal::NoCertificate)?;
    cove_wire::decode(&ext.0).map_err(|_| LeafRefusal::Undecodable)
}

/// How a device joins a group from a Welcome. Handshakes go out as MLS `PublicMessage`
/// (the relay validates them against the group's public state); application messages stay
/// `PrivateMessage`.
pub(super) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .padding_size(PADDING_BUCKET)
        .build()
}
