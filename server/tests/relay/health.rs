//! `/health` and `/metrics` on the relay's HTTPS listener (issue 15, item 4): real relay,
//! real TLS, HTTP/1.1 requests written by hand as the blob tests do.

use std::collections::HashMap;

use cove_test_utils::{DEFAULT_TIMEOUT, TestRelay, connect_tls};
use cove_wire::{Epoch, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{group_entry, group_with, relay};

/// One response: status code, lower-cased head, body.
struct HttpResponse {
    status: u16,
    head: String,
    body: String,
}

/// `GET path` over a fresh TLS connection (`connection: close`), read to the end.
async fn get(relay: &TestRelay, path: &str) -> HttpResponse {
    let mut tls = connect_tls(relay.addr(), relay.tls()).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        relay.addr()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut raw = Vec::new();
    // The relay closes the connection after the response (TLS close_notify or not).
    let _ = tokio::time::timeout(DEFAULT_TIMEOUT, tls.read_to_end(&mut raw))
        .await
        .expect("response in time");
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    HttpResponse {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses Prometheus text exposition (0.0.4): every line is `# HELP name text`,
/// `# TYPE name kind` or `name{label="value",...} number`; panics on anything else.
/// Returns the samples by `name{labels}` (as written).
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a text");
            assert!(is_metric_name(name), "bad HELP name: {line}");
            assert!(!help.is_empty(), "empty HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(is_metric_name(name), "bad TYPE name: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE kind: {line}"
            );
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels end with }");
                for label in labels.split(',') {
                    let (key, value) = label.split_once('=').expect("label is key=value");
                    assert!(is_metric_name(key), "bad label name: {line}");
                    assert!(
                        value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                        "label value not quoted: {line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(is_metric_name(name), "bad sample name: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "sample without TYPE: {line}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "sample twice: {line}"
        );
    }
    samples
}

pub(crate) async fn scrape(relay: &TestRelay) -> HashMap<String, f64> {
    let r = get(relay, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.head
            .contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        r.head
    );
    parse_prometheus(&r.body)
}

pub(crate) fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {samples:?}"))
}

/// `GET /health` answers `200` with `{"status":"ok"}` as JSON while the relay serves, and
/// an unknown path is still `404`.
#[tokio::test]
async fn health_is_200_ok_json_and_unknown_paths_stay_404() {
    let relay = relay().await;
    let r = get(&relay, "/health").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.head.contains("\r\ncontent-type: application/json"),
        "{}",
        r.head
    );
    assert_eq!(r.body, r#"{"status":"ok"}"#);

    let r = get(&relay, "/healthz").await;
    assert_eq!(r.status, 404, "{}", r.head);
    let r = get(&relay, "/metrics/x").await;
    assert_eq!(r.status, 404, "{}", r.head);
}

/// `/metrics` parses as Prometheus text; after two registrations, a group commit with a
/// Welcome, an application post delivered to the other member and two acks, the counters
/// moved by exactly what happened (2 posts, 4 deliveries, 2 acks), the gauges show the two
/// online devices, and one store batch at least was timed.
#[tokio::test]
async fn metrics_parse_and_move_after_register_post_delivery_and_ack() {
    let relay = relay().await;
    let before = scrape(&relay).await;
    for series in [
        "cove_relay_posts_accepted_total",
        "cove_relay_deliveries_total",
        "cove_relay_acks_total",
        "cove_relay_devices_online",
        "cove_relay_outbound_queue_bytes",
        "cove_relay_blob_bytes_total{direction=\"up\"}",
        "cove_relay_blob_bytes_total{direction=\"down\"}",
        "cove_relay_store_batch_seconds_count",
    ] {
        assert_eq!(sample(&before, series), 0.0, "{series} at start");
    }
    assert!(sample(&before, "cove_relay_uptime_seconds") >= 0.0);
    // The scrape's own connection is open while it is served.
    assert!(sample(&before, "cove_relay_connections_open") >= 1.0);

    let (mut alice, _alice_keys) = relay.register("alice").await.unwrap();
    let (mut bob, bob_keys) = relay.register("bob").await.unwrap();
    // A commit adding Bob (with a Welcome that Bob acks).
    let group = group_with(&mut alice, &mut [(&mut bob, &bob_keys)]).await;
    let seq = alice.post_app(group, Epoch(1), b"hello").await.unwrap();
    // Bob gets the commit (his cursor starts at it) and the post; he acks up to the post.
    let mut got = Vec::new();
    while got.last() != Some(&seq) {
        let entry = group_entry(bob.next_delivery().await.unwrap());
        got.push(entry.seq);
    }
    bob.ack(Stream::Group(group), seq).await.unwrap();

    let after = scrape(&relay).await;
    assert_eq!(sample(&after, "cove_relay_posts_accepted_total"), 2.0);
    assert_eq!(sample(&after, "cove_relay_acks_total"), 2.0);
    // The commit to Alice (an added device is not a recipient of the commit adding it), the
    // Welcome to Bob, and the post to both.
    assert_eq!(sample(&after, "cove_relay_deliveries_total"), 4.0);
    assert_eq!(sample(&after, "cove_relay_devices_online"), 2.0);
    // Alice's, Bob's and the scrape's connections.
    assert!(sample(&after, "cove_relay_connections_open") >= 3.0);
    let batches = sample(&after, "cove_relay_store_batch_seconds_count");
    assert!(batches >= 1.0, "{after:?}");
    assert_eq!(
        sample(&after, "cove_relay_store_batch_seconds_bucket{le=\"+Inf\"}"),
        batches
    );
    assert!(sample(&after, "cove_relay_store_batch_seconds_sum") >= 0.0);
    assert!(
        sample(&after, "cove_relay_uptime_seconds") >= sample(&before, "cove_relay_uptime_seconds")
    );
}

/// A 3000-byte blob uploaded and then downloaded whole moves
/// `cove_relay_blob_bytes_total` by exactly 3000 each way.
#[tokio::test]
async fn metrics_count_blob_bytes_up_and_down() {
    let relay = relay().await;
    let (_alice, keys) = relay.register("alice").await.unwrap();
    let data = vec![b'x'; 3000];
    let id = crate::resources::upload(&relay, &keys, &data).await;
    let r = get(&relay, &format!("/v1/blobs/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body.as_bytes(), data.as_slice());
    let m = scrape(&relay).await;
    assert_eq!(
        sample(&m, "cove_relay_blob_bytes_total{direction=\"up\"}"),
        3000.0
    );
    assert_eq!(
        sample(&m, "cove_relay_blob_bytes_total{direction=\"down\"}"),
        3000.0
    );
}

/// On the SQLite store `/health` is `200`; once the store fails (here: the table the probe
/// reads was dropped behind the relay's back) it answers `503` with the reason
/// `store failed`.
#[tokio::test]
async fn health_is_503_store_failed_when_the_store_fails() {
    let relay = TestRelay::sqlite().await;
    let r = get(&relay, "/health").await;
    assert_eq!(r.status, 200, "{}", r.head);
    let db = rusqlite::Connection::open(relay.data_dir().join("relay.db")).unwrap();
    db.execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE devices;")
        .unwrap();
    let r = get(&relay, "/health").await;
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(
        r.head.contains("\r\ncontent-type: application/json"),
        "{}",
        r.head
    );
    assert_eq!(
        r.body,
        r#"{"status":"unavailable","reason":"store failed"}"#
    );
}
