//! The search index (issue 13): the same semantics on both backends (words, prefixes, AND,
//! per group, order, limit, replace, remove, transactions), hostile query strings checked
//! against a reference model, the query limits, and for SQLite: diacritics, the migration
//! of a file from before the index, encryption in place, and the byte scan after `scrub`.

use super::*;
use cove_store::{MAX_SEARCH_QUERY_BYTES, MAX_SEARCH_WORDS, StoreError, search_words};

const G1: GroupId = GroupId([1; 16]);
const G2: GroupId = GroupId([2; 16]);

/// The texts the semantic tests index: (group, seq, text).
const TEXTS: &[(GroupId, u64, &str)] = &[
    (G1, 1, "Hello world, the orange cat"),
    (G1, 2, "hello again: NEAR the river"),
    (G1, 5, "body text with a \"quoted\" word and a star*"),
    (G1, 7, "Meeting at noon (bring the notes)"),
    (G2, 3, "hello from the other group"),
    (G2, 4, "world peace and orange juice"),
    (G2, 9, "Привет мир 東京 2026"),
];

fn index_all(s: &impl Store) {
    for (g, seq, text) in TEXTS {
        s.text_index(g, Seq(*seq), text).unwrap();
    }
}

/// What a query must find: the indexed texts in which every query word is a prefix of some
/// word, ordered by seq then group (descending).
fn model(query: &str, group: Option<&GroupId>, limit: usize) -> Vec<(GroupId, Seq)> {
    let words: Vec<String> = search_words(query).collect();
    if words.is_empty() {
        return Vec::new();
    }
    let mut hits: Vec<(GroupId, Seq)> = TEXTS
        .iter()
        .filter(|(g, _, _)| group.is_none_or(|want| want == g))
        .filter(|(_, _, text)| {
            let tokens: Vec<String> = search_words(text).collect();
            words
                .iter()
                .all(|w| tokens.iter().any(|t| t.starts_with(w.as_str())))
        })
        .map(|(g, seq, _)| (*g, Seq(*seq)))
        .collect();
    hits.sort_by_key(|h| std::cmp::Reverse((h.1, h.0)));
    hits.truncate(limit);
    hits
}

fn finds_words_and_prefixes_per_group_newest_first(s: &impl Store) {
    index_all(s);
    let q = |query: &str, group: Option<&GroupId>| s.text_search(query, group, 100).unwrap();
    // A word, any case; across groups by seq then group.
    assert_eq!(
        q("hello", None),
        vec![(G2, Seq(3)), (G1, Seq(2)), (G1, Seq(1))]
    );
    assert_eq!(q("HELLO", Some(&G1)), vec![(G1, Seq(2)), (G1, Seq(1))]);
    // A prefix.
    assert_eq!(q("hel", Some(&G2)), vec![(G2, Seq(3))]);
    assert_eq!(q("orang", None), vec![(G2, Seq(4)), (G1, Seq(1))]);
    // Every word must match.
    assert_eq!(q("orange cat", None), vec![(G1, Seq(1))]);
    assert_eq!(q("hello zebra", None), vec![]);
    // Words inside punctuation, other scripts, digits.
    assert_eq!(q("quoted", None), vec![(G1, Seq(5))]);
    assert_eq!(q("мир", None), vec![(G2, Seq(9))]);
    assert_eq!(q("привет", None), vec![(G2, Seq(9))]);
    assert_eq!(q("東京", None), vec![(G2, Seq(9))]);
    assert_eq!(q("2026", None), vec![(G2, Seq(9))]);
    // A prefix is a prefix of a word, not a substring.
    assert_eq!(q("ello", None), vec![]);
    // The limit keeps the newest.
    assert_eq!(
        s.text_search("hello", None, 2).unwrap(),
        vec![(G2, Seq(3)), (G1, Seq(2))]
    );
    assert_eq!(s.text_search("hello", None, 0).unwrap(), vec![]);
    // No words, no hits.
    assert_eq!(q("", None), vec![]);
    assert_eq!(q("  ,;  ", None), vec![]);
    // An unknown group has no hits.
    assert_eq!(q("hello", Some(&GroupId([9; 16]))), vec![]);
}

