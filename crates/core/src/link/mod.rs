//! Linking a new device by a short one-time code (issue 9): SPAKE2 over the relay's
//! rendezvous, explicit key confirmation, then an AEAD channel between the two devices.
//!
//! ```text
//! host (existing device)                 relay rendezvous            joiner (new machine)
//! code = "7-crossword-harbor"  ── the user types it on the new machine ──▶
//! Handshake::start(Host, code)  ── spake ──▶  ◀── spake ──  Handshake::start(Joiner, code)
//! finish(peer spake)            ── confirm ─▶  ◀── confirm ─  finish(peer spake)
//! verify(peer confirm)                                        verify(peer confirm)
//! Channel::seal / open          ◀═════ AEAD messages, in order ═════▶
//! ```
//!
//! The relay sees the SPAKE2 messages and can try one code per rendezvous (an online guess:
//! 1 in 65,536 with two words); it cannot test codes offline. A wrong code is not an error
//! in SPAKE2 itself (both sides simply get different keys): the confirmation messages, an
//! HMAC over the whole transcript keyed per role, are what tell. Every failure leaves the
//! caller nothing but an error: no key, no plaintext.
//!
//! Sans-IO: randomness comes in as an argument, nothing here reads a clock or a socket.

mod messages;

pub use messages::{
    HistoryChunk, HistoryMessage, LINK_VERSION, LinkMessage, MAX_FAILED_REASON, MAX_HISTORY_CHUNKS,
};

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, Rng, RngCore};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use spake2::{Ed25519Group, Identity, Password, Spake2};

/// The SPAKE2 identity string (both sides use the symmetric variant).
const SPAKE_IDENTITY: &[u8] = b"cove/v1/link";
/// Labels of the confirmation MACs and the channel keys.
const CONFIRM_HOST: &[u8] = b"cove/v1/link-confirm\0host";
const CONFIRM_JOINER: &[u8] = b"cove/v1/link-confirm\0joiner";
const KEY_HOST_TO_JOINER: &[u8] = b"cove/v1/link-key\0host-to-joiner";
const KEY_JOINER_TO_HOST: &[u8] = b"cove/v1/link-key\0joiner-to-host";
/// Length of a SPAKE2 message (Ed25519 group: one byte side tag and a point).
const SPAKE_MESSAGE_LEN: usize = 33;
/// Length of a confirmation message (HMAC-SHA256).
pub const CONFIRM_LEN: usize = 32;
/// Largest plaintext of one channel message.
pub const MAX_LINK_MESSAGE: usize = 512 * 1024;
/// Largest nameplate (the relay's rendezvous number, the code's first part).
pub const MAX_NAMEPLATE: u32 = 999_999;

/// Why linking failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// A code that is not `NUMBER-WORD-WORD` with words from the list.
    #[error(
        "not a link code: expected NUMBER-WORD-WORD as the other device shows it (e.g. 7-crossword-harbor)"
    )]
    BadCode,
    /// The other side's SPAKE2 message is malformed.
    #[error("the other device sent a malformed link message")]
    Malformed,
    /// The confirmations differ: the codes typed on the two devices were not the same (or
    /// someone in between guessed wrong).
    #[error("the link code did not match: check it and start again")]
    WrongCode,
    /// A channel message failed authentication, or came out of order or twice.
    #[error("a message on the link channel was altered, replayed or reordered")]
    Tampered,
    /// A channel message is larger than [`MAX_LINK_MESSAGE`].
    #[error("a link message is larger than {MAX_LINK_MESSAGE} bytes")]
    TooLarge,
    /// The other device speaks another version of the link messages.
    #[error("the other device runs an incompatible Cove version (link version {0}); update both")]
    Version(u16),
}

/// Which device this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The existing device that shows the code.
    Host,
    /// The new machine that types it.
    Joiner,
}

/// A one-time link code: the rendezvous number the relay gave the host and two random
/// words, written `7-crossword-harbor`.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    nameplate: u32,
    words: [u8; 2],
}

impl LinkCode {
    /// A fresh code for rendezvous `nameplate` (at most [`MAX_NAMEPLATE`]).
    pub fn generate<R: RngCore + CryptoRng>(
        nameplate: u32,
        rng: &mut R,
    ) -> Result<Self, LinkError> {
        if nameplate > MAX_NAMEPLATE {
            return Err(LinkError::BadCode);
        }
        Ok(LinkCode {
            nameplate,
            words: rng.r#gen(),
        })
    }

    /// The rendezvous number, which the joiner sends to the relay to meet the host.
    pub fn nameplate(&self) -> u32 {
        self.nameplate
    }
}

