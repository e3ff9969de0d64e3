//! `cove group create|add|remove|leave|info` and `cove groups`.

use clap::{Args, Subcommand};

use cove::config::Home;
use cove::{Device, UserName, escape};

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
    /// Show a group's epoch, epoch authenticator and member devices (no relay needed).
    /// Two members whose epoch and authenticator are equal are in the same MLS state.
    #[command(after_help = "\
Examples:
  cove group info friends
  cove group info friends --json

With --json one object: {\"name\",\"id\",\"epoch\",\"epoch_authenticator\",
\"members\":[{\"user\",\"device\",\"key\"}]} (ids and keys in hex).")]
    Info {
        /// The group (name or hex id).
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `cove groups`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  cove groups")]
pub struct GroupsArgs {}

/// Runs `cove group ...`.
pub async fn run(home: Home, cmd: GroupCommand) -> anyhow::Result<()> {
    if let GroupCommand::Info { name, json } = cmd {
        return run_info(home, &name, json).await;
    }
    let device = Device::open(&home).await?;
    let result = match cmd {
        GroupCommand::Create { name } => device.create_group(&name).await.map(|g| {
            println!("created group {} ({})", escape(&g.name), g.id);
        }),
        GroupCommand::Add { name, users } => device.add_users(&name, &users).await.map(|()| {
            println!("added {} to {}", join(&users), escape(&name));
        }),
        GroupCommand::Remove { name, users } => {
            device.remove_users(&name, &users).await.map(|()| {
                println!("removed {} from {}", join(&users), escape(&name));
            })
        }
        GroupCommand::Leave { name } => device.leave(&name).await.map(|()| {
            println!("left {}", escape(&name));
        }),
        GroupCommand::Info { .. } => Ok(()),
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
        let members: Vec<String> = g.members.iter().map(|m| escape(m)).collect();
        println!(
            "{}  {}  epoch {}  members: {}",
            escape(&g.name),
            g.id,
            g.epoch,
            members.join(", ")
        );
    }
    Ok(())
}

/// Runs `cove group info`: local state only, so it works offline.
async fn run_info(home: Home, name: &str, json: bool) -> anyhow::Result<()> {
    let device = Device::open_offline(&home).await?;
    let info = device.group_info(name).await;
    device.close().await;
    let Some(info) = info? else {
        anyhow::bail!("not a member of group {}", escape(name));
    };
    if json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        for line in info.lines() {
            println!("{line}");
        }
    }
    Ok(())
}

fn join(users: &[UserName]) -> String {
    users
        .iter()
        .map(|u| escape(u.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