fn index_replaces_and_unindex_removes(s: &impl Store) {
    index_all(s);
    // Replacing the text of (G1, 1): the old words go, the new ones come.
    s.text_index(&G1, Seq(1), "goodbye moon").unwrap();
    assert_eq!(s.text_search("cat", None, 10).unwrap(), vec![]);
    assert_eq!(
        s.text_search("hello", Some(&G1), 10).unwrap(),
        vec![(G1, Seq(2))]
    );
    assert_eq!(s.text_search("moon", None, 10).unwrap(), vec![(G1, Seq(1))]);
    // Removing.
    s.text_unindex(&G1, Seq(1)).unwrap();
    assert_eq!(s.text_search("moon", None, 10).unwrap(), vec![]);
    // Removing again, or what was never indexed, is no error.
    s.text_unindex(&G1, Seq(1)).unwrap();
    s.text_unindex(&G2, Seq(1000)).unwrap();
    // The other messages are untouched.
    assert_eq!(
        s.text_search("orange", None, 10).unwrap(),
        vec![(G2, Seq(4))]
    );
    // Indexing again after a removal works.
    s.text_index(&G1, Seq(1), "moon again").unwrap();
    assert_eq!(s.text_search("moon", None, 10).unwrap(), vec![(G1, Seq(1))]);
    s.scrub().unwrap();
    assert_eq!(s.text_search("moon", None, 10).unwrap(), vec![(G1, Seq(1))]);
}

fn index_follows_transactions(s: &impl Store) {
    s.begin().unwrap();
    s.text_index(&G1, Seq(1), "rolled back").unwrap();
    s.rollback().unwrap();
    assert_eq!(s.text_search("rolled", None, 10).unwrap(), vec![]);
    s.begin().unwrap();
    s.text_index(&G1, Seq(1), "committed").unwrap();
    s.text_index(&G1, Seq(2), "committed too").unwrap();
    // Visible inside the transaction; scrub waits for its end.
    assert_eq!(s.text_search("committed", None, 10).unwrap().len(), 2);
    assert!(matches!(s.scrub(), Err(StoreError::Transaction(_))));
    s.commit().unwrap();
    s.begin().unwrap();
    s.text_unindex(&G1, Seq(2)).unwrap();
    s.rollback().unwrap();
    assert_eq!(
        s.text_search("committed", None, 10).unwrap(),
        vec![(G1, Seq(2)), (G1, Seq(1))]
    );
}

/// Query strings that would be syntax in FTS5 (or break a naive quoting): each is only
/// words, so it finds exactly what the model finds, never more, and never fails.
const HOSTILE: &[&str] = &[
    "\"",
    "\"\"",
    "\"hello",
    "hello\"",
    "\"hello\" OR \"world\"",
    "hello OR world",
    "hello AND world",
    "hello NOT world",
    "NOT hello",
    "NEAR(hello world)",
    "NEAR(hello world, 100)",
    "near",
    "*",
    "hel*",
    "h*",
    "**",
    "(hello)",
    "(hello OR cat",
    ")",
    "body:hello",
    "body : hello",
    "{body}: hello",
    "- hello",
    "-body:world",
    "^hello",
    "+hello",
    "hello\0world",
    "'; DROP TABLE kv; --",
    "\\\"hello\\\"",
    "%",
    "_",
    "text_fts",
    "rank:hello",
    "star*",
    "\u{202e}hello",
    "hello\u{200b}world",
    "orange\tcat\n",
    // Letters and digits to Rust that FTS5's tokenizer may drop or split on (marks,
    // modifier letters, letter numbers): such a word must never become an empty term
    // (which could match everything). (Inside a word, SQLite folds such marks away with the
    // diacritics: "\u{0345}hello" finds "hello" there, not in memory.)
    "\u{0345}",
    "\u{093E}",
    "\u{0903}",
    "\u{05B0}",
    "\u{16EE}",
    "\u{2160}",
    "\u{00B2}",
    "\u{00AA}",
    "\u{02B0}",
    "\u{0300}",
    "\u{1F600}",
];