impl fmt::Display for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b] = self.words;
        write!(
            f,
            "{}-{}-{}",
            self.nameplate,
            WORDS[usize::from(a)],
            WORDS[usize::from(b)]
        )
    }
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The words are the secret.
        write!(f, "LinkCode({}-..)", self.nameplate)
    }
}

impl FromStr for LinkCode {
    type Err = LinkError;
    /// Parses a code as a user types it: surrounding space ignored, words in any case,
    /// separated by '-' or spaces.
    fn from_str(s: &str) -> Result<Self, LinkError> {
        let lower = s.trim().to_ascii_lowercase();
        let mut parts = lower
            .split(|c: char| c == '-' || c.is_ascii_whitespace())
            .filter(|p| !p.is_empty());
        let (Some(number), Some(a), Some(b), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LinkError::BadCode);
        };
        if number.is_empty() || number.len() > 6 || !number.bytes().all(|c| c.is_ascii_digit()) {
            return Err(LinkError::BadCode);
        }
        let nameplate = number.parse().map_err(|_| LinkError::BadCode)?;
        let word = |w: &str| {
            WORDS
                .iter()
                .position(|x| *x == w)
                .and_then(|i| u8::try_from(i).ok())
                .ok_or(LinkError::BadCode)
        };
        Ok(LinkCode {
            nameplate,
            words: [word(a)?, word(b)?],
        })
    }
}

/// The first step: this side's SPAKE2 state.
pub struct Handshake {
    role: Role,
    spake: Spake2<Ed25519Group>,
    own: Vec<u8>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Starts linking as `role` with `code`; returns the state and the message to send.
    pub fn start<R: RngCore + CryptoRng>(
        role: Role,
        code: &LinkCode,
        rng: &mut R,
    ) -> (Self, Vec<u8>) {
        let password = Password::new(code.to_string().into_bytes());
        let (spake, own) = Spake2::<Ed25519Group>::start_symmetric_with_rng(
            &password,
            &Identity::new(SPAKE_IDENTITY),
            rng,
        );
        (
            Handshake {
                role,
                spake,
                own: own.clone(),
            },
            own,
        )
    }

    /// Takes the other side's SPAKE2 message; returns the state that confirms the key.
    pub fn finish(self, peer: &[u8]) -> Result<Confirming, LinkError> {
        if peer.len() != SPAKE_MESSAGE_LEN || peer == self.own.as_slice() {
            return Err(LinkError::Malformed);
        }
        let key = self.spake.finish(peer).map_err(|_| LinkError::Malformed)?;
        // The transcript in a fixed order: the host's message first.
        let mut transcript = Vec::with_capacity(2 * SPAKE_MESSAGE_LEN);
        match self.role {
            Role::Host => {
                transcript.extend_from_slice(&self.own);
                transcript.extend_from_slice(peer);
            }
            Role::Joiner => {
                transcript.extend_from_slice(peer);
                transcript.extend_from_slice(&self.own);
            }
        }
        Ok(Confirming {
            role: self.role,
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            transcript,
        })
    }
}

/// The second step: a key both sides may share, not yet confirmed.
pub struct Confirming {
    role: Role,
    key: hmac::Key,
    transcript: Vec<u8>,
}

impl fmt::Debug for Confirming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Confirming")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Confirming {
    fn mac(&self, label: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(label);
        ctx.update(&self.transcript);
        ctx.sign()
    }

    /// This side's confirmation message, to send.
    pub fn confirmation(&self) -> Vec<u8> {
        let label = match self.role {
            Role::Host => CONFIRM_HOST,
            Role::Joiner => CONFIRM_JOINER,
        };
        self.mac(label).as_ref().to_vec()
    }

    /// Checks the other side's confirmation (constant time); on success, the channel.
    pub fn verify(self, peer: &[u8]) -> Result<Channel, LinkError> {
        let label = match self.role {
            Role::Host => CONFIRM_JOINER,
            Role::Joiner => CONFIRM_HOST,
        };
        let mut ctx = Vec::with_capacity(label.len() + self.transcript.len());
        ctx.extend_from_slice(label);
        ctx.extend_from_slice(&self.transcript);
        hmac::verify(&self.key, &ctx, peer).map_err(|_| LinkError::WrongCode)?;
        let derive = |label: &[u8]| -> Result<LessSafeKey, LinkError> {
            let tag = self.mac(label);
            UnboundKey::new(&AES_256_GCM, tag.as_ref())
                .map(LessSafeKey::new)
                .map_err(|_| LinkError::Malformed)
        };
        let (send, recv) = match self.role {
            Role::Host => (KEY_HOST_TO_JOINER, KEY_JOINER_TO_HOST),
            Role::Joiner => (KEY_JOINER_TO_HOST, KEY_HOST_TO_JOINER),
        };
        Ok(Channel {
            send: derive(send)?,
            recv: derive(recv)?,
            send_label: send,
            recv_label: recv,
            sent: 0,
            received: 0,
        })
    }
}

