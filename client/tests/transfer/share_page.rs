//! The share page in headless Chromium: a file of several chunks decrypts, and a relay that
//! truncates, reorders or replaces the ciphertext is refused with the page's specific error
//! and without any plaintext shown or offered.

use cove_core::attachment::{AttachmentPointer, DEFAULT_CHUNK_SIZE, Encryptor, ShareLink, TAG_LEN};
use cove_server::blob::BlobConfig;

use super::{Env, browser};

const MIB: usize = 1 << 20;
/// Three full 1 MiB chunks and a final one of 1000 bytes.
const SIZE: usize = 3 * MIB + 1000;
const CHUNK: usize = MIB + TAG_LEN;

/// Text whose every line names its chunk, starting with a marker in each chunk.
fn story(tag: &str) -> Vec<u8> {
    let mut s = Vec::with_capacity(SIZE);
    let mut line = 0;
    while s.len() < SIZE {
        let chunk = s.len() / MIB;
        let text = if s.len() % MIB == 0 {
            format!("{tag}-MARKER-CHUNK-{chunk}\n")
        } else {
            format!("{tag} line {line} in chunk {chunk}\n")
        };
        // Markers start exactly at chunk boundaries.
        let room = MIB - s.len() % MIB;
        s.extend_from_slice(&text.as_bytes()[..text.len().min(room)]);
        line += 1;
    }
    s.truncate(SIZE);
    s
}

async fn upload(env: &Env) -> (AttachmentPointer, String) {
    let p = env
        .client
        .upload_file(&env.file("story.txt", &story("ORIGINAL")))
        .await
        .unwrap();
    assert_eq!(p.chunk_size, DEFAULT_CHUNK_SIZE);
    assert_eq!(p.ciphertext_len(), (16 + 3 * CHUNK + 1000 + TAG_LEN) as u64);
    let link = ShareLink::from_pointer(&env.client.origin(), &p).to_url();
    (p, link)
}

/// The page ended in `error` showing exactly `message`, with no plaintext in the DOM and
/// nothing offered for saving.
#[track_caller]
fn assert_refused(dom: &str, message: &str) {
    assert!(dom.contains("data-state=\"error\""), "not refused: {dom}");
    assert!(
        dom.contains(&format!("<p id=\"status\">{message}</p>")),
        "expected {message:?}: {dom}"
    );
    for leak in ["MARKER", " line ", "id=\"text\"", "blob:"] {
        assert!(!dom.contains(leak), "{leak:?} in the page: {dom}");
    }
    assert!(
        dom.contains("<a id=\"save\" hidden=\"\">Save file</a>"),
        "save link offered: {dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_page_decrypts_a_four_chunk_file_in_headless_chromium() {
    let env = Env::start(BlobConfig::default()).await;
    let (_, link) = upload(&env).await;
    let Some(dom) = browser::dump_dom(&link).await else {
        return;
    };
    assert!(
        dom.contains("data-state=\"done\""),
        "page did not finish: {dom}"
    );
    assert!(
        dom.contains("<p id=\"status\">Decrypted and verified.</p>"),
        "{dom}"
    );
    // Every chunk was decrypted: the plaintext size counted by the page, and the digest and
    // size checks that precede "done".
    assert!(
        dom.contains("3.0 MiB (3146728 bytes) · text/plain"),
        "{dom}"
    );
    assert!(
        dom.contains("<pre id=\"text\">ORIGINAL-MARKER-CHUNK-0\nORIGINAL line 1 in chunk 0\n"),
        "{dom}"
    );
    assert!(dom.contains("download=\"story.txt\""), "{dom}");
    assert!(dom.contains("href=\"blob:"), "{dom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_page_refuses_truncated_reordered_and_replaced_ciphertext() {
    let env = Env::start(BlobConfig::default()).await;
    let (p, link) = upload(&env).await;
    let path = env.blob_path(&p.blob_id);
    let original = std::fs::read(&path).unwrap();
    let db = rusqlite::Connection::open(env.data.path().join("blobs/meta.sqlite")).unwrap();
    let set_len = |len: usize| {
        db.execute(
            "UPDATE blobs SET length = ?1, stored = ?1 WHERE id = ?2",
            rusqlite::params![len as i64, p.blob_id.0.as_slice()],
        )
        .unwrap();
    };

    // 1. The relay drops the final chunk and claims the blob is that long.
    let cut = 16 + 3 * CHUNK;
    std::fs::write(&path, &original[..cut]).unwrap();
    set_len(cut);
    let Some(dom) = browser::dump_dom(&link).await else {
        return;
    };
    assert_refused(
        &dom,
        &format!(
            "The file is shorter than announced: the server sent {cut} of {} bytes. Nothing was saved.",
            original.len()
        ),
    );
    set_len(original.len());

    // 2. The relay swaps chunks 1 and 2 (same length, each authentic on its own).
    let mut swapped = original.clone();
    let (c1, c2) = (16 + CHUNK, 16 + 2 * CHUNK);
    swapped[c1..c2].copy_from_slice(&original[c2..c2 + CHUNK]);
    swapped[c2..c2 + CHUNK].copy_from_slice(&original[c1..c2]);
    std::fs::write(&path, &swapped).unwrap();
    let dom = browser::dump_dom(&link).await.unwrap();
    assert_refused(
        &dom,
        "Part 1 of the file failed verification: it was modified, or the link is wrong. Nothing was saved.",
    );

    // 3. The relay serves another file of the same length under the same key and nonce
    // prefix (say an earlier upload): every chunk authenticates, only the digest differs.
    let prefix: [u8; 7] = original[9..16].try_into().unwrap();
    let mut enc = Encryptor::with_nonce_prefix(&p.key, prefix, DEFAULT_CHUNK_SIZE).unwrap();
    let mut other = Vec::new();
    enc.push(&story("REPLACED"), &mut other).unwrap();
    let sealed = enc.finish(&mut other).unwrap();
    assert_eq!(other.len(), original.len());
    assert_eq!(&other[..16], &original[..16]);
    assert_ne!(sealed.digest, Some(p.digest));
    std::fs::write(&path, &other).unwrap();
    let dom = browser::dump_dom(&link).await.unwrap();
    assert_refused(
        &dom,
        "The server sent a different file than the one shared. Nothing was saved.",
    );
}
