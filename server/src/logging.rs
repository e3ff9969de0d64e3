//! The relay's log filter. Logs never carry payloads, keys, nonces or signatures: the relay's
//! own events log ids, sizes and error kinds only, and the WebSocket library, whose `trace`
//! output dumps frame payloads in hex, is capped at `info` whatever `RUST_LOG` says.

use tracing_subscriber::EnvFilter;

/// Targets whose verbose levels would print frame contents.
const CAPPED: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Builds the filter from a `RUST_LOG`-style spec (empty: `info`), capping the WebSocket
/// library at `info`. Invalid directives are ignored.
pub fn log_filter(spec: &str) -> EnvFilter {
    let mut directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| !CAPPED.iter().any(|t| d.starts_with(t)))
        .collect();
    if directives.is_empty() {
        directives.push("info");
    }
    let mut spec = directives.join(",");
    for target in CAPPED {
        spec.push_str(&format!(",{target}=info"));
    }
    EnvFilter::builder().parse_lossy(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_library_is_capped() {
        let f = log_filter("trace,tungstenite=trace").to_string();
        assert!(f.contains("tungstenite=info"), "{f}");
        assert!(!f.contains("tungstenite=trace"), "{f}");
    }
}