/// The confirmed channel: AES-256-GCM per direction, counter nonces, so a message altered,
/// dropped, replayed or reordered fails.
pub struct Channel {
    send: LessSafeKey,
    recv: LessSafeKey,
    send_label: &'static [u8],
    recv_label: &'static [u8],
    sent: u64,
    received: u64,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl Channel {
    /// Encrypts the next message to the other side.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, LinkError> {
        if plaintext.len() > MAX_LINK_MESSAGE {
            return Err(LinkError::TooLarge);
        }
        let mut out = plaintext.to_vec();
        self.send
            .seal_in_place_append_tag(nonce(self.sent), Aad::from(self.send_label), &mut out)
            .map_err(|_| LinkError::TooLarge)?;
        self.sent += 1;
        Ok(out)
    }

    /// Decrypts the next message from the other side (they must arrive in order, once).
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, LinkError> {
        if ciphertext.len() > MAX_LINK_MESSAGE + AES_256_GCM.tag_len() {
            return Err(LinkError::TooLarge);
        }
        let mut buf = ciphertext.to_vec();
        let plain = self
            .recv
            .open_in_place(nonce(self.received), Aad::from(self.recv_label), &mut buf)
            .map_err(|_| LinkError::Tampered)?;
        let n = plain.len();
        self.received += 1;
        buf.truncate(n);
        Ok(buf)
    }
}

