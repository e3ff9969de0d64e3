//! `cove devices`: the audio devices calls can use.

use clap::Args;

const HELP: &str = "\
Examples:
  cove devices                                        # inputs and outputs, * marks the default
  cove call friends --audio-in default --audio-out default
  cove call friends --audio-in cove_a_mon --audio-out cove_b   # named ALSA PCMs

Devices are ALSA PCMs (PulseAudio and PipeWire are reached through their ALSA plugins, e.g.
`pulse`). Pass the NAME column to --audio-in / --audio-out; `default` is the default device.";

/// Arguments of `cove devices`.
#[derive(Debug, Args)]
#[command(after_help = HELP)]
pub struct DevicesArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cove devices`.
#[cfg(feature = "devices")]
pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let devices = cove_media::device::list_devices().context("listing audio devices")?;
    if args.json {
        let list: Vec<_> = devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.name,
                    "description": d.description,
                    "input": d.input,
                    "output": d.output,
                    "default_input": d.default_input,
                    "default_output": d.default_output,
                    "rates": d.rates.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for (title, input) in [
        ("inputs (--audio-in)", true),
        ("outputs (--audio-out)", false),
    ] {
        println!("{title}:");
        let mut any = false;
        for d in devices
            .iter()
            .filter(|d| if input { d.input } else { d.output })
        {
            any = true;
            let default = if input {
                d.default_input
            } else {
                d.default_output
            };
            let rates: Vec<String> = d
                .rates
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        format!("{a}")
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            println!(
                "  {} {:<24} {:<40} {} Hz",
                if default { "*" } else { " " },
                cove::escape(&d.name),
                cove::escape(&d.description),
                rates.join(", ")
            );
        }
        if !any {
            println!("  (none)");
        }
    }
    Ok(())
}

/// Runs `cove devices` (built without the `devices` feature).
#[cfg(not(feature = "devices"))]
pub fn run(_args: DevicesArgs) -> anyhow::Result<()> {
    anyhow::bail!("this cove was built without audio device support (the `devices` feature)")
}
