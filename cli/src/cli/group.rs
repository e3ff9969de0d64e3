//! `cove group create|add|remove|leave` and `cove groups`.

use clap::{Args, Subcommand};

use cove::config::Home;
use cove::{Device, UserName};

/// `cove group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group with this device and your other devices as its members.
    #[command(after_help = "Example:\n  cove group create friends")]
    Create {
        /// The group's name, shown to every member.
        name: String,
    },
    /// Add users (all their devices, and any of your own devices missing) to a group.
    #[command(after_help = "Example:\n  cove group add friends bob carol")]
    Add {
        /// The group.
        name: String,
        /// The users to add.
        #[arg(required = true)]
        users: Vec<UserName>,
    },
    /// Remove users (all their devices) from a group.
    #[command(after_help = "Example:\n  cove group remove friends carol")]
    Remove {
        /// The group.
        name: String,
        /// The users to remove.
        #[arg(required = true)]
        users: Vec<UserName>,
    },
    /// Leave a group.
    #[command(after_help = "Example:\n  cove group leave friends")]
    Leave {
        /// The group.
        name: String,
    },
}

/// Arguments of `cove groups`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  cove groups")]
pub struct GroupsArgs {}

/// Runs `cove group ...`.
pub async fn run(home: Home, cmd: GroupCommand) -> anyhow::Result<()> {
    let device = Device::open(&home).await?;
    let result = match cmd {
        GroupCommand::Create { name } => device.create_group(&name).await.map(|g| {
            println!("created group {} ({})", g.name, g.id);
        }),
        GroupCommand::Add { name, users } => device.add_users(&name, &users).await.map(|()| {
            println!("added {} to {name}", join(&users));
        }),
        GroupCommand::Remove { name, users } => {
            device.remove_users(&name, &users).await.map(|()| {
                println!("removed {} from {name}", join(&users));
            })
        }
        GroupCommand::Leave { name } => device.leave(&name).await.map(|()| {
            println!("left {name}");
        }),
    };
    device.close().await;
    Ok(result?)
}

/// Runs `cove groups`.
pub async fn run_groups(home: Home, _args: GroupsArgs) -> anyhow::Result<()> {
    let device = Device::open_offline(&home).await?;
    let groups = device.groups().await;
    device.close().await;
    let groups = groups?;
    if groups.is_empty() {
        println!(
            "no groups yet (cove group create NAME, or ask someone to add you and run cove sync)"
        );
    }
    for g in groups {
        println!(
            "{}  {}  epoch {}  members: {}",
            g.name,
            g.id,
            g.epoch,
            g.members.join(", ")
        );
    }
    Ok(())
}

fn join(users: &[UserName]) -> String {
    users
        .iter()
        .map(|u| u.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
