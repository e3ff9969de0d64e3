//! Headless Chromium: load a page, let its scripts finish, return the DOM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The DOM of `url` after its scripts ran. `None` (test skipped, with a note) only when
/// `COVE_SKIP_BROWSER=1` is set; a missing Chromium otherwise fails the test.
pub async fn dump_dom(url: &str) -> Option<String> {
    if std::env::var("COVE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("COVE_SKIP_BROWSER=1: share page browser test skipped");
        return None;
    }
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing (apt-get install chromium, or set COVE_SKIP_BROWSER=1)"
    );
    // `--dump-dom` dumps when virtual time runs out; on a loaded machine the page may still
    // be working then. A page still "loading" is retried; a finished one ("done" or "error")
    // is returned as it is.
    let mut dom = String::new();
    for _ in 0..4 {
        let url = url.to_owned();
        dom = tokio::task::spawn_blocking(move || run(&url))
            .await
            .unwrap();
        if !dom.contains("data-state=\"loading\"") {
            break;
        }
    }
    Some(dom)
}

fn run(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            // The test relay's certificate is self-signed.
            "--ignore-certificate-errors",
            "--virtual-time-budget=30000",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stdout), &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}
