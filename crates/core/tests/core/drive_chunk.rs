//! Cove Drive chunk and sealed-blob crypto (`cove_core::drive::{chunk, seal}`): the fixed
//! test vectors (generated independently by `tests/vectors/drive/generate.py`), round trips,
//! every tampering case, per-file keys, and FastCDC's determinism and locality.

use std::collections::HashSet;
use std::io::Read;

use cove_core::drive::chunk::{
    AVG_CHUNK, CHUNK_OVERHEAD, ChunkError, ChunkRef, Chunker, FileSecret, MAX_CHUNK, MAX_CHUNKS,
    MIN_CHUNK, Manifest, chunk_id, open_chunk, seal_chunk, seal_chunk_with_id,
};
use cove_core::drive::seal::{self, LINK_AAD, MANIFEST_AAD, SNAPSHOT_AAD, SealError};
use cove_wire::BlobId;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn secret(n: u8) -> FileSecret {
    FileSecret([n; 32])
}

fn random(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn blob_id(n: u8) -> BlobId {
    BlobId([n; 16])
}

fn chunk_ref(secret: &FileSecret, pt: &[u8]) -> (ChunkRef, Vec<u8>) {
    let (id, blob) = seal_chunk(secret, pt);
    let r = ChunkRef {
        id,
        blob: blob_id(1),
        len: pt.len() as u32,
    };
    (r, blob)
}

/// One object of the vectors file: its string fields.
type Fields = Vec<(String, String)>;

/// Reads `drive_chunk.json` without a JSON dependency: the generator writes one
/// `"key": "value"` per line inside the `chunk` and `seal` arrays.
fn vectors() -> (Vec<Fields>, Vec<Fields>) {
    let text = include_str!("../vectors/drive_chunk.json");
    let (mut chunk, mut sealed) = (Vec::new(), Vec::new());
    let mut section = "";
    let mut cur: Option<Fields> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("\"chunk\": [") {
            section = "chunk";
        } else if line.starts_with("\"seal\": [") {
            section = "seal";
        } else if line == "{" && !section.is_empty() {
            cur = Some(Vec::new());
        } else if line.starts_with('}') {
            if let Some(f) = cur.take() {
                match section {
                    "chunk" => chunk.push(f),
                    _ => sealed.push(f),
                }
            }
        } else if let Some(f) = cur.as_mut() {
            let (k, v) = line.split_once(": ").unwrap();
            let v = v.trim_end_matches(',');
            f.push((k.trim_matches('"').into(), v.trim_matches('"').into()));
        }
    }
    (chunk, sealed)
}

fn field<'a>(f: &'a Fields, k: &str) -> &'a str {
    &f.iter().find(|(key, _)| key == k).unwrap().1
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn drive_chunk_vectors_match() {
    let (chunks, sealed) = vectors();
    assert_eq!(chunks.len(), 6);
    assert_eq!(sealed.len(), 3);
    for v in &chunks {
        let s = FileSecret(hex32(field(v, "secret")));
        let pt = hex::decode(field(v, "plaintext")).unwrap();
        let id = hex32(field(v, "chunk_id"));
        let blob = hex::decode(field(v, "blob")).unwrap();
        assert_eq!(chunk_id(&s, &pt), id, "{}", field(v, "name"));
        assert_eq!(
            seal_chunk(&s, &pt),
            (id, blob.clone()),
            "{}",
            field(v, "name")
        );
        let r = ChunkRef {
            id,
            blob: blob_id(0),
            len: pt.len() as u32,
        };
        assert_eq!(open_chunk(&s, &r, &blob).unwrap(), pt);
    }
    for v in &sealed {
        let k = FileSecret(hex32(field(v, "key")));
        let aad = hex::decode(field(v, "aad")).unwrap();
        let pt = hex::decode(field(v, "plaintext")).unwrap();
        let blob = hex::decode(field(v, "blob")).unwrap();
        assert_eq!(seal::seal(&k, &aad, &pt), blob, "{}", field(v, "name"));
        assert_eq!(seal::open(&k, &aad, &blob).unwrap(), pt);
    }
    // The aads of the vectors are the crate's constants.
    let aads: Vec<Vec<u8>> = sealed
        .iter()
        .map(|v| hex::decode(field(v, "aad")).unwrap())
        .collect();
    assert_eq!(aads, [MANIFEST_AAD, SNAPSHOT_AAD, LINK_AAD]);
}

#[test]
fn drive_chunk_round_trips() {
    let s = secret(7);
    for n in [0usize, 1, 15, 16, 17, 4096, MAX_CHUNK as usize] {
        let pt = random(n as u64, n);
        let (r, blob) = chunk_ref(&s, &pt);
        assert_eq!(blob.len() as u64, n as u64 + CHUNK_OVERHEAD);
        assert_eq!(open_chunk(&s, &r, &blob).unwrap(), pt);
        // Sealing is deterministic: a re-upload is the same blob.
        assert_eq!(seal_chunk(&s, &pt).1, blob);
        assert_eq!(seal_chunk_with_id(&s, &r.id, &pt), blob);
    }
}

