//! Client-side MLS costs through cove-core next to bare openmls 0.9.2, in the same run
//! (issue 3, item 6): encrypt + decrypt of a 1 KiB application message, and commit create /
//! process at 10, 100 and 1,000 members. cove-core runs on its `MemoryStore` (so storage
//! costs compare with openmls's own in-memory storage) and, for messages, also on
//! `SqliteStore` (WAL, synchronous=FULL) for the durable cost.
//!
//! Run: `cargo bench -p cove-core --bench mls` (add `-- --quick` for fewer iterations).
//! Benchmarks may read the clock; the core itself never does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    missing_docs
)]

#[path = "../tests/core/relay.rs"]
mod relay;

use std::time::{Duration, Instant};

use cove_core::cove_store::{Durability, MemoryStore, SqliteStore, Store};
use cove_core::{CIPHERSUITE, Client, DEVICE_CERTIFICATE_EXTENSION, Event, credential_identity};
use cove_wire::{DeviceKey, UserName};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use relay::Net;

fn user(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

/// Median of samples.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

// ----------------------------------------------------------------------------------------
// Bare openmls
// ----------------------------------------------------------------------------------------

struct Bare {
    alice: (OpenMlsRustCrypto, SignatureKeyPair, MlsGroup),
    bob: (OpenMlsRustCrypto, MlsGroup),
}

fn bare_member(name: &str) -> (OpenMlsRustCrypto, SignatureKeyPair, CredentialWithKey) {
    let p = OpenMlsRustCrypto::default();
    let s = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
    s.store(p.storage()).unwrap();
    let c = CredentialWithKey {
        credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
        signature_key: s.to_public_vec().into(),
    };
    (p, s, c)
}

fn bare_group(n: usize) -> Bare {
    let (ap, asig, acred) = bare_member("alice");
    let (bp, bsig, bcred) = bare_member("bob");
    let mut kps = vec![
        KeyPackage::builder()
            .build(CIPHERSUITE, &bp, &bsig, bcred)
            .unwrap()
            .key_package()
            .clone(),
    ];
    let (dp, _, _) = bare_member("dummy");
    for i in 2..n {
        let dsig = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        let cred = CredentialWithKey {
            credential: BasicCredential::new(format!("dummy{i}").into_bytes()).into(),
            signature_key: dsig.to_public_vec().into(),
        };
        kps.push(
            KeyPackage::builder()
                .build(CIPHERSUITE, &dp, &dsig, cred)
                .unwrap()
                .key_package()
                .clone(),
        );
    }
    let cfg = MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(cove_core::MAX_PAST_EPOCHS)
        .build();
    let mut g = MlsGroup::new(&ap, &asig, &cfg, acred).unwrap();
    let (_, welcome, _) = g.add_members(&ap, &asig, &kps).unwrap();
    g.merge_pending_commit(&ap).unwrap();
    let w = welcome.to_bytes().unwrap();
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(&w).unwrap().extract()
    else {
        panic!()
    };
    let jc = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(cove_core::MAX_PAST_EPOCHS)
        .build();
    let bg = StagedWelcome::new_from_welcome(&bp, &jc, w, None)
        .unwrap()
        .into_group(&bp)
        .unwrap();
    assert_eq!(g.members().count(), n.max(2));
    Bare {
        alice: (ap, asig, g),
        bob: (bp, bg),
    }
}

fn bare_message(b: &mut Bare, payload: &[u8]) -> (Duration, Duration) {
    let (ap, asig, ag) = &mut b.alice;
    let t = Instant::now();
    let bytes = ag
        .create_message(ap, asig, payload)
        .unwrap()
        .to_bytes()
        .unwrap();
    let enc = t.elapsed();
    let (bp, bg) = &mut b.bob;
    let t = Instant::now();
    let pm = MlsMessageIn::tls_deserialize_exact(&bytes)
        .unwrap()
        .try_into_protocol_message()
        .unwrap();
    let ProcessedMessageContent::ApplicationMessage(m) =
        bg.process_message(bp, pm).unwrap().into_content()
    else {
        panic!()
    };
    let dec = t.elapsed();
    assert_eq!(m.into_bytes().len(), payload.len());
    (enc, dec)
}

fn bare_commit(b: &mut Bare) -> (Duration, Duration) {
    let (ap, asig, ag) = &mut b.alice;
    let t = Instant::now();
    let bundle = ag
        .self_update(ap, asig, LeafNodeParameters::default())
        .unwrap();
    let bytes = bundle.commit().to_bytes().unwrap();
    ag.merge_pending_commit(ap).unwrap();
    let create = t.elapsed();
    let (bp, bg) = &mut b.bob;
    let t = Instant::now();
    let pm = MlsMessageIn::tls_deserialize_exact(&bytes)
        .unwrap()
        .try_into_protocol_message()
        .unwrap();
    let ProcessedMessageContent::StagedCommitMessage(sc) =
        bg.process_message(bp, pm).unwrap().into_content()
    else {
        panic!()
    };
    bg.merge_staged_commit(bp, *sc).unwrap();
    let process = t.elapsed();
    assert_eq!(
        ag.epoch_authenticator().as_slice(),
        bg.epoch_authenticator().as_slice()
    );
    (create, process)
}

// ----------------------------------------------------------------------------------------
// cove-core
// ----------------------------------------------------------------------------------------

struct Cove<S: Store> {
    net: Net<S>,
    alice: usize,
    bob: usize,
}

fn cove_group<S: Store>(mut net: Net<S>, make: &mut dyn FnMut(&str) -> S, n: usize) -> Cove<S> {
    let alice = net.add(Client::init(make("alice"), user("alice"), [1; 32]).unwrap());
    net.run();
    let bob = net.add(Client::init(make("bob"), user("bob"), [2; 32]).unwrap());
    net.run();
    // Members 3..n are registered directly at the relay with a signed device list and one
    // KeyPackage each (carrying the device's certificate).
    let dp = OpenMlsRustCrypto::default();
    let caps = Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        Some(&[ExtensionType::Unknown(DEVICE_CERTIFICATE_EXTENSION)]),
        None,
        None,
    );
    let mut dummies = Vec::new();
    for i in 2..n {
        let name = user(&format!("dummy{i}"));
        let sig = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        let key = DeviceKey(sig.public().try_into().unwrap());
        let device = net.relay.register_raw(name.clone(), key);
        let identity = cove_core::cove_identity::IdentitySigner::new(name.clone(), &[7; 32]);
        let device_name = cove_wire::identity::DeviceName::new("dummy").unwrap();
        let list = identity.create(key, device_name, 1).unwrap();
        net.relay.publish_list_raw(&name, list.entries().to_vec());
        let cert = list.certificate(&key).unwrap();
        let extensions = Extensions::single(Extension::Unknown(
            DEVICE_CERTIFICATE_EXTENSION,
            UnknownExtension(cove_wire::encode(&cert).unwrap()),
        ))
        .unwrap();
        let cred = CredentialWithKey {
            credential: BasicCredential::new(credential_identity(&name, device)).into(),
            signature_key: sig.to_public_vec().into(),
        };
        let kp = KeyPackage::builder()
            .leaf_node_capabilities(caps.clone())
            .leaf_node_extensions(extensions)
            .build(CIPHERSUITE, &dp, &sig, cred)
            .unwrap();
        let bytes = MlsMessageOut::from(kp.key_package().clone())
            .to_bytes()
            .unwrap();
        net.relay.upload_raw(device, bytes.into());
        dummies.push(name);
    }
    let now = net.now_ms;
    net.client(alice).create_group(now, "bench").unwrap();
    net.run();
    let mut users = vec![user("bob")];
    users.extend(dummies.iter().cloned());
    net.client(alice).add_users(now, "bench", &users).unwrap();
    net.run();
    for slot in [alice, bob] {
        let events = std::mem::take(&mut net.nodes[slot].events);
        for e in events {
            if let Event::OpDone { result: Err(e), .. } = &e {
                panic!("setup failed: {e}");
            }
            if let Event::Warning(w) = &e {
                panic!("setup warning: {w}");
            }
        }
    }
    assert!(
        net.client(bob).groups().first().is_some_and(|g| g.active),
        "bob joined"
    );
    Cove { net, alice, bob }
}

