//! The device steps of the demo (issue 9): bob links his laptop by a one-time code (the
//! laptop shares nothing with bob's first device but the code), the laptop is in bob's
//! groups with their history and reads what comes next; then bob revokes it and it is
//! locked out.

use anyhow::{Context as _, bail, ensure};

use cove::{Device, Event};
use cove_core::IdentityEvent;

use super::{Demo, StepFuture};
use crate::cli::device::link_progress_lines;

const GROUP: &str = "friends";
const LAPTOP: &str = "bob-laptop";

pub fn link_laptop(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let home = d.home(LAPTOP);
        let server = d.server.clone();
        let ca = d.ca.clone();
        let (code_tx, code_rx) = tokio::sync::oneshot::channel::<String>();
        let mut code_tx = Some(code_tx);
        let bob = d.users.get_mut("bob").context("bob is not online")?;
        let host = bob.link_by_code(|p| {
            if let cove::LinkProgress::Code(code) = &p
                && let Some(tx) = code_tx.take()
            {
                let _ = tx.send(code.clone());
            }
            for line in link_progress_lines(&p, &server, true) {
                println!("[bob] {line}");
            }
        });
        let joiner = async {
            let code = code_rx.await.context("bob's device showed no code")?;
            println!("[{LAPTOP}] cove device join {code} --server {server} --ca ...");
            Device::join_by_code(&home, &server, Some(&ca), &code, |p| {
                for line in link_progress_lines(&p, &server, false) {
                    println!("[{LAPTOP}] {line}");
                }
            })
            .await
            .context("the laptop joining by the code")
        };
        let (linked, laptop) = tokio::join!(host, joiner);
        let linked = linked.context("bob linking his laptop")?;
        let laptop = laptop?;
        ensure!(
            laptop.device_id() == Some(linked),
            "the laptop registered as {:?}, bob linked {linked}",
            laptop.device_id()
        );
        let history = laptop.history(GROUP).await?;
        println!(
            "[{LAPTOP}] {GROUP} has {} earlier messages, e.g.: {}",
            history.len(),
            history.first().map(|m| m.line()).unwrap_or_default()
        );
        ensure!(
            history.iter().any(|m| m.text == "hi alice, hi carol"),
            "the laptop did not get the group's history"
        );
        d.users.insert(LAPTOP, laptop);
        d.say("alice", GROUP, "welcome, bob's laptop").await?;
        d.expect_text(&[LAPTOP], "welcome, bob's laptop").await?;
        d.summary.push(format!(
            "bob linked a laptop by a one-time code (SPAKE2 over the relay); it got {} messages of history and reads new ones",
            history.len()
        ));
        Ok(())
    })
}

pub fn revoke_laptop(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let key = d.user(LAPTOP)?.session().call(|c| c.device_key()).await?;
        let bob = d.users.get_mut("bob").context("bob is not online")?;
        let revoked = bob.revoke_device(&key.to_hex()).await?;
        println!("[bob] revoked device {}", &revoked[..16]);
        d.expect(LAPTOP, "its removal from the group", |e| {
            matches!(e, Event::RemovedFromGroup { .. })
        })
        .await?;
        d.expect("alice", "bob's revocation", |e| {
            matches!(e, Event::Identity(IdentityEvent::DeviceRevoked { .. }))
        })
        .await?;
        if let Some(laptop) = d.users.remove(LAPTOP) {
            laptop.close().await;
        }
        let mut laptop = Device::open(&d.home(LAPTOP)).await?;
        match laptop.sync().await {
            Err(e) if e.to_string().contains("revoked by its user") => {
                println!("[{LAPTOP}] cove sync: {e}")
            }
            Err(e) => {
                laptop.close().await;
                bail!("the revoked laptop failed otherwise: {e}")
            }
            Ok(_) => {
                laptop.close().await;
                bail!("the revoked laptop could still log in")
            }
        }
        laptop.close().await;
        d.summary.push(
            "bob revoked the laptop: it was removed from the group at once and the relay refuses its logins".into(),
        );
        Ok(())
    })
}