#[test]
fn drive_chunk_every_flipped_byte_and_truncation_is_refused() {
    let s = secret(3);
    let pt = random(1, 48);
    let (r, blob) = chunk_ref(&s, &pt);
    for i in 0..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            open_chunk(&s, &r, &bad),
            Err(ChunkError::Tampered),
            "byte {i}"
        );
    }
    for n in 0..blob.len() {
        assert_eq!(
            open_chunk(&s, &r, &blob[..n]),
            Err(ChunkError::Tampered),
            "len {n}"
        );
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert_eq!(open_chunk(&s, &r, &longer), Err(ChunkError::Tampered));
    // A reference with another id or length does not open it either.
    for i in 0..32 {
        let mut other = r.clone();
        other.id[i] ^= 0x80;
        assert_eq!(open_chunk(&s, &other, &blob), Err(ChunkError::Tampered));
    }
    let mut shorter = r.clone();
    shorter.len -= 1;
    assert_eq!(open_chunk(&s, &shorter, &blob), Err(ChunkError::Tampered));
    // Sealed under another id than its own: refused.
    let mut wrong = r.clone();
    wrong.id[0] ^= 1;
    let sealed_wrong = seal_chunk_with_id(&s, &wrong.id, &pt);
    assert_eq!(
        open_chunk(&s, &wrong, &sealed_wrong),
        Err(ChunkError::Mismatch)
    );
    // A length beyond MAX_CHUNK is refused before anything else.
    let mut huge = r.clone();
    huge.len = MAX_CHUNK + 1;
    assert_eq!(
        open_chunk(&s, &huge, &blob),
        Err(ChunkError::InvalidManifest)
    );
}

#[test]
fn drive_chunk_of_another_file_or_swapped_is_refused() {
    let (a, b) = (secret(1), secret(2));
    let pt = random(9, 1000);
    let (ra, blob_a) = chunk_ref(&a, &pt);
    // The same chunk reference and blob under another file's secret.
    assert_eq!(open_chunk(&b, &ra, &blob_a), Err(ChunkError::Tampered));
    // Two chunks of one file with their blobs swapped (same length).
    let pt2 = random(10, 1000);
    let (r2, blob2) = chunk_ref(&a, &pt2);
    assert_eq!(open_chunk(&a, &ra, &blob2), Err(ChunkError::Tampered));
    assert_eq!(open_chunk(&a, &r2, &blob_a), Err(ChunkError::Tampered));
}

/// A member holding the file's secret can seal any plaintext under a chunk's key (the key
/// derives from the id it claims): `open_chunk` checks the plaintext's id and refuses it.
#[test]
fn drive_chunk_plaintext_not_matching_its_id_is_refused() {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use ring::hkdf;
    struct L;
    impl hkdf::KeyType for L {
        fn len(&self) -> usize {
            32
        }
    }
    let s = secret(5);
    let (r, _) = chunk_ref(&s, b"the real chunk");
    let mut key = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, &r.id)
        .extract(&s.0)
        .expand(&[b"cove/drive/v1/chunk-key"], L)
        .unwrap()
        .fill(&mut key)
        .unwrap();
    let forged_pt = b"a forged chunk";
    let mut forged = forged_pt.to_vec();
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap())
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(&r.id[..]),
            &mut forged,
        )
        .unwrap();
    assert_eq!(forged_pt.len(), r.len as usize);
    assert_eq!(open_chunk(&s, &r, &forged), Err(ChunkError::Mismatch));
}

#[test]
fn drive_chunk_equal_plaintext_in_two_files_is_unrelated() {
    let pt = random(4, 5000);
    let (id_a, blob_a) = seal_chunk(&secret(1), &pt);
    let (id_b, blob_b) = seal_chunk(&secret(2), &pt);
    assert_ne!(id_a, id_b);
    assert_ne!(blob_a, blob_b);
    // Not even a common prefix of ciphertext (the keys differ).
    assert_ne!(blob_a[..16], blob_b[..16]);
    // Within one file, equal plaintext is the same chunk (an edit re-uses it).
    assert_eq!(seal_chunk(&secret(1), &pt), (id_a, blob_a));
}

#[test]
fn drive_seal_round_trip_and_tampering() {
    let k = FileSecret::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let pt = random(2, 777);
    let blob = seal::seal(&k, MANIFEST_AAD, &pt);
    assert_eq!(blob.len(), pt.len() + 16);
    assert_eq!(seal::open(&k, MANIFEST_AAD, &blob).unwrap(), pt);
    assert_eq!(seal::open(&k, SNAPSHOT_AAD, &blob), Err(SealError));
    assert_eq!(seal::open(&secret(9), MANIFEST_AAD, &blob), Err(SealError));
    for i in 0..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x40;
        assert_eq!(
            seal::open(&k, MANIFEST_AAD, &bad),
            Err(SealError),
            "byte {i}"
        );
    }
    for n in [0, 1, 15, 16, blob.len() - 1] {
        assert_eq!(seal::open(&k, MANIFEST_AAD, &blob[..n]), Err(SealError));
    }
    assert_eq!(
        seal::open(&k, LINK_AAD, &seal::seal(&k, LINK_AAD, b"")).unwrap(),
        b""
    );
}

