//! Cove Drive file contents (`cove::drive::content`) over the real relay: round trips,
//! chunk reuse across versions, tampering, resumed uploads and downloads.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cove::drive::DriveError;
use cove::drive::content::{
    self, PART_SUFFIX, SIDECAR_SUFFIX, Uploaded, blobs_of, download_file, get_sealed, put_sealed,
    upload_file,
};
use cove_core::drive::chunk::{CHUNK_OVERHEAD, ChunkError, MAX_CHUNK, MIN_CHUNK};
use cove_core::drive::seal::{LINK_AAD, MANIFEST_AAD, SealError};
use cove_core::drive::{FileVersion, Manifest, ManifestRef};
use cove_server::blob::{BlobConfig, BlobStore, FsBlobStore, KEEP_EXPIRES_MS};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use super::{Env, random_bytes};

const MIB: usize = 1 << 20;

/// Writes `len` bytes from a seeded RNG to `path`, 1 MiB at a time (never all in memory).
fn write_random(path: &Path, len: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; MIB];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB);
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finalize().into();
        }
        h.update(&buf[..n]);
    }
}

fn chunks(v: &FileVersion) -> &Manifest {
    match &v.manifest {
        ManifestRef::Inline(m) => m,
        ManifestRef::Blob(_) => panic!("manifest not inline"),
    }
}

/// The part file and sidecar a download of `target` uses.
fn part_of(target: &Path) -> (PathBuf, PathBuf) {
    let name = target.file_name().unwrap().to_string_lossy();
    let part = target.with_file_name(format!(".{name}{PART_SUFFIX}"));
    let sidecar = target.with_file_name(format!(".{name}{PART_SUFFIX}{SIDECAR_SUFFIX}"));
    (part, sidecar)
}

/// Waits (polling) until `cond` holds; the deadline only guards against a hang.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Files of 0, 1, MIN_CHUNK-1, MAX_CHUNK+1 and ~5 MiB random bytes upload (every chunk
/// sent once, as a kept blob, ciphertext = plaintext + 16 per chunk) and download equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_round_trips_at_every_size() {
    let env = Env::start(BlobConfig::default()).await;
    let store = FsBlobStore::open(&env.data.path().join("blobs")).unwrap();
    let sizes = [
        0,
        1,
        MIN_CHUNK as usize - 1,
        MAX_CHUNK as usize + 1,
        5 * MIB + 12345,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let content = random_bytes(size, 100 + i as u64);
        let path = env.file(&format!("f{i}"), &content);
        let up = upload_file(&env.client, &path, None, "laptop", None)
            .await
            .unwrap();
        let v = &up.version;
        let n = chunks(v).chunks.len();
        assert_eq!(v.size, size as u64);
        assert_eq!(v.device, "laptop");
        assert_eq!(v.sha256, <[u8; 32]>::from(Sha256::digest(&content)));
        assert_eq!(chunks(v).size(), size as u64);
        assert_eq!((up.chunks_sent, up.chunks_reused), (n, 0), "size {size}");
        assert_eq!(up.bytes_sent, size as u64 + n as u64 * CHUNK_OVERHEAD);
        if size == MAX_CHUNK as usize + 1 {
            assert!(n >= 2, "a chunk is at most MAX_CHUNK");
        }
        let blobs = blobs_of(&env.client, v).await.unwrap();
        assert_eq!(blobs.len(), n);
        for b in &blobs {
            assert_eq!(store.meta(b).unwrap().unwrap().expires_ms, KEEP_EXPIRES_MS);
        }
        let target = env.out_dir().join(format!("f{i}"));
        let fetched = download_file(&env.client, v, &target, false).await.unwrap();
        assert_eq!(fetched, up.bytes_sent);
        assert!(std::fs::read(&target).unwrap() == content, "size {size}");
        let (part, sidecar) = part_of(&target);
        assert!(!part.exists() && !sidecar.exists());
    }
}

