//! `cove verify [USER] [--yes]`: compare safety numbers and mark users verified.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::Context as _;
use clap::Args;

use cove::config::Home;
use cove::{Device, UserName};
use cove_core::identity::{IdentityState, Verification};

/// Arguments of `cove verify`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove verify bob          # show the safety number with bob, then confirm
  cove verify bob --yes    # confirm without asking (after comparing the digits)
  cove verify              # every contact: verified, unverified or changed

Both users run `cove verify` and compare the digits out of band (in person, on a call). The
number is over both users' identity keys, so devices coming and going do not change it. Once
confirmed, the user is verified; if their identity key changes later, nothing is sent to groups
with them until it is verified again.")]
pub struct VerifyArgs {
    /// The user to verify; without it, lists every contact and its state.
    pub user: Option<UserName>,
    /// Confirm without asking (the numbers were compared).
    #[arg(long)]
    pub yes: bool,
}

/// Runs `cove verify`.
pub async fn run(home: Home, args: VerifyArgs) -> anyhow::Result<()> {
    let Some(user) = args.user else {
        let device = Device::open_offline(&home).await?;
        let states = device.identities().await;
        device.close().await;
        let states = states?;
        if states.is_empty() {
            println!("no contacts yet");
        }
        for s in &states {
            println!("{:<16} {}", s.user.as_str(), status(s));
        }
        return Ok(());
    };
    let mut device = Device::open(&home).await?;
    if &user == device.user() {
        device.close().await;
        anyhow::bail!("{user} is this device's own user: verify other users");
    }
    let state = device.identity(&user).await;
    let result = match state {
        Ok(state) => confirm_and_verify(&device, &user, state, args.yes).await,
        Err(e) => Err(e.into()),
    };
    device.close().await;
    result
}

async fn confirm_and_verify(
    device: &Device,
    user: &UserName,
    state: Option<IdentityState>,
    yes: bool,
) -> anyhow::Result<()> {
    let state = state.with_context(|| {
        format!("no identity key known for {user}: they have no signed device list at the relay")
    })?;
    let number = state
        .safety_number
        .clone()
        .context("this device does not know its own user's identity key yet; run `cove sync`")?;
    println!("safety number with {user}:");
    println!("  {number}");
    println!("{user}'s identity key: {}", state.identity.to_hex());
    println!("state: {}", status(&state));
    if state.verification == Verification::Verified {
        println!("{user} is already verified");
        return Ok(());
    }
    if !yes && !ask(user)? {
        return Ok(());
    }
    device.verify_user(user, state.identity).await?;
    match state.verification {
        Verification::Changed { blocking: true } => {
            println!("{user} is verified; sending to groups with {user} works again")
        }
        _ => println!("{user} is verified"),
    }
    Ok(())
}

/// Asks whether the numbers match; false (with the reason on stderr) when they do not, or
/// when stdin is not a terminal to ask on.
fn ask(user: &UserName) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!(
            "not marked verified: stdin is not a terminal to confirm on; compare the number \
             with {user}, then run `cove verify {user} --yes`"
        );
        return Ok(false);
    }
    print!("Does {user} see the same number? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    let yes = matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes");
    if !yes {
        println!("not verified");
    }
    Ok(yes)
}

/// How a contact's state reads: `verified`, `unverified`, or a changed key.
fn status(s: &IdentityState) -> &'static str {
    match s.verification {
        Verification::Verified => "verified",
        Verification::Unverified => "unverified",
        Verification::Changed { blocking: false } => "changed (identity key changed; not verified)",
        Verification::Changed { blocking: true } => {
            "changed since verified (sending blocked until verified again)"
        }
    }
}