fn chunks_of(data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    Chunker::new(data).collect::<std::io::Result<_>>().unwrap()
}

/// Checks the chunks tile `data` within the size bounds.
fn check_tiling(data: &[u8], chunks: &[(u64, Vec<u8>)]) {
    let mut at = 0u64;
    for (i, (off, c)) in chunks.iter().enumerate() {
        assert_eq!(*off, at);
        assert!(c.len() <= MAX_CHUNK as usize);
        if i + 1 < chunks.len() {
            assert!(c.len() >= MIN_CHUNK as usize, "chunk {i} of {}", c.len());
        }
        assert_eq!(&data[at as usize..at as usize + c.len()], &c[..]);
        at += c.len() as u64;
    }
    assert_eq!(at, data.len() as u64);
}

/// A reader handing out at most `step` bytes per read, with an `Interrupted` error first.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    interrupt: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if std::mem::take(&mut self.interrupt) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        self.interrupt = true;
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn drive_chunker_is_deterministic_and_local() {
    let data = random(42, 8 << 20);
    let a = chunks_of(&data);
    check_tiling(&data, &a);
    // The average lands near AVG_CHUNK (8 MiB in 512 KiB chunks: ~16).
    let expected = data.len() / AVG_CHUNK as usize;
    assert!(
        (expected / 3..=expected * 3).contains(&a.len()),
        "{} chunks",
        a.len()
    );
    // Deterministic, whatever the reads look like.
    assert_eq!(chunks_of(&data), a);
    // The cut points of fastcdc's own in-memory chunker over the whole file (FastCDC 2020,
    // level 1, seed 0).
    let reference: Vec<(u64, usize)> =
        fastcdc::v2020::FastCDC::new(&data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .map(|c| (c.offset as u64, c.length))
            .collect();
    let ours: Vec<(u64, usize)> = a.iter().map(|(o, c)| (*o, c.len())).collect();
    assert_eq!(ours, reference);
    let trickled: Vec<_> = Chunker::new(Trickle {
        data: &data,
        step: 100_003,
        interrupt: true,
    })
    .collect::<std::io::Result<_>>()
    .unwrap();
    assert_eq!(trickled, a);

    // One byte inserted in the middle: at most 2 chunks differ.
    let mut edited = data.clone();
    edited.insert(data.len() / 2, 0xa5);
    let b = chunks_of(&edited);
    check_tiling(&edited, &b);
    let s = secret(1);
    let old: HashSet<[u8; 32]> = a.iter().map(|(_, c)| chunk_id(&s, c)).collect();
    let changed = b
        .iter()
        .filter(|(_, c)| !old.contains(&chunk_id(&s, c)))
        .count();
    assert!((1..=2).contains(&changed), "{changed} chunks changed");
}

#[test]
fn drive_chunker_edges() {
    assert!(chunks_of(&[]).is_empty());
    for n in [1usize, MIN_CHUNK as usize - 1, MAX_CHUNK as usize + 1] {
        let data = random(n as u64, n);
        let c = chunks_of(&data);
        check_tiling(&data, &c);
    }
    // A source shorter than MAX_CHUNK is one chunk (FastCDC would cut 1 MiB of random
    // bytes); MAX_CHUNK + 1 bytes are cut by FastCDC.
    for n in [MIN_CHUNK as usize - 1, 1 << 20, MAX_CHUNK as usize - 1] {
        assert_eq!(chunks_of(&random(3, n)).len(), 1, "{n}");
    }
    let one_mib = random(3, 1 << 20);
    assert!(fastcdc::v2020::FastCDC::new(&one_mib, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).count() > 1);
    assert!(chunks_of(&random(3, MAX_CHUNK as usize + 1)).len() >= 2);
    // An I/O error is reported once, then the iterator ends.
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk gone"))
        }
    }
    let mut it = Chunker::new(Failing);
    assert_eq!(it.next().unwrap().unwrap_err().to_string(), "disk gone");
    assert!(it.next().is_none());
}

#[test]
fn drive_manifest_bounds() {
    let c = |len| ChunkRef {
        id: [0; 32],
        blob: blob_id(2),
        len,
    };
    let m = Manifest {
        chunks: vec![c(1), c(MAX_CHUNK)],
    };
    assert_eq!(m.validate(), Ok(()));
    assert_eq!(m.size(), 1 + u64::from(MAX_CHUNK));
    for bad in [0, MAX_CHUNK + 1] {
        let m = Manifest {
            chunks: vec![c(1), c(bad)],
        };
        assert_eq!(m.validate(), Err(ChunkError::InvalidManifest));
    }
    let too_many = Manifest {
        chunks: vec![c(1); MAX_CHUNKS + 1],
    };
    assert_eq!(too_many.validate(), Err(ChunkError::InvalidManifest));
}