/// A second version of a 256 MiB file with one byte changed keeps the file's secret and
/// sends less than 1% of the file (the changed chunk and the manifest blob); it downloads
/// equal to the edited file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_byte_change_in_256_mib_uploads_less_than_one_percent() {
    let env = Env::start(BlobConfig::default()).await;
    let size = 256 * MIB;
    let path = env.work.path().join("big.bin");
    write_random(&path, size, 7);
    let v1 = upload_file(&env.client, &path, None, "laptop", None)
        .await
        .unwrap();
    assert!(v1.bytes_sent >= size as u64);
    // More chunks than go inline: the manifest is a sealed blob.
    let ManifestRef::Blob(_) = &v1.version.manifest else {
        panic!("a 256 MiB manifest should be a blob");
    };
    // Flip one byte in the middle, in place.
    {
        let at = size as u64 / 2 + 777;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 0xff]).unwrap();
        f.sync_all().unwrap();
    }
    let v2 = upload_file(&env.client, &path, Some(&v1.version), "laptop", None)
        .await
        .unwrap();
    assert!(v2.version.secret == v1.version.secret);
    assert_ne!(v2.version.sha256, v1.version.sha256);
    assert!(
        v2.bytes_sent * 100 < size as u64,
        "sent {} of {size}",
        v2.bytes_sent
    );
    assert!((1..=2).contains(&v2.chunks_sent), "{}", v2.chunks_sent);
    let m = content::manifest(&env.client, &v2.version.manifest)
        .await
        .unwrap();
    assert_eq!(v2.chunks_reused + v2.chunks_sent, m.chunks.len());
    let target = env.out_dir().join("big.bin");
    download_file(&env.client, &v2.version, &target, false)
        .await
        .unwrap();
    assert_eq!(sha256_file(&target), sha256_file(&path));
}

/// A chunk blob altered on the relay's disk: the download fails with
/// `DriveError::Chunk(Tampered)` and nothing appears at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_altered_on_the_relay_is_refused_and_nothing_is_written() {
    let env = Env::start(BlobConfig::default()).await;
    let content = random_bytes(3 * MIB, 9);
    let path = env.file("t.bin", &content);
    let up = upload_file(&env.client, &path, None, "laptop", None)
        .await
        .unwrap();
    let m = chunks(&up.version);
    assert!(m.chunks.len() >= 2);
    let victim = env.blob_path(&m.chunks[1].blob);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let target = env.out_dir().join("t.bin");
    let err = download_file(&env.client, &up.version, &target, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DriveError::Chunk(ChunkError::Tampered)),
        "{err}"
    );
    assert!(!target.exists());
}

/// A version whose chunks all verify but whose SHA-256 is not their concatenation's (a
/// member published a wrong digest): `DriveError::Chunk(Mismatch)` and nothing at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_with_a_wrong_digest_is_refused_and_nothing_is_written() {
    let env = Env::start(BlobConfig::default()).await;
    let path = env.file("w.bin", &random_bytes(MIB, 5));
    let up = upload_file(&env.client, &path, None, "laptop", None)
        .await
        .unwrap();
    let mut v = up.version.clone();
    v.sha256[0] ^= 1;
    let target = env.out_dir().join("w.bin");
    let err = download_file(&env.client, &v, &target, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DriveError::Chunk(ChunkError::Mismatch)),
        "{err}"
    );
    assert!(!target.exists());
}