/// The 256 words of link codes: short, common, distinct English nouns.
const WORDS: [&str; 256] = [
    "acorn",
    "agent",
    "alarm",
    "album",
    "alley",
    "amber",
    "anchor",
    "angle",
    "ankle",
    "apple",
    "apron",
    "arena",
    "armor",
    "arrow",
    "atlas",
    "attic",
    "autumn",
    "award",
    "bacon",
    "badge",
    "bagel",
    "baker",
    "bamboo",
    "banjo",
    "barrel",
    "basket",
    "beach",
    "beacon",
    "beaver",
    "berry",
    "bicycle",
    "bishop",
    "blanket",
    "blossom",
    "border",
    "bottle",
    "bracket",
    "bread",
    "breeze",
    "brick",
    "bridge",
    "bronze",
    "bubble",
    "bucket",
    "buffalo",
    "bundle",
    "butter",
    "button",
    "cabin",
    "cactus",
    "camel",
    "candle",
    "canoe",
    "canvas",
    "canyon",
    "carbon",
    "carpet",
    "castle",
    "cattle",
    "cedar",
    "cellar",
    "cement",
    "cherry",
    "chimney",
    "circle",
    "citrus",
    "clover",
    "cobalt",
    "coconut",
    "comet",
    "copper",
    "coral",
    "cotton",
    "coyote",
    "crayon",
    "cricket",
    "crossword",
    "crystal",
    "cupboard",
    "curtain",
    "cushion",
    "daisy",
    "dancer",
    "delta",
    "denim",
    "desert",
    "diamond",
    "dinner",
    "doctor",
    "dolphin",
    "donkey",
    "dragon",
    "drawer",
    "dream",
    "eagle",
    "echo",
    "elbow",
    "ember",
    "engine",
    "falcon",
    "feather",
    "fence",
    "ferry",
    "fiddle",
    "finger",
    "forest",
    "fossil",
    "fountain",
    "fox",
    "galaxy",
    "garden",
    "garlic",
    "gazelle",
    "ginger",
    "glacier",
    "globe",
    "goblet",
    "gopher",
    "granite",
    "grape",
    "gravel",
    "guitar",
    "hammer",
    "harbor",
    "harvest",
    "hazel",
    "helmet",
    "hickory",
    "honey",
    "hornet",
    "husky",
    "igloo",
    "island",
    "ivory",
    "jacket",
    "jaguar",
    "jasmine",
    "jelly",
    "jewel",
    "jigsaw",
    "jungle",
    "kayak",
    "kettle",
    "kitten",
    "koala",
    "ladder",
    "lagoon",
    "lantern",
    "laptop",
    "lemon",
    "lentil",
    "letter",
    "lily",
    "linen",
    "lizard",
    "lobster",
    "locket",
    "lotus",
    "magnet",
    "mango",
    "maple",
    "marble",
    "meadow",
    "melon",
    "meteor",
    "mitten",
    "monkey",
    "mosaic",
    "muffin",
    "museum",
    "napkin",
    "nectar",
    "needle",
    "nickel",
    "noodle",
    "nutmeg",
    "oasis",
    "ocean",
    "olive",
    "onion",
    "orbit",
    "orchid",
    "otter",
    "oven",
    "oyster",
    "paddle",
    "palace",
    "panda",
    "paper",
    "parrot",
    "pebble",
    "pepper",
    "piano",
    "pickle",
    "pillow",
    "pilot",
    "pioneer",
    "planet",
    "pocket",
    "pony",
    "poppy",
    "potato",
    "puzzle",
    "quartz",
    "quill",
    "rabbit",
    "radar",
    "raven",
    "record",
    "ribbon",
    "river",
    "robin",
    "rocket",
    "saddle",
    "salmon",
    "sandal",
    "satin",
    "scarf",
    "shadow",
    "shovel",
    "silver",
    "sketch",
    "sparrow",
    "spider",
    "spoon",
    "squirrel",
    "statue",
    "summit",
    "sunset",
    "swan",
    "tablet",
    "teapot",
    "thimble",
    "thunder",
    "tiger",
    "timber",
    "tomato",
    "tractor",
    "trumpet",
    "tulip",
    "tunnel",
    "turtle",
    "umbrella",
    "valley",
    "velvet",
    "violin",
    "volcano",
    "wagon",
    "walnut",
    "walrus",
    "window",
    "winter",
    "wizard",
    "yogurt",
    "zebra",
    "zipper",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    /// Runs the handshake with the host's and the joiner's codes; returns both outcomes.
    fn link(
        host_code: &LinkCode,
        joiner_code: &LinkCode,
    ) -> (Result<Channel, LinkError>, Result<Channel, LinkError>) {
        let (h, hm) = Handshake::start(Role::Host, host_code, &mut rng(1));
        let (j, jm) = Handshake::start(Role::Joiner, joiner_code, &mut rng(2));
        let h = h.finish(&jm).unwrap();
        let j = j.finish(&hm).unwrap();
        let (hc, jc) = (h.confirmation(), j.confirmation());
        (h.verify(&jc), j.verify(&hc))
    }

    #[test]
    fn the_same_code_gives_both_sides_one_channel() {
        let code = LinkCode::generate(7, &mut rng(3)).unwrap();
        let typed: LinkCode = code.to_string().parse().unwrap();
        let (host, joiner) = link(&code, &typed);
        let (mut host, mut joiner) = (host.unwrap(), joiner.unwrap());
        let c = joiner.seal(b"device key and name").unwrap();
        assert_eq!(host.open(&c).unwrap(), b"device key and name");
        let c = host.seal(b"certificate, groups").unwrap();
        assert_eq!(joiner.open(&c).unwrap(), b"certificate, groups");
        let c = host.seal(b"").unwrap();
        assert_eq!(joiner.open(&c).unwrap(), b"");
    }

    #[test]
    fn a_wrong_code_fails_on_both_sides_and_yields_no_channel() {
        let code = LinkCode::generate(7, &mut rng(3)).unwrap();
        let mut other = code.clone();
        other.words[1] = other.words[1].wrapping_add(1);
        let (host, joiner) = link(&code, &other);
        assert_eq!(host.unwrap_err(), LinkError::WrongCode);
        assert_eq!(joiner.unwrap_err(), LinkError::WrongCode);
        // Another nameplate with the same words is another code too.
        let mut moved = code.clone();
        moved.nameplate = 8;
        let (host, joiner) = link(&code, &moved);
        assert_eq!(host.unwrap_err(), LinkError::WrongCode);
        assert_eq!(joiner.unwrap_err(), LinkError::WrongCode);
    }

    #[test]
    fn a_reflected_message_or_confirmation_is_refused() {
        let code = LinkCode::generate(7, &mut rng(3)).unwrap();
        // The relay sends the host its own SPAKE2 message back.
        let (h, hm) = Handshake::start(Role::Host, &code, &mut rng(1));
        assert_eq!(h.finish(&hm).unwrap_err(), LinkError::Malformed);
        // Or its own confirmation.
        let (h, _) = Handshake::start(Role::Host, &code, &mut rng(1));
        let (j, jm) = Handshake::start(Role::Joiner, &code, &mut rng(2));
        drop(j);
        let h = h.finish(&jm).unwrap();
        let own = h.confirmation();
        assert_eq!(h.verify(&own).unwrap_err(), LinkError::WrongCode);
    }

    #[test]
    fn malformed_spake_messages_are_refused_or_fail_confirmation() {
        let code = LinkCode::generate(7, &mut rng(3)).unwrap();
        for bad in [vec![], vec![0u8; 32], vec![0u8; 34]] {
            let (h, _) = Handshake::start(Role::Host, &code, &mut rng(1));
            assert_eq!(h.finish(&bad).unwrap_err(), LinkError::Malformed);
        }
        // 33 bytes that are not the joiner's message: whatever SPAKE2 makes of them, the
        // genuine joiner's confirmation does not verify.
        for bad in [[0u8; 33], [0xffu8; 33], [1u8; 33]] {
            let (h, _) = Handshake::start(Role::Host, &code, &mut rng(1));
            let (j, _) = Handshake::start(Role::Joiner, &code, &mut rng(2));
            let (h2, hm) = Handshake::start(Role::Host, &code, &mut rng(1));
            drop(h2);
            let joiner_confirm = j.finish(&hm).unwrap().confirmation();
            match h.finish(&bad) {
                Err(e) => assert_eq!(e, LinkError::Malformed),
                Ok(h) => assert_eq!(h.verify(&joiner_confirm).unwrap_err(), LinkError::WrongCode),
            }
        }
        let (h, _) = Handshake::start(Role::Host, &code, &mut rng(1));
        let (_, jm) = Handshake::start(Role::Joiner, &code, &mut rng(2));
        let h = h.finish(&jm).unwrap();
        assert_eq!(h.verify(&[0u8; 31]).unwrap_err(), LinkError::WrongCode);
    }

    #[test]
    fn altered_replayed_reordered_and_reflected_channel_messages_fail() {
        let code = LinkCode::generate(7, &mut rng(3)).unwrap();
        let (host, joiner) = link(&code, &code);
        let (mut host, mut joiner) = (host.unwrap(), joiner.unwrap());
        let first = host.seal(b"first").unwrap();
        let second = host.seal(b"second").unwrap();
        // Reordered.
        assert_eq!(joiner.open(&second).unwrap_err(), LinkError::Tampered);
        // Altered.
        let mut bad = first.clone();
        bad[0] ^= 1;
        assert_eq!(joiner.open(&bad).unwrap_err(), LinkError::Tampered);
        // A failure consumes nothing: the genuine message still opens, in order.
        assert_eq!(joiner.open(&first).unwrap(), b"first");
        // Replayed.
        assert_eq!(joiner.open(&first).unwrap_err(), LinkError::Tampered);
        assert_eq!(joiner.open(&second).unwrap(), b"second");
        // The host's own message reflected back to it (other key, other label).
        let mine = host.seal(b"third").unwrap();
        assert_eq!(host.open(&mine).unwrap_err(), LinkError::Tampered);
        // Sizes are bounded.
        assert_eq!(
            host.seal(&vec![0; MAX_LINK_MESSAGE + 1]).unwrap_err(),
            LinkError::TooLarge
        );
        assert_eq!(
            joiner.open(&vec![0; MAX_LINK_MESSAGE + 17]).unwrap_err(),
            LinkError::TooLarge
        );
    }

    #[test]
    fn codes_parse_as_users_type_them() {
        let code = LinkCode::generate(123, &mut rng(9)).unwrap();
        let text = code.to_string();
        assert!(text.starts_with("123-"));
        assert_eq!(text.split('-').count(), 3);
        assert_eq!(text.parse::<LinkCode>().unwrap(), code);
        assert_eq!(
            format!("  {}  ", text.to_uppercase())
                .parse::<LinkCode>()
                .unwrap(),
            code
        );
        assert_eq!(text.replace('-', " ").parse::<LinkCode>().unwrap(), code);
        for bad in [
            "",
            "7",
            "7-crossword",
            "7-crossword-harbor-extra",
            "x-crossword-harbor",
            "7-crossword-notaword",
            "1234567-crossword-harbor",
            "7-crossword-harbör",
        ] {
            assert_eq!(
                bad.parse::<LinkCode>().unwrap_err(),
                LinkError::BadCode,
                "{bad}"
            );
        }
        assert_eq!(
            "7-crossword-harbor"
                .parse::<LinkCode>()
                .unwrap()
                .nameplate(),
            7
        );
        assert!(LinkCode::generate(MAX_NAMEPLATE + 1, &mut rng(1)).is_err());
        // The Debug form does not show the secret words.
        assert!(!format!("{code:?}").contains(text.split('-').nth(1).unwrap()));
    }

    #[test]
    fn the_word_list_is_unambiguous() {
        let mut sorted = WORDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        assert!(
            WORDS
                .iter()
                .all(|w| w.bytes().all(|b| b.is_ascii_lowercase()) && (3..=9).contains(&w.len()))
        );
    }
}