/// Handles the frames waiting for `slot`, timed (outputs stay queued, not timed).
fn handle_inbound<S: Store>(net: &mut Net<S>, slot: usize) -> Duration {
    let now = net.now_ms;
    let frames: Vec<_> = net.nodes[slot].inbound.drain(..).collect();
    let t = Instant::now();
    for f in frames {
        net.client(slot).handle_frame(now, f).unwrap();
    }
    t.elapsed()
}

/// Moves queued outputs to the relay without handling any inbound frame.
fn flush<S: Store>(net: &mut Net<S>) {
    for node in net.nodes.iter_mut() {
        node.hold = true;
    }
    net.step();
    for node in net.nodes.iter_mut() {
        node.hold = false;
    }
}

fn cove_message<S: Store>(c: &mut Cove<S>, text: &str) -> (Duration, Duration) {
    let now = c.net.now_ms;
    let t = Instant::now();
    c.net.client(c.alice).send_text(now, "bench", text).unwrap();
    let mut enc = t.elapsed();
    flush(&mut c.net);
    enc += handle_inbound(&mut c.net, c.alice);
    let dec = handle_inbound(&mut c.net, c.bob);
    c.net.run();
    let got = c.net.nodes[c.bob]
        .events
        .drain(..)
        .filter(|e| matches!(e, Event::Message(_)))
        .count();
    assert_eq!(got, 1);
    (enc, dec)
}