/// An upload aborted after some chunks were journaled, re-run with the same journal: it
/// sends only the chunks not journaled (the journaled ones count as reused), keeps the
/// secret the first run drew, and the result downloads equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_upload_resumes_from_its_journal() {
    let env = Env::start(BlobConfig::default()).await;
    let path = env.work.path().join("resume.bin");
    write_random(&path, 64 * MIB, 11);
    let journal = env.work.path().join("journal");
    let records = journal.join("chunks");
    let first = {
        let (client, path, journal) = (env.client.clone(), path.clone(), journal.clone());
        tokio::spawn(async move { upload_file(&client, &path, None, "pc", Some(&journal)).await })
    };
    until("4 chunks journaled", || file_len(&records) >= 4 * 52).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled(), "finished too soon");
    let journaled = file_len(&records) / 52;

    let up: Uploaded = upload_file(&env.client, &path, None, "pc", Some(&journal))
        .await
        .unwrap();
    let total = chunks(&up.version).chunks.len();
    assert!(up.chunks_reused as u64 >= journaled, "{up:?}");
    assert_eq!(up.chunks_sent + up.chunks_reused, total);
    assert!(up.chunks_sent < total);
    let target = env.out_dir().join("resume.bin");
    download_file(&env.client, &up.version, &target, false)
        .await
        .unwrap();
    assert_eq!(sha256_file(&target), sha256_file(&path));
}

/// A download aborted after some chunks were written, re-run: it fetches fewer bytes than
/// the whole (the chunks in its part file are not fetched again), the file is equal, and the
/// part file and sidecar are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_download_resumes_from_its_part_file() {
    let env = Env::start(BlobConfig::default()).await;
    let path = env.work.path().join("down.bin");
    write_random(&path, 64 * MIB, 12);
    let up = upload_file(&env.client, &path, None, "pc", None)
        .await
        .unwrap();
    let target = env.out_dir().join("down.bin");
    let (part, sidecar) = part_of(&target);
    let first = {
        let (client, v, t) = (env.client.clone(), up.version.clone(), target.clone());
        tokio::spawn(async move { download_file(&client, &v, &t, false).await })
    };
    until("4 chunks written", || file_len(&sidecar) >= 48 + 4 * 4).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled(), "finished too soon");
    assert!(!target.exists());
    assert!(part.exists());

    let fetched = download_file(&env.client, &up.version, &target, false)
        .await
        .unwrap();
    assert!(
        fetched + 4 * u64::from(MIN_CHUNK) <= up.bytes_sent,
        "{fetched} of {}",
        up.bytes_sent
    );
    assert_eq!(sha256_file(&target), sha256_file(&path));
    assert!(!part.exists() && !sidecar.exists());
}

/// A download onto an existing file is refused with `Exists` (the file untouched) unless
/// `overwrite`, which replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_onto_an_existing_file_needs_overwrite() {
    let env = Env::start(BlobConfig::default()).await;
    let content = random_bytes(10_000, 3);
    let up = upload_file(&env.client, &env.file("a", &content), None, "pc", None)
        .await
        .unwrap();
    let target = env.out_dir().join("a");
    std::fs::write(&target, b"mine").unwrap();
    let err = download_file(&env.client, &up.version, &target, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DriveError::Exists(p) if p == &target),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"mine");
    download_file(&env.client, &up.version, &target, true)
        .await
        .unwrap();
    assert!(std::fs::read(&target).unwrap() == content);
}

/// A sealed blob round-trips (kept on the relay) and refuses another associated data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_blobs_round_trip_and_check_their_aad() {
    let env = Env::start(BlobConfig::default()).await;
    let text = b"{\"v\":1}".to_vec();
    let sealed = put_sealed(&env.client, LINK_AAD, &text).await.unwrap();
    assert_eq!(sealed.len, text.len() as u64 + 16);
    let store = FsBlobStore::open(&env.data.path().join("blobs")).unwrap();
    assert_eq!(
        store.meta(&sealed.blob).unwrap().unwrap().expires_ms,
        KEEP_EXPIRES_MS
    );
    assert_eq!(
        get_sealed(&env.client, &sealed, LINK_AAD, 1000)
            .await
            .unwrap(),
        text
    );
    let err = get_sealed(&env.client, &sealed, MANIFEST_AAD, 1000)
        .await
        .unwrap_err();
    assert!(matches!(err, DriveError::Seal(SealError)), "{err}");
}
