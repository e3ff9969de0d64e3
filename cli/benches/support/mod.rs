//! What the CLI benchmarks share.

use std::path::Path;
use std::process::Command;

/// Runs the `cove` binary with `--home home` and `args`; panics with its stderr if it fails.
pub fn cove(home: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_cove"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("COVE_HOME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cove {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