fn cove_commit<S: Store>(c: &mut Cove<S>) -> (Duration, Duration) {
    let now = c.net.now_ms;
    let t = Instant::now();
    c.net.client(c.alice).update_keys(now, "bench").unwrap();
    let mut create = t.elapsed();
    flush(&mut c.net);
    create += handle_inbound(&mut c.net, c.alice);
    let process = handle_inbound(&mut c.net, c.bob);
    c.net.run();
    let g = c.net.client(c.alice).groups()[0].id;
    let a = c.net.client(c.alice).epoch_authenticator(&g);
    assert_eq!(a, c.net.client(c.bob).epoch_authenticator(&g));
    (create, process)
}

// ----------------------------------------------------------------------------------------

struct Row {
    what: String,
    bare: Duration,
    cove: Duration,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let text = "x".repeat(1024);
    let mut rows = Vec::new();

    // 1 KiB message, 2 members (plus a SQLite run for the durable cost).
    let msg_iters = if quick { 50 } else { 400 };
    {
        let mut bare = bare_group(2);
        let mut cove = cove_group(Net::new(), &mut |_| MemoryStore::new(), 2);
        let dir = tempfile::tempdir().unwrap();
        let mut sql = cove_group(
            Net::new(),
            &mut |n| SqliteStore::open(dir.path().join(format!("{n}.db"))).unwrap(),
            2,
        );
        let mut full = cove_group(
            Net::new(),
            &mut |n| {
                SqliteStore::open_with(dir.path().join(format!("{n}-full.db")), Durability::Full)
                    .unwrap()
            },
            2,
        );
        let (mut be, mut bd, mut ce, mut cd, mut se, mut sd) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut fe, mut fd) = (vec![], vec![]);
        for i in 0..msg_iters {
            // Interleave to share machine noise.
            let (e, d) = bare_message(&mut bare, text.as_bytes());
            be.push(e);
            bd.push(d);
            let (e, d) = cove_message(&mut cove, &text);
            ce.push(e);
            cd.push(d);
            if i % 4 == 0 {
                let (e, d) = cove_message(&mut sql, &text);
                se.push(e);
                sd.push(d);
            }
            if i % 16 == 0 {
                let (e, d) = cove_message(&mut full, &text);
                fe.push(e);
                fd.push(d);
            }
        }
        let (be, bd, ce, cd) = (median(be), median(bd), median(ce), median(cd));
        rows.push(Row {
            what: "1 KiB message: encrypt (send)".into(),
            bare: be,
            cove: ce,
        });
        rows.push(Row {
            what: "1 KiB message: decrypt (receive)".into(),
            bare: bd,
            cove: cd,
        });
        rows.push(Row {
            what: "1 KiB message: encrypt + decrypt".into(),
            bare: be + bd,
            cove: ce + cd,
        });
        let (se, sd, fe, fd) = (median(se), median(sd), median(fe), median(fd));
        rows.push(Row {
            what: "1 KiB message: send, SQLite (WAL, sync=NORMAL)".into(),
            bare: be,
            cove: se,
        });
        rows.push(Row {
            what: "1 KiB message: receive, SQLite (WAL, sync=NORMAL)".into(),
            bare: bd,
            cove: sd,
        });
        rows.push(Row {
            what: "1 KiB message: send, SQLite (WAL, sync=FULL)".into(),
            bare: be,
            cove: fe,
        });
        rows.push(Row {
            what: "1 KiB message: receive, SQLite (WAL, sync=FULL)".into(),
            bare: bd,
            cove: fd,
        });
    }

    // Commits (key update: a self-update with path) at 10, 100, 1000 members.
    for (n, iters) in [
        (10usize, if quick { 3 } else { 41 }),
        (100, if quick { 2 } else { 21 }),
        (1000, if quick { 1 } else { 7 }),
    ] {
        let mut bare = bare_group(n);
        let mut cove = cove_group(Net::new(), &mut |_| MemoryStore::new(), n);
        let (mut bc, mut bp, mut cc, mut cp) = (vec![], vec![], vec![], vec![]);
        for i in 0..iters {
            // Alternate which goes first, to share machine noise fairly.
            if i % 2 == 0 {
                let (c, p) = bare_commit(&mut bare);
                bc.push(c);
                bp.push(p);
            }
            let (c, p) = cove_commit(&mut cove);
            cc.push(c);
            cp.push(p);
            if i % 2 == 1 {
                let (c, p) = bare_commit(&mut bare);
                bc.push(c);
                bp.push(p);
            }
        }
        rows.push(Row {
            what: format!("commit create, {n} members"),
            bare: median(bc),
            cove: median(cc),
        });
        rows.push(Row {
            what: format!("commit process, {n} members"),
            bare: median(bp),
            cove: median(cp),
        });
    }

    println!();
    println!("| operation | bare openmls | cove-core | ratio |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        let ratio = r.cove.as_secs_f64() / r.bare.as_secs_f64();
        println!(
            "| {} | {} | {} | {:.2}x |",
            r.what,
            us(r.bare),
            us(r.cove),
            ratio
        );
    }
    println!();
    println!(
        "medians; message: {msg_iters} iterations (SQLite NORMAL: every 4th, FULL: every 16th); \
         commit = key update (self-update with path), created by one member, processed by another; cove-core on MemoryStore \
         unless noted"
    );
}
