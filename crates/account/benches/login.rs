//! What a password login costs the client: one OPAQUE registration and login through both
//! halves (in process, no network), against the bare Argon2id evaluation at the same
//! parameters measured in the same run. Peak memory of the stretching is the Argon2 memory
//! parameter by construction (`KSF_PARAMS.memory_kib`).
//!
//! `cargo bench -p cove-account --bench login` (`LOGIN_REPS`, default 5).

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, Version};
use cove_account::opaque::{
    client_login_finish, client_login_start, client_register_finish, client_register_start,
    server_login_finish, server_login_start, server_register_finish, server_register_start,
};
use cove_account::{KSF_PARAMS, KSF_VERSION, ServerSecrets};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::var("LOGIN_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let p = KSF_PARAMS;
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(p.memory_kib, p.iterations, p.lanes, Some(64)).expect("params"),
    );
    let secrets = ServerSecrets::generate();
    let (mut bare, mut reg, mut login) = (vec![], vec![], vec![]);
    let mut record = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        let mut out = [0u8; 64];
        argon
            .hash_password_into(b"password", &[0u8; 16], &mut out)
            .expect("argon2");
        bare.push(t.elapsed());

        let t = Instant::now();
        let (s, req) = client_register_start(b"password").expect("start");
        let resp = server_register_start(&secrets, "alice", &req).expect("server");
        let (upload, _) = client_register_finish(s, "alice", &resp).expect("finish");
        record = server_register_finish(&upload).expect("record");
        reg.push(t.elapsed());

        let t = Instant::now();
        let (c, req) = client_login_start(b"password").expect("login start");
        let (sv, resp) = server_login_start(&secrets, "alice", Some(&record), &req).expect("s");
        let done = client_login_finish(c, "alice", KSF_VERSION, &resp).expect("login");
        server_login_finish(sv, "alice", &done.finalization).expect("server finish");
        login.push(t.elapsed());
    }
    let (bare, reg, login) = (median(bare), median(reg), median(login));
    println!(
        "Argon2id m={} MiB t={} p={}, {reps} reps, medians",
        p.memory_kib / 1024,
        p.iterations,
        p.lanes
    );
    println!(
        "bare Argon2id (baseline)   {:>8.1} ms",
        bare.as_secs_f64() * 1e3
    );
    println!(
        "OPAQUE registration         {:>8.1} ms  ({:.2}x baseline)",
        reg.as_secs_f64() * 1e3,
        reg.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "OPAQUE login (both halves)  {:>8.1} ms  ({:.2}x baseline)",
        login.as_secs_f64() * 1e3,
        login.as_secs_f64() / bare.as_secs_f64()
    );
    println!("record size                 {:>8} B", record.len());
}
