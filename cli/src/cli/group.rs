//! `cove group create|add|remove|leave|info|rename|describe|admin|mute|disappearing` and
//! `cove groups`.

use clap::{Args, Subcommand};

use cove::config::Home;
use cove::{Device, Sent, UserName, escape};

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
    /// Show a group's name, description, admins, disappearing timer, mute, unread count,
    /// epoch, epoch authenticator and member devices (no relay needed). Two members whose
    /// epoch and authenticator are equal are in the same MLS state.
    #[command(after_help = "\
Examples:
  cove group info friends
  cove group info friends --json

With --json one object: {\"name\",\"id\",\"epoch\",\"epoch_authenticator\",
\"members\":[{\"user\",\"device\",\"key\"}],\"description\",\"admins\",
\"disappearing_secs\",\"unread\",\"muted_until_ms\"} (ids and keys in hex).")]
    Info {
        /// The group (name or hex id).
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Rename a group (admins only); every member sees the new name.
    #[command(after_help = "Example:\n  cove group rename friends 'old friends'")]
    Rename {
        /// The group (name or hex id).
        name: String,
        /// Its new name.
        new_name: String,
    },
    /// Set a group's description (admins only).
    #[command(after_help = "Example:\n  cove group describe friends 'dinner plans and photos'")]
    Describe {
        /// The group (name or hex id).
        name: String,
        /// The description ('' clears it).
        text: String,
    },
    /// Set a group's avatar picture (admins only): it is encrypted and uploaded like a file
    /// sent to the group, and every member sees it in `cove group info`. --remove takes it
    /// away. At most 5 MiB.
    #[command(after_help = "\
Examples:
  cove group avatar friends ~/Pictures/beach.jpg
  cove group avatar friends --remove")]
    Avatar {
        /// The group (name or hex id).
        name: String,
        /// The picture.
        #[arg(required_unless_present = "remove", conflicts_with = "remove")]
        file: Option<std::path::PathBuf>,
        /// Remove the avatar instead.
        #[arg(long)]
        remove: bool,
    },
    /// Make a member an admin of a group, or with --remove no longer one (admins only).
    /// Admins add, remove, rename, delete anyone's messages, promote and demote.
    #[command(after_help = "\
Examples:
  cove group admin friends bob
  cove group admin friends bob --remove")]
    Admin {
        /// The group (name or hex id).
        name: String,
        /// The member.
        user: UserName,
        /// Take admin away instead.
        #[arg(long)]
        remove: bool,
    },
    /// Mute a group on this device (nobody else learns it): `cove groups` still counts its
    /// unread messages.
    #[command(after_help = "\
Examples:
  cove group mute friends            # for ever
  cove group mute friends 8h         # also 30m, 1h, 7d, ...
  cove group mute friends off")]
    Mute {
        /// The group (name or hex id).
        name: String,
        /// How long: a duration (30m, 1h, 8h, 7d), `forever` or `off`.
        #[arg(default_value = "forever")]
        duration: String,
    },
    /// Turn disappearing messages on or off for every member: messages sent after it
    /// vanish from every device that long after they arrive.
    #[command(after_help = "\
Examples:
  cove group disappearing friends 1h    # also 30s, 5m, 7d, 2w
  cove group disappearing friends off")]
    Disappearing {
        /// The group (name or hex id).
        name: String,
        /// The timer (30s, 5m, 1h, 7d) or `off`.
        timer: String,
    },
}

/// The largest avatar picture `cove group avatar` uploads.
pub(super) const MAX_AVATAR_BYTES: u64 = 5 * 1024 * 1024;

/// Refuses what is not a picture-sized file before anything is uploaded.
pub(super) fn check_avatar(path: &std::path::Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", path.display());
    anyhow::ensure!(
        meta.len() <= MAX_AVATAR_BYTES,
        "{} is {} bytes; an avatar is at most 5 MiB",
        path.display(),
        meta.len()
    );
    Ok(())
}

/// The timer of `cove group disappearing` (`None`: off).
pub(super) fn parse_timer(text: &str) -> anyhow::Result<Option<u32>> {
    if text == "off" {
        return Ok(None);
    }
    match cove::parse_duration(text) {
        Some(secs) => Ok(Some(secs)),
        None => anyhow::bail!(
            "invalid argument: {:?} is not a duration (e.g. 30s, 5m, 1h, 7d, or off)",
            escape(text)
        ),
    }
}

