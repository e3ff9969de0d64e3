//! Logging in on a new machine with the user's password (`cove login`, issue 11 item 3).
//!
//! On one fresh connection, before anything is written to the home: OPAQUE login
//! (`AccountLoginStart`/`Finish`), the password-wrapped account bundle unwrapped under the
//! export key (identity key, history backup key), the user's signed device list fetched.
//! Then the home is made: a fresh device key, which the core adds to the list with the
//! identity key ([`Client::adopt_user_identity`]); on the same connection, now logged in as
//! the user, the `Add` entry is published and the device registers (`RegisterDevice`
//! without another device's authorisation). The device then connects like any other
//! (authenticates, uploads KeyPackages with its certificate) and joins every group of its
//! user by an external commit ([`Client::join_user_groups`]). Any failure on the way closes
//! the device and removes what was created in the home; a wrong password (or unknown user,
//! which the relay does not tell apart) is [`DeviceError::LoginFailed`] and touches nothing.

use std::path::Path;
use std::sync::Arc;

use cove_account::bundle::{AccountBundle, WrapKind};
use cove_account::{AccountError, opaque};
use cove_core::Client;
use cove_wire::{ErrorCode, ErrorReply, Payload, Reply, Request, UserName};
use zeroize::Zeroizing;

use super::error::DeviceError;
use super::handle::{Device, seed};
use super::open::remove_home;
use crate::config::{ConfigError, Home};
use crate::raw::{RawConnection, RawError};
use crate::session;
use crate::transport::{self, TlsTrust};

impl Device {
    /// Logs in as `user` with `password` on a machine without a home: makes `home` a new
    /// device of the user, which holds the user's identity key (like the user's first
    /// device) and has joined every group of the user when this returns. `ca` is the
    /// relay's certificate to trust (copied into the home), as for [`Device::init`].
    ///
    /// A wrong password, and a user without an account, are [`DeviceError::LoginFailed`].
    /// Whatever fails leaves no home behind (the home's files, and its directory if nothing
    /// else is in it).
    pub async fn login(
        home: &Home,
        server: &str,
        user: UserName,
        password: &[u8],
        ca: Option<&Path>,
    ) -> Result<Device, DeviceError> {
        if home.is_initialised() {
            return Err(ConfigError::AlreadyInitialised(home.dir().to_owned()).into());
        }
        // Check the URL and CA before anything else.
        transport::endpoint_url(server)?;
        let trust = match ca {
            Some(ca) => {
                transport::read_certs(ca)?;
                TlsTrust::CaFile(ca.to_owned())
            }
            None => TlsTrust::WebPki,
        };
        let tls = Arc::new(transport::client_config(&trust)?);
        let (mut raw, nonce) = RawConnection::open(server, tls).await?;
        // Nothing is written before the password is proven.
        let bundle = match password_login(&mut raw, &user, password).await {
            Ok(bundle) => bundle,
            Err(e) => {
                raw.close().await;
                return Err(e);
            }
        };
        let lock = home.lock()?;
        let prepared = async {
            let list = match raw
                .request(Request::FetchDeviceList { user: user.clone() })
                .await?
            {
                Ok(Reply::DeviceList { entries }) => entries.0,
                Ok(other) => return Err(unexpected(&other)),
                Err(e) => return Err(RawError::Refused(e).into()),
            };
            let mut client = Client::init(home.open_database()?, user.clone(), seed())?;
            let identity = Zeroizing::new(bundle.identity_key);
            let backup = Zeroizing::new(bundle.backup_key);
            let publish =
                client.adopt_user_identity(session::now_ms(), &identity, &backup, &list)?;
            if let Some(publish) = publish {
                match raw.request(publish).await? {
                    Ok(Reply::DeviceListHead { .. }) => client.own_list_confirmed()?,
                    Ok(other) => return Err(unexpected(&other)),
                    Err(e) => return Err(RawError::Refused(e).into()),
                }
            }
            let channel = raw.channel_binding();
            let register = client
                .login_registration(&nonce, &channel)
                .ok_or(DeviceError::NotRegistered)?;
            let device = raw.authenticate(register).await?;
            client.registered_as(device)?;
            let config = home.initialise(server, user.clone(), ca)?;
            Ok::<_, DeviceError>((client, config))
        }
        .await;
        raw.close().await;
        let (client, config) = match prepared {
            Ok(ready) => ready,
            Err(e) => {
                drop(lock);
                remove_home(home);
                return Err(e);
            }
        };
        let device = Self::start(home, config, client, Some(lock))?;
        let mut device = device.registered_or_removed(home).await?;
        let joined = async {
            device
                .session
                .op(device.timeout, |c| c.join_user_groups(session::now_ms()))
                .await??;
            device.settle().await
        }
        .await;
        match joined {
            Ok(()) => Ok(device),
            Err(e) => {
                device.close_now().await;
                remove_home(home);
                Err(e)
            }
        }
    }
}

/// OPAQUE login as `user` on `raw` (not authenticated): the account bundle, unwrapped.
async fn password_login(
    raw: &mut RawConnection,
    user: &UserName,
    password: &[u8],
) -> Result<AccountBundle, DeviceError> {
    let (state, request) = opaque::client_login_start(password).map_err(account_error)?;
    let (response, ksf_version) = match raw
        .request(Request::AccountLoginStart {
            user: user.clone(),
            request: Payload(request),
        })
        .await?
    {
        Ok(Reply::AccountLoginResponse {
            response,
            ksf_version,
        }) => (response.0, ksf_version),
        Ok(other) => return Err(unexpected(&other)),
        Err(e) => return Err(refused(e)),
    };
    // The key-stretching function (Argon2id) takes a good part of a second of CPU.
    let name = user.to_string();
    let finish = tokio::task::spawn_blocking(move || {
        opaque::client_login_finish(state, &name, ksf_version, &response)
    })
    .await
    .map_err(|_| DeviceError::Account(AccountError::Internal("the login task failed")))?
    .map_err(account_error)?;
    let wrapped = match raw
        .request(Request::AccountLoginFinish {
            finalization: Payload(finish.finalization),
        })
        .await?
    {
        Ok(Reply::AccountLoggedIn { password_bundle }) => password_bundle.0,
        Ok(other) => return Err(unexpected(&other)),
        Err(e) => return Err(refused(e)),
    };
    AccountBundle::unwrap(
        &wrapped,
        user.as_str(),
        WrapKind::Password,
        finish.export_key.as_bytes(),
    )
    .map_err(account_error)
}

/// A relay refusal: `LoginFailed` as such, anything else as the raw refusal.
fn refused(e: ErrorReply) -> DeviceError {
    if e.code == ErrorCode::LoginFailed {
        DeviceError::LoginFailed
    } else {
        RawError::Refused(e).into()
    }
}

/// An account error: a failed login as [`DeviceError::LoginFailed`].
fn account_error(e: AccountError) -> DeviceError {
    match e {
        AccountError::LoginFailed => DeviceError::LoginFailed,
        other => DeviceError::Account(other),
    }
}

/// A reply of the wrong kind.
fn unexpected(reply: &Reply) -> DeviceError {
    RawError::Unexpected(format!("{reply:?}")).into()
}