fn hostile_queries_find_only_what_their_words_find(s: &impl Store) {
    index_all(s);
    for query in HOSTILE {
        for group in [None, Some(&G1)] {
            let got = s
                .text_search(query, group, 100)
                .unwrap_or_else(|e| panic!("{query:?}: {e}"));
            assert_eq!(got, model(query, group, 100), "query {query:?}");
        }
    }
    // A few the model makes concrete: OR, NOT and NEAR are words here, not operators.
    assert_eq!(s.text_search("cat OR river", None, 100).unwrap(), vec![]);
    assert_eq!(s.text_search("cat NOT orange", None, 100).unwrap(), vec![]);
    assert_eq!(
        s.text_search("NEAR(hello", None, 100).unwrap(),
        vec![(G1, Seq(2))]
    );
    assert_eq!(s.text_search("*", None, 100).unwrap(), vec![]);
    assert_eq!(s.text_search("body:hello", None, 100).unwrap(), vec![]);
    // The index is intact afterwards.
    assert_eq!(s.text_search("hello", None, 100).unwrap().len(), 3);
}

fn queries_over_the_limits_are_refused(s: &impl Store) {
    index_all(s);
    // At the limits: accepted.
    let long_word = "h".repeat(MAX_SEARCH_QUERY_BYTES);
    assert_eq!(s.text_search(&long_word, None, 10).unwrap(), vec![]);
    let many = vec!["hello"; MAX_SEARCH_WORDS].join(" ");
    assert_eq!(
        s.text_search(&many, Some(&G2), 10).unwrap(),
        vec![(G2, Seq(3))]
    );
    // Over them: refused, not shortened (a shortened query would match more).
    let too_long = "h".repeat(MAX_SEARCH_QUERY_BYTES + 1);
    assert!(matches!(
        s.text_search(&too_long, None, 10),
        Err(StoreError::InvalidSearch(_))
    ));
    let too_many = vec!["hello"; MAX_SEARCH_WORDS + 1].join(" ");
    assert!(matches!(
        s.text_search(&too_many, None, 10),
        Err(StoreError::InvalidSearch(_))
    ));
    // Separators do not count as words, but they count as bytes.
    let spaced = format!("hello{}", " ".repeat(MAX_SEARCH_QUERY_BYTES));
    assert!(matches!(
        s.text_search(&spaced, None, 10),
        Err(StoreError::InvalidSearch(_))
    ));
    // A huge limit is fine.
    assert_eq!(s.text_search("hello", None, usize::MAX).unwrap().len(), 3);
}

macro_rules! search_conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn finds_words_and_prefixes_per_group_newest_first() {
                let (s, _d) = $make;
                super::finds_words_and_prefixes_per_group_newest_first(&s);
            }
            #[test]
            fn index_replaces_and_unindex_removes() {
                let (s, _d) = $make;
                super::index_replaces_and_unindex_removes(&s);
            }
            #[test]
            fn index_follows_transactions() {
                let (s, _d) = $make;
                super::index_follows_transactions(&s);
            }
            #[test]
            fn hostile_queries_find_only_what_their_words_find() {
                let (s, _d) = $make;
                super::hostile_queries_find_only_what_their_words_find(&s);
            }
            #[test]
            fn queries_over_the_limits_are_refused() {
                let (s, _d) = $make;
                super::queries_over_the_limits_are_refused(&s);
            }
        }
    };
}

search_conformance!(memory, (MemoryStore::new(), ()));
search_conformance!(sqlite, {
    let d = tempfile::tempdir().unwrap();
    (SqliteStore::open(d.path().join("cove.db")).unwrap(), d)
});