/// Until when `cove group mute` mutes (`None`: unmuted; `u64::MAX`: for ever).
fn parse_mute(text: &str) -> anyhow::Result<Option<u64>> {
    match text {
        "forever" => Ok(Some(u64::MAX)),
        "off" => Ok(None),
        t => {
            let Some(secs) = cove::parse_duration(t) else {
                anyhow::bail!(
                    "invalid argument: {:?} is not a duration (e.g. 1h, 8h, 7d, forever, or off)",
                    escape(t)
                );
            };
            Ok(Some(
                cove::session::now_ms().saturating_add(u64::from(secs) * 1000),
            ))
        }
    }
}

/// How a mute reads: `muted`, `muted until TIME`.
pub(super) fn muted(until_ms: Option<u64>) -> Option<String> {
    match until_ms {
        Some(u64::MAX) => Some("muted".to_owned()),
        Some(until) if until > cove::session::now_ms() => {
            Some(format!("muted until {}", super::messages::stamp(until)))
        }
        _ => None,
    }
}

/// Arguments of `cove groups`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove groups

One line per group: `NAME  ID  epoch N  members: ...`, then `  (3 unread)` when messages of
others are not read yet on this device (`cove sync`, `listen` and `tui` read them) and
`  muted` when muted (`cove group mute`).")]
pub struct GroupsArgs {}

/// Runs `cove group ...`.
pub async fn run(home: Home, cmd: GroupCommand) -> anyhow::Result<()> {
    match &cmd {
        GroupCommand::Info { name, json } => return run_info(home, name, *json).await,
        GroupCommand::Mute { name, duration } => {
            let until = parse_mute(duration)?;
            let device = Device::open_offline(&home).await?;
            let result = device.mute(name, until).await;
            device.close().await;
            result?;
            match muted(until) {
                Some(m) => println!("{} is {m}", escape(name)),
                None => println!("{} is no longer muted", escape(name)),
            }
            return Ok(());
        }
        GroupCommand::Disappearing { timer, .. } => {
            parse_timer(timer)?;
        }
        _ => {}
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
        GroupCommand::Rename { name, new_name } => device
            .rename_group(&name, &new_name)
            .await
            .map(|sent| super::chat::report(sent, "renamed", &name)),
        GroupCommand::Describe { name, text } => device
            .describe_group(&name, &text)
            .await
            .map(|sent| super::chat::report(sent, "set the description of", &name)),
        GroupCommand::Avatar { name, file, .. } => {
            let avatar = match file {
                Some(path) => {
                    check_avatar(&path)?;
                    let blobs = cove::transfer::BlobClient::for_device(&device).await?;
                    Some(blobs.upload_file(&path).await?)
                }
                None => None,
            };
            let what = if avatar.is_some() {
                "set the avatar of"
            } else {
                "removed the avatar of"
            };
            device
                .set_group_avatar(&name, avatar)
                .await
                .map(|sent| super::chat::report(sent, what, &name))
        }
        GroupCommand::Admin { name, user, remove } => {
            device.set_admin(&name, &user, remove).await.map(|()| {
                if remove {
                    println!("{} is no longer an admin of {}", user, escape(&name));
                } else {
                    println!("{} is an admin of {}", user, escape(&name));
                }
            })
        }
        GroupCommand::Disappearing { name, timer } => {
            let secs = parse_timer(&timer)?;
            device.set_disappearing(&name, secs).await.map(|sent| {
                let what = match secs {
                    Some(t) => format!("set disappearing messages to {}", cove::format_duration(t)),
                    None => "turned disappearing messages off".to_owned(),
                };
                match sent {
                    Sent::Delivered => println!("{what} in {}", escape(&name)),
                    Sent::Queued => super::chat::report(sent, "", &name),
                }
            })
        }
        GroupCommand::Info { .. } | GroupCommand::Mute { .. } => Ok(()),
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
            "{}  {}  epoch {}  members: {}{}",
            escape(&g.name),
            g.id,
            g.epoch,
            members.join(", "),
            group_marks(u64::from(g.unread), g.muted_until_ms)
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
        for line in info.lines(super::messages::stamp) {
            println!("{line}");
        }
    }
    Ok(())
}

/// What `cove groups` adds to a group's line: `  (3 unread)`, `  muted`.
pub(super) fn group_marks(unread: u64, muted_until_ms: Option<u64>) -> String {
    let mut out = String::new();
    if unread > 0 {
        out.push_str(&format!("  ({unread} unread)"));
    }
    if let Some(m) = muted(muted_until_ms) {
        out.push_str(&format!("  {m}"));
    }
    out
}

fn join(users: &[UserName]) -> String {
    users
        .iter()
        .map(|u| escape(u.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
