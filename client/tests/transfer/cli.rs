//! The attachment commands through the built `cove` binary.

use std::path::Path;
use std::process::Command;

use super::{Env, random_bytes};
use cove_server::blob::BlobConfig;

fn cove(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cove"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(home: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = cove(home, args);
    assert!(success, "cove {args:?} failed: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_file_download_share_and_fetch_through_the_cli() {
    let env = Env::start(BlobConfig::default()).await;
    let server = env.url().trim_end_matches("/v1/ws").to_owned();
    let ca = env.work.path().join("ca.pem");
    std::fs::write(&ca, env.relay.as_ref().unwrap().cert_pem()).unwrap();
    let ca = ca.to_str().unwrap();
    let (alice, bob) = (env.work.path().join("alice"), env.work.path().join("bob"));
    ok(
        &alice,
        &["init", "--server", &server, "--user", "carla", "--ca", ca],
    );
    ok(
        &bob,
        &["init", "--server", &server, "--user", "dave", "--ca", ca],
    );
    ok(&alice, &["group", "create", "team"]);
    ok(&alice, &["group", "add", "team", "dave"]);
    let content = random_bytes((3 << 20) + 17, 42);
    let file = env.file("report.pdf", &content);
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

    let out = env.work.path().join("got.pdf");
    ok(
        &bob,
        &["download", "team", &id, "-o", out.to_str().unwrap()],
    );
    assert!(std::fs::read(&out).unwrap() == content);
    // Same target again: refused with a clear error, the existing file untouched.
    let (success, _, stderr) = cove(
        &bob,
        &["download", "team", &id, "-o", out.to_str().unwrap()],
    );
    assert!(!success && stderr.contains("already exists"), "{stderr}");
    let (success, _, stderr) = cove(&bob, &["download", "team", "00ff"]);
    assert!(
        !success && stderr.starts_with("error: no attachment"),
        "{stderr}"
    );

    let link = ok(&alice, &["share", file.to_str().unwrap()]);
    let link = link.trim();
    assert!(
        link.starts_with(&format!("{}/s/", server.replace("wss://", "https://"))),
        "{link}"
    );
    let fetched = env.work.path().join("fetched.pdf");
    let nobody = env.work.path().join("nobody");
    ok(
        &nobody,
        &["fetch", link, "--ca", ca, "-o", fetched.to_str().unwrap()],
    );
    assert!(std::fs::read(&fetched).unwrap() == content);
}