#[test]
fn sqlite_search_folds_diacritics() {
    let s = SqliteStore::open_in_memory().unwrap();
    s.text_index(&G1, Seq(1), "Un café à Zürich").unwrap();
    assert_eq!(s.text_search("cafe", None, 10).unwrap(), vec![(G1, Seq(1))]);
    assert_eq!(
        s.text_search("CAFÉ zur", None, 10).unwrap(),
        vec![(G1, Seq(1))]
    );
}

#[test]
fn sqlite_index_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        index_all(&s);
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.text_search("orange", None, 10).unwrap(),
        model("orange", None, 10)
    );
}

#[test]
fn a_store_from_before_the_index_is_migrated() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    {
        // The schema as it was before versions: the kv table alone, user_version 0.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE kv (ns INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
                              PRIMARY KEY (ns, key)) WITHOUT ROWID;
             INSERT INTO kv VALUES (3, CAST('server' AS BLOB), CAST('wss://x' AS BLOB));",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.config("server").unwrap(), Some("wss://x".into()));
    index_all(&s);
    assert_eq!(
        s.text_search("hello", None, 10).unwrap(),
        model("hello", None, 10)
    );
    drop(s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
    drop(conn);
    // Opening a migrated file again changes nothing.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.text_search("hello", None, 10).unwrap(),
        model("hello", None, 10)
    );
}

#[test]
fn encrypting_in_place_keeps_the_index() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        index_all(&s);
    }
    let key = DatabaseKey::from_bytes([3; 32]);
    SqliteStore::encrypt_in_place(&path, &key).unwrap();
    let s = SqliteStore::open_encrypted(&path, &key, Durability::Process).unwrap();
    assert_eq!(
        s.text_search("hello", None, 10).unwrap(),
        model("hello", None, 10)
    );
    s.text_index(&G2, Seq(20), "after encryption").unwrap();
    assert_eq!(
        s.text_search("encryption", None, 10).unwrap(),
        vec![(G2, Seq(20))]
    );
}

/// A word no other text shares a prefix with (the index stores terms prefix-compressed).
const SECRET_WORD: &str = "zqxjvorbital";

fn message(group: GroupId, seq: u64, text: &str) -> StoredMessage {
    StoredMessage {
        group,
        seq: Seq(seq),
        from: user("bob"),
        from_device: DeviceId(3),
        message_id: [seq as u8; 16],
        sent_at_ms: 10,
        content: text.as_bytes().to_vec(),
    }
}

/// Stores and indexes some messages, the secret word in one of them.
fn store_messages(s: &SqliteStore) {
    for seq in 1..=20u64 {
        let text = if seq == 7 {
            format!("meet me at the {SECRET_WORD} station")
        } else {
            format!("ordinary message number {seq} about apples")
        };
        s.put_message(&message(G1, seq, &text)).unwrap();
        s.text_index(&G1, Seq(seq), &text).unwrap();
    }
}

/// The deleted message's text: its record and its index entry are gone.
fn delete_message(s: &SqliteStore) {
    s.begin().unwrap();
    let mut key = G1.0.to_vec();
    key.extend_from_slice(&7u64.to_be_bytes());
    s.kv_delete(Namespace::Message, &key).unwrap();
    s.text_unindex(&G1, Seq(7)).unwrap();
    s.commit().unwrap();
    assert_eq!(s.message(&G1, Seq(7)).unwrap(), None);
    assert_eq!(s.text_search(SECRET_WORD, None, 10).unwrap(), vec![]);
}

#[test]
fn after_scrub_a_deleted_text_is_nowhere_in_the_files() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    let s = SqliteStore::open(&path).unwrap();
    store_messages(&s);
    // The scan can see it (in the record and in the index; here still in the WAL).
    assert!(contains(&store_files(&path), SECRET_WORD.as_bytes()));
    assert_eq!(s.text_search("zqxj", None, 10).unwrap(), vec![(G1, Seq(7))]);
    delete_message(&s);
    s.scrub().unwrap();
    // With the store still open: the database file and its (truncated) WAL.
    let files = store_files(&path);
    assert!(!contains(&files, SECRET_WORD.as_bytes()));
    // Not even a long part of it (the index keeps terms prefix-compressed).
    assert!(!contains(&files, &SECRET_WORD.as_bytes()[2..]));
    // The rest is intact.
    assert_eq!(s.text_search("apples", None, 100).unwrap().len(), 19);
    assert_eq!(s.messages(&G1).unwrap().len(), 19);
}

