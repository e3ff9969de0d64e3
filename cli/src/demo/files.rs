//! The attachment steps of the demo (issue 4): alice sends a file in the group, bob downloads
//! and verifies it, and alice shares a link that someone without an account fetches.

use std::sync::Arc;

use anyhow::{Context as _, ensure};

use cove::Event;
use cove::transport::{self, TlsTrust};

use super::{Demo, StepFuture};

const GROUP: &str = "friends";
const NOTE: &str = "Packing list for the trip: tent, stove, 3 maps (end-to-end encrypted file)\n";

pub fn send_and_share(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let dir = d.root.path().join("files");
        std::fs::create_dir_all(&dir).context("creating the demo file directory")?;
        let path = dir.join("packing-list.txt");
        std::fs::write(&path, NOTE).context("writing the demo file")?;
        d.sent.push(NOTE.trim_end().to_owned());

        let pointer = cove::transfer::send_file(d.user("alice")?, GROUP, &path, false)
            .await
            .context("alice sending a file")?;
        println!(
            "[alice] -> {GROUP}: file {} ({} bytes), encrypted on her device, attachment {}",
            pointer.name, pointer.size, pointer.blob_id
        );
        d.expect("bob", "alice's file", |e| {
            matches!(e, Event::Message(m) if m.attachment.as_ref().is_some_and(|a| a.blob_id == pointer.blob_id))
        })
        .await?;
        let bob_dir = d.root.path().join("bob-downloads");
        std::fs::create_dir_all(&bob_dir).context("creating bob's download directory")?;
        let got = cove::transfer::download(
            d.user("bob")?,
            GROUP,
            &pointer.blob_id.to_hex(),
            &bob_dir,
            false,
        )
        .await
        .context("bob downloading the file")?;
        let text = std::fs::read_to_string(&got).context("reading bob's download")?;
        ensure!(text == NOTE, "bob's download differs from alice's file");
        println!(
            "[bob] downloaded {}: verified (every chunk and the digest) and decrypted",
            got.display()
        );

        let link = cove::transfer::share(d.user("alice")?, &path, false)
            .await
            .context("alice sharing a link")?;
        println!("[alice] share link: {link}");
        let tls = Arc::new(transport::client_config(&TlsTrust::CaFile(d.ca.clone()))?);
        let out = d.root.path().join("fetched-packing-list.txt");
        cove::transfer::fetch(&link, tls, Some(&out), false)
            .await
            .context("fetching the share link")?;
        let fetched = std::fs::read_to_string(&out).context("reading the fetched file")?;
        ensure!(fetched == NOTE, "the fetched file differs");
        println!(
            "[guest] fetched the link without an account: same file; the key after '#' never reached the relay"
        );
        println!(
            "        (open the link in a browser while the demo relay runs to see the share page)"
        );
        d.summary.push(format!(
            "alice sent a {}-byte file that bob downloaded and verified; a share link fetched it again",
            pointer.size
        ));
        Ok(())
    })
}
