//! The attachment commands through the built `cove` binary.

use rand::{RngCore, SeedableRng};

use super::{fails, init, ok, relay};

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_file_download_share_and_fetch_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, server, ca) = relay(dir.path()).await;
    let ca = ca.as_str();
    let work = dir.path();
    let (alice, bob) = (work.join("alice"), work.join("bob"));
    init(&alice, &server, ca, "carla");
    init(&bob, &server, ca, "dave");
    ok(&alice, &["group", "create", "team"]);
    ok(&alice, &["group", "add", "team", "dave"]);
    let content = random_bytes((3 << 20) + 17, 42);
    let file = work.join("report.pdf");
    std::fs::write(&file, &content).unwrap();
    let sent = ok(&alice, &["send-file", "team", file.to_str().unwrap()]);
    assert!(sent.contains("report.pdf"), "{sent}");

    let synced = ok(&bob, &["sync", "--json"]);
    let line = synced
        .lines()
        .find(|l| l.contains("\"attachment\""))
        .expect("an attachment line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let a = &v["attachment"];
    assert_eq!(a["name"], "report.pdf");
    assert_eq!(a["size"], content.len() as u64);
    assert_eq!(a["type"], "application/pdf");
    assert!(
        !line.contains("key"),
        "the JSON view must not carry the key: {line}"
    );
    let id = a["id"].as_str().unwrap().to_owned();

    let out = work.join("got.pdf");
    ok(
        &bob,
        &["download", "team", &id, "-o", out.to_str().unwrap()],
    );
    assert!(std::fs::read(&out).unwrap() == content);
    // Same target again: refused with a clear error, the existing file untouched.
    let stderr = fails(
        &bob,
        &["download", "team", &id, "-o", out.to_str().unwrap()],
    );
    assert!(stderr.contains("already exists"), "{stderr}");
    let stderr = fails(&bob, &["download", "team", "0000000000000000"]);
    assert!(stderr.starts_with("error: no attachment"), "{stderr}");
    // The message's short id (as `cove history` shows it) names the file too.
    let short = &v["id"].as_str().unwrap()[..8];
    let by_short = work.join("by-short-id.pdf");
    ok(
        &bob,
        &["download", "team", short, "-o", by_short.to_str().unwrap()],
    );
    assert!(std::fs::read(&by_short).unwrap() == content);

    let link = ok(&alice, &["share", file.to_str().unwrap()]);
    let link = link.trim();
    assert!(
        link.starts_with(&format!("{}/s/", server.replace("wss://", "https://"))),
        "{link}"
    );
    let fetched = work.join("fetched.pdf");
    let nobody = work.join("nobody");
    ok(
        &nobody,
        &["fetch", link, "--ca", ca, "-o", fetched.to_str().unwrap()],
    );
    assert!(std::fs::read(&fetched).unwrap() == content);
}