#[test]
fn after_scrub_an_unindexed_text_is_nowhere_in_the_files() {
    // The index alone (no message record holds the text): scrub clears the index's part.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    let s = SqliteStore::open(&path).unwrap();
    for seq in 1..=20u64 {
        s.text_index(&G1, Seq(seq), &format!("apples number {seq}"))
            .unwrap();
    }
    s.text_index(&G1, Seq(30), &format!("the {SECRET_WORD} station"))
        .unwrap();
    s.scrub().unwrap();
    // Merged into the file and out of the WAL: the index holds the word.
    assert!(contains(&store_files(&path), SECRET_WORD.as_bytes()));
    s.text_unindex(&G1, Seq(30)).unwrap();
    s.scrub().unwrap();
    let files = store_files(&path);
    assert!(!contains(&files, SECRET_WORD.as_bytes()));
    assert!(!contains(&files, &SECRET_WORD.as_bytes()[2..]));
    assert_eq!(s.text_search("apples", None, 100).unwrap().len(), 20);
}

/// Without `scrub`, what a delete leaves: the record's bytes are zeroed once the WAL is
/// checkpointed (here at close), but the index pages may keep the word (FTS5 leaves the
/// term in its segment until a merge): that is what `scrub` is for.
#[test]
fn without_scrub_the_deleted_record_is_zeroed_at_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cove.db");
    let s = SqliteStore::open(&path).unwrap();
    store_messages(&s);
    let full = format!("meet me at the {SECRET_WORD} station");
    assert!(contains(&store_files(&path), full.as_bytes()));
    delete_message(&s);
    drop(s);
    assert!(!contains(&store_files(&path), full.as_bytes()));
}

/// Not a pass/fail test: the time to index 100,000 messages (eight words each, ten groups)
/// and to search them, printed. Run with
/// `cargo test -p cove-store --test store search_100k -- --ignored --nocapture`
/// (add `--release` for real numbers).
#[test]
#[ignore = "benchmark; run on demand"]
fn search_100k_benchmark() {
    const WORDS: [&str; 20] = [
        "apple", "banana", "cherry", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra",
        "tango",
    ];
    let d = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(d.path().join("cove.db")).unwrap();
    let started = std::time::Instant::now();
    let mut x: u64 = 1;
    s.begin().unwrap();
    for i in 0..100_000u64 {
        let mut text = String::new();
        for _ in 0..8 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            text.push_str(&format!(
                "{}{} ",
                WORDS[(x >> 33) as usize % 20],
                (x >> 40) % 1000
            ));
        }
        s.text_index(&GroupId([(i % 10) as u8; 16]), Seq(i), &text)
            .unwrap();
    }
    s.commit().unwrap();
    eprintln!("indexed 100,000 messages in {:?}", started.elapsed());
    for q in ["apple123", "apple1 banana", "zulu", "ap", "tango999 sierra"] {
        let t = std::time::Instant::now();
        let all = s.text_search(q, None, 20).unwrap().len();
        let all_time = t.elapsed();
        let t = std::time::Instant::now();
        let one = s.text_search(q, Some(&GroupId([3; 16])), 20).unwrap().len();
        eprintln!(
            "{q:?}: {all} hits in all groups in {all_time:?}; {one} in one group in {:?}",
            t.elapsed()
        );
    }
    let t = std::time::Instant::now();
    s.text_unindex(&GroupId([3; 16]), Seq(3)).unwrap();
    s.scrub().unwrap();
    eprintln!("unindex and scrub: {:?}", t.elapsed());
}
