//! KeyPackages: this device's stock at the relay (checked after authentication and after a
//! Welcome used one; topped up when low, with a last-resort one when missing; each carries
//! this device's certificate in its leaf, so none is made before the device has one) and the
//! validation of the KeyPackages claimed for other devices (their certificates included).

use cove_store::Store;
use cove_wire::{
    BoundedVec, ClaimedKeyPackage, DeviceInfo, ErrorReply, Payload, Request, UserName,
};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    KeyPackage, KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProtocolVersion,
};
use openmls_traits::OpenMlsProvider as _;

use super::device::Me;
use super::effects::{Effects, Pending};
use super::leaves::{LeafCheck, LeafCheckError, check_leaf_node};
use super::mls::{CIPHERSUITE, capabilities, certificate_extensions, parse_credential};
use super::own_list;
use crate::error::{KeyPackageBuildError, KeyPackageError, Shared, Warning};
use crate::provider::CoveProvider;
use crate::types::HandleError;

/// KeyPackages uploaded per batch.
pub const KEY_PACKAGE_BATCH: usize = 50;
/// Top up when the relay holds fewer than this many.
pub const KEY_PACKAGE_LOW_WATER: u32 = 10;

/// The stock check of this connection.
#[derive(Default)]
pub(super) struct KeyPackages {
    /// A stock check or upload is in flight (no second one is sent meanwhile).
    in_flight: bool,
}

impl KeyPackages {
    /// A new or lost connection: nothing is in flight.
    pub(super) fn reset(&mut self) {
        self.in_flight = false;
    }

    /// Asks for the stock.
    pub(super) fn check(&mut self, fx: &mut Effects) {
        self.in_flight = true;
        fx.request(Request::KeyPackageStock, Pending::Stock);
    }

    /// Asks for the stock unless a check is in flight (a KeyPackage was consumed).
    pub(super) fn check_if_idle(&mut self, fx: &mut Effects) {
        if !self.in_flight {
            self.check(fx);
        }
    }

    /// The answer to a stock check or an upload (`(remaining, has_last_resort)`): tops up
    /// when low. A refusal is a warning.
    pub(super) fn on_stock<S: Store>(
        &mut self,
        provider: &CoveProvider<S>,
        me: &Me,
        result: Result<(u32, bool), ErrorReply>,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        self.in_flight = false;
        match result {
            Ok((remaining, has_last_resort)) => {
                if remaining < KEY_PACKAGE_LOW_WATER || !has_last_resort {
                    self.upload(provider, me, !has_last_resort, fx)?;
                }
            }
            Err(e) => fx.warn(Warning::KeyPackageUpload(e)),
        }
        Ok(())
    }

    /// Generates a batch (with a last-resort KeyPackage if asked) and uploads it; a failure
    /// to generate is a warning (retried at the next stock check).
    fn upload<S: Store>(
        &mut self,
        provider: &CoveProvider<S>,
        me: &Me,
        with_last_resort: bool,
        fx: &mut Effects,
    ) -> Result<(), HandleError> {
        let Some(device) = me.device() else {
            return Ok(());
        };
        let store = provider.store();
        // No certificate yet (a linked device before its user's list is pinned): the
        // KeyPackages must carry it, so they are made once it is there.
        let Some(cert) = own_list::certificate(store, me)? else {
            return Ok(());
        };
        let extensions = match certificate_extensions(&cert) {
            Ok(e) => e,
            Err(e) => {
                fx.warn(Warning::KeyPackageGeneration(Shared::new(e.into())));
                return Ok(());
            }
        };
        let cred = me.credential_with_key(device);
        store.begin()?;
        let build = |last_resort: bool| -> Result<Payload, KeyPackageBuildError> {
            let mut builder = KeyPackage::builder()
                .leaf_node_capabilities(capabilities())
                .leaf_node_extensions(extensions.clone());
            if last_resort {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(CIPHERSUITE, provider, &me.signer, cred.clone())
                .map_err(KeyPackageBuildError::New)?;
            let bytes = MlsMessageOut::from(bundle.key_package().clone())
                .to_bytes()
                .map_err(KeyPackageBuildError::Encode)?;
            Ok(Payload(bytes))
        };
        let result = (|| -> Result<(Vec<Payload>, Option<Payload>), KeyPackageBuildError> {
            let key_packages = (0..KEY_PACKAGE_BATCH)
                .map(|_| build(false))
                .collect::<Result<Vec<_>, _>>()?;
            let last_resort = with_last_resort.then(|| build(true)).transpose()?;
            Ok((key_packages, last_resort))
        })();
        match result {
            Ok((key_packages, last_resort)) => {
                store.commit()?;
                self.in_flight = true;
                fx.request(
                    Request::UploadKeyPackages {
                        key_packages: BoundedVec(key_packages),
                        last_resort,
                    },
                    Pending::Upload,
                );
            }
            Err(e) => {
                let _ = store.rollback();
                fx.warn(Warning::KeyPackageGeneration(Shared::new(e)));
            }
        }
        Ok(())
    }
}

/// Checks a KeyPackage claimed for `user`'s device against the relay's `directory` answer.
pub(super) fn validate_key_package<S: Store>(
    provider: &CoveProvider<S>,
    user: &UserName,
    claimed: &ClaimedKeyPackage,
    directory: &[DeviceInfo],
) -> Result<KeyPackage, KeyPackageError> {
    let msg = MlsMessageIn::tls_deserialize_exact(claimed.key_package.as_bytes())
        .map_err(KeyPackageError::Undecodable)?;
    let MlsMessageBodyIn::KeyPackage(kp_in) = msg.extract() else {
        return Err(KeyPackageError::NotKeyPackage);
    };
    let kp_in: KeyPackageIn = kp_in;
    let kp = kp_in
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(KeyPackageError::Invalid)?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(KeyPackageError::WrongCiphersuite);
    }
    let id = parse_credential(kp.leaf_node().credential())?;
    if &id.user != user || id.device != claimed.device {
        return Err(KeyPackageError::OtherDevice);
    }
    let dir = directory
        .iter()
        .find(|d| d.device == claimed.device)
        .ok_or(KeyPackageError::NotInDirectory)?;
    if kp.leaf_node().signature_key().as_slice() != dir.key.0 {
        return Err(KeyPackageError::KeyMismatch);
    }
    // The user's list was fetched for this change: a certificate it does not decide is
    // refused, not waited for.
    let answered = [user.clone()].into();
    match check_leaf_node(provider.store(), kp.leaf_node(), &answered) {
        Ok(LeafCheck::Trusted) => Ok(kp),
        Ok(LeafCheck::NeedList(_)) => Err(KeyPackageError::Certificate(
            crate::identity::LeafRefusal::NoList,
        )),
        Ok(LeafCheck::Refused(r)) => Err(KeyPackageError::Certificate(r.reason)),
        Err(LeafCheckError::Credential(e)) => Err(e.into()),
        Err(LeafCheckError::Store(e)) => Err(KeyPackageError::Store(e)),
    }
}
