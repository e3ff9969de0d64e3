//! Blob retention (`Cove-Retention: keep | <secs>`, read on the completing append) and
//! `GET /v1/usage`, against the real relay.

use std::time::Duration;

use cove::transfer::{Retention, TransferError, Usage};
use cove_server::blob::{BlobConfig, BlobStore, FsBlobStore, KEEP_EXPIRES_MS, MAX_RETENTION_SECS};
use cove_wire::BlobId;
use http::Method;

use super::raw::{self, now_ms};
use super::{Env, random_bytes};

const BAD_RETENTION: &str =
    "invalid Cove-Retention header (expected keep or 1..=315360000 seconds)";

/// The relay's own blob store files (its metadata database), for expiries and an injected
/// sweep clock.
fn store(env: &Env) -> FsBlobStore {
    FsBlobStore::open(&env.data.path().join("blobs")).unwrap()
}

/// With a default retention of zero (a default blob is expired as soon as it is complete),
/// the relay's sweep deletes a default blob and keeps a blob uploaded with
/// `Cove-Retention: keep`, which then stays until its owner deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_blob_survives_the_sweep_that_removes_a_default_one() {
    let env = Env::start(BlobConfig {
        retention: Duration::ZERO,
        sweep_interval: Duration::from_millis(100),
        ..BlobConfig::default()
    })
    .await;
    let keeper = env.client.clone().with_retention(Retention::Keep);
    // The kept blob completes first: the sweep that removes the default one saw it.
    let kept = keeper.upload_bytes(random_bytes(3000, 1)).await.unwrap();
    let default = env
        .client
        .upload_bytes(random_bytes(2000, 2))
        .await
        .unwrap();
    assert_eq!(
        store(&env).meta(&kept).unwrap().unwrap().expires_ms,
        KEEP_EXPIRES_MS
    );
    let gone = env.blob_path(&default);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while gone.exists() {
        assert!(std::time::Instant::now() < deadline, "never swept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(env.blob_path(&kept).exists());
    assert_eq!(
        env.client.download_bytes(kept, 1 << 20).await.unwrap(),
        random_bytes(3000, 1)
    );
    let err = env
        .client
        .download_bytes(default, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::Refused { status: 404, .. }),
        "{err}"
    );
    // Not even a sweep a century from now takes it.
    let century = now_ms() + 100 * 365 * 24 * 3600 * 1000;
    assert_eq!(store(&env).sweep(century).unwrap(), 0);
    assert!(env.blob_path(&kept).exists());
    // Its owner deletes it.
    keeper.delete_blob(kept).await.unwrap();
    assert!(!env.blob_path(&kept).exists());
    let err = env.client.download_bytes(kept, 1 << 20).await.unwrap_err();
    assert!(
        matches!(err, TransferError::Refused { status: 404, .. }),
        "{err}"
    );
}

/// `Cove-Retention: 3600`: the blob expires an hour after its upload completed (not the
/// relay's default), and a sweep at that time deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_with_a_retention_in_seconds_expires_that_long_after_completion() {
    let env = Env::start(BlobConfig::default()).await;
    let client = env
        .client
        .clone()
        .with_retention(Retention::ExpiresIn(3600));
    let before = now_ms();
    let id = client.upload_bytes(random_bytes(5000, 3)).await.unwrap();
    let after = now_ms();
    let store = store(&env);
    let expires = store.meta(&id).unwrap().unwrap().expires_ms;
    assert!(
        (before + 3_600_000..=after + 3_600_000).contains(&expires),
        "{before} {expires} {after}"
    );
    assert_eq!(store.sweep(expires - 1).unwrap(), 0);
    assert!(env.blob_path(&id).exists());
    assert_eq!(store.sweep(expires).unwrap(), 1);
    assert!(!env.blob_path(&id).exists());
}

/// A `Cove-Retention` that is neither `keep` nor 1..=10 years of seconds is refused with
/// `400` on a create and on an append (which then stores nothing); the bounds are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_retention_header_is_refused_with_400() {
    let env = Env::start(BlobConfig::default()).await;
    let too_long = (MAX_RETENTION_SECS + 1).to_string();
    let bad = [
        "forever",
        "0",
        "-1",
        "1.5",
        "",
        "KEEP",
        "keep,keep",
        too_long.as_str(),
    ];
    let id = env.create_raw(10).await;
    let mut ts = now_ms();
    for value in bad {
        ts += 2;
        env.send(
            raw::create(&env.keys, ts, 10).header("cove-retention", value),
            vec![],
        )
        .await
        .assert(400, BAD_RETENTION);
        let r = env
            .send(
                raw::append(&env.keys, &id, ts + 1, 0).header("cove-retention", value),
                vec![7; 10],
            )
            .await;
        r.assert(400, BAD_RETENTION);
    }
    // Nothing was stored by the refused appends.
    let head = raw::signed(
        &env.keys,
        Method::HEAD,
        &format!("/v1/blobs/{id}"),
        ts + 10,
        0,
    );
    let r = env.send(head, vec![]).await;
    assert_eq!((r.status, r.offset()), (200, Some(0)), "{r:?}");
    for (i, good) in ["keep", "1", &MAX_RETENTION_SECS.to_string()]
        .into_iter()
        .enumerate()
    {
        let r = env
            .send(
                raw::create(&env.keys, ts + 20 + i as u64, 10).header("cove-retention", good),
                vec![],
            )
            .await;
        assert_eq!(r.status, 201, "{good}: {r:?}");
    }
    // The bound is ten years of 365 days.
    assert_eq!(MAX_RETENTION_SECS, 315_360_000);
}

/// `GET /v1/usage` counts the declared lengths of the signing user's blobs (complete or
/// not), per user, and drops with a delete; unsigned it is `401`, other methods `405`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_the_users_blobs() {
    let quota = 1 << 30;
    let env = Env::start(BlobConfig {
        quota_bytes_per_user: quota,
        ..BlobConfig::default()
    })
    .await;
    assert_eq!(env.client.usage().await.unwrap(), Usage { used: 0, quota });
    let done = env
        .client
        .upload_bytes(random_bytes(1000, 4))
        .await
        .unwrap();
    let partial = env.create_raw(5000).await;
    assert_eq!(
        env.client.usage().await.unwrap(),
        Usage { used: 6000, quota }
    );
    // Bob's usage is his own.
    let bob = env.register("bob").await;
    let r = env
        .send(
            raw::signed(&bob, Method::GET, "/v1/usage", now_ms(), 0),
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, format!("{{\"used\":0,\"quota\":{quota}}}").as_str())
    );
    env.client.delete_blob(done).await.unwrap();
    env.client
        .delete_blob(BlobId::from_hex(&partial).unwrap())
        .await
        .unwrap();
    assert_eq!(env.client.usage().await.unwrap(), Usage { used: 0, quota });
    let unsigned = http::Request::builder().uri("/v1/usage");
    let r = env.send(unsigned, vec![]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let post = raw::signed(&env.keys, Method::POST, "/v1/usage", now_ms(), 0);
    env.send(post, vec![])
        .await
        .assert(405, "method not allowed");
}
