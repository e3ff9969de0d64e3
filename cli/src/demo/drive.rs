//! The Cove Drive step of the demo (issue 14): alice puts a folder in her drive, her second
//! device lists it and syncs it to a local folder, and she shares the folder with bob, who lists it.

use anyhow::{Context as _, ensure};

use cove::{Device, Event, UserName, escape};
use cove_core::Content;
use cove_core::drive::DriveOp;

use super::{Demo, StepFuture};

const FILES: [(&str, &str); 2] = [
    (
        "itinerary.txt",
        "Day 1: the coast road. Day 2: the lighthouse (a drive file)\n",
    ),
    (
        "budget/fuel.txt",
        "Fuel: 3 tanks, split three ways (a drive file)\n",
    ),
];

fn names(entries: &[cove_core::drive::Entry]) -> String {
    entries
        .iter()
        .map(|e| escape(&e.name))
        .collect::<Vec<_>>()
        .join(", ")
}

const LAPTOP: &str = "alice-laptop";

fn is_snapshot(e: &Event) -> bool {
    matches!(
        e,
        Event::Content(c)
            if matches!(&c.content, Content::Drive(op) if matches!(**op, DriveOp::Snapshot { .. }))
    )
}

async fn laptop_gets_the_drive(d: &mut Demo) -> anyhow::Result<()> {
    d.expect(LAPTOP, "the drive's snapshot", is_snapshot)
        .await?;
    let laptop = d.user(LAPTOP)?;
    let listed = laptop.drive_ls("/road-trip").await?;
    println!("[alice's laptop] drive ls /road-trip: {}", names(&listed));
    // The laptop keeps a local folder in sync with the drive's /road-trip (one pass of
    // `cove drive sync`).
    let out = d.root.path().join("alice-laptop-files/road-trip");
    // The sync engine's state (SQLite) is not `Send`: its pass runs on a thread of its own
    // that drives it on this runtime.
    let runtime = tokio::runtime::Handle::current();
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            runtime.block_on(async {
                let mut syncer =
                    cove::drive::sync::Syncer::open(laptop, &out, "/road-trip", Box::new(|_| {}))
                        .await?;
                syncer.pass().await
            })
        })
        .join()
    })
    .map_err(|_| anyhow::anyhow!("the laptop's sync pass panicked"))??;
    for (rel, text) in FILES {
        let on_laptop = std::fs::read_to_string(out.join(rel))?;
        ensure!(on_laptop == text, "the laptop's {rel} differs");
    }
    println!(
        "[alice's laptop] drive sync ./road-trip /road-trip: {} files downloaded, {} folders \
         made, identical to the originals",
        report.downloaded, report.folders
    );
    Ok(())
}

pub fn drive(d: &mut Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let dir = d.root.path().join("alice-drive/road-trip");
        for (rel, text) in FILES {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().context("a parent")?)?;
            std::fs::write(&path, text).context("writing the demo drive files")?;
            d.sent.push(text.trim_end().to_owned());
        }
        d.sent.push("road-trip".into());
        d.sent.push("itinerary.txt".into());
        let put = d
            .user("alice")?
            .drive_put(&dir, "/", false)
            .await
            .context("alice putting a folder in her drive")?;
        println!(
            "[alice] drive put road-trip: {} files, {} folders, encrypted on her device",
            put.files, put.folders
        );

        let laptop = Device::link(d.user("alice")?, &d.home("alice-laptop"))
            .await
            .context("linking alice's laptop")?;
        // The laptop joins the drive's group and reads its tree from the snapshot alice's
        // first device posts after adding it.
        d.users.insert(LAPTOP, laptop);
        let result = laptop_gets_the_drive(d).await;
        if let Some(laptop) = d.users.remove(LAPTOP) {
            laptop.close().await;
        }
        result?;

        let bob = UserName::new("bob").context("bob's name")?;
        let shared = d
            .user("alice")?
            .drive_share("/road-trip", &bob, false)
            .await
            .context("alice sharing the folder with bob")?;
        println!("[alice] drive share /road-trip bob: bob sees it as {shared}");
        d.expect("bob", "the shared folder's snapshot", is_snapshot)
            .await?;
        let on_bob = d.user("bob")?.drive_shared().await?;
        for s in &on_bob {
            println!(
                "[bob] drive shared: {}:{} (members {})",
                escape(s.owner.as_ref().map(|o| o.as_str()).unwrap_or("?")),
                escape(s.name.as_deref().unwrap_or("?")),
                s.members
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let listed = d.user("bob")?.drive_ls(&shared).await?;
        println!("[bob] drive ls {shared}: {}", names(&listed));
        ensure!(
            listed.iter().any(|e| e.name == "itinerary.txt"),
            "bob does not see the shared folder's files"
        );
        d.summary.push(format!(
            "alice's drive: {} files synced to her laptop; road-trip shared with bob",
            put.files
        ));
        Ok(())
    })
}
