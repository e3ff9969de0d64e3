//! The openmls provider: RustCrypto for the primitives, a seeded ChaCha20 RNG for every
//! random value openmls asks for, and the client's [`cove_store::Store`] for its state.

use std::sync::Mutex;

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The randomness source: a ChaCha20 stream from the seed the shell injected.
pub struct SeededRand {
    rng: Mutex<ChaCha20Rng>,
}

/// The RNG lock was poisoned (a panic elsewhere).
#[derive(Debug, thiserror::Error)]
#[error("random number generator unavailable")]
pub struct RandError;

impl SeededRand {
    /// From a 32-byte seed (the shell draws it from the OS RNG; tests fix it).
    pub fn new(seed: [u8; 32]) -> Self {
        SeededRand {
            rng: Mutex::new(ChaCha20Rng::from_seed(seed)),
        }
    }

    /// Fills `out` with random bytes.
    pub fn fill(&self, out: &mut [u8]) -> Result<(), RandError> {
        self.rng.lock().map_err(|_| RandError)?.fill_bytes(out);
        Ok(())
    }
}

impl OpenMlsRand for SeededRand {
    type Error = RandError;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0u8; N];
        self.fill(&mut out)?;
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; len];
        self.fill(&mut out)?;
        Ok(out)
    }
}

/// Crypto + injected randomness + the client's store.
///
/// Note: `RustCrypto` keeps its own OS-seeded RNG for randomness used *inside* primitives
/// (HPKE encapsulation); openmls_rust_crypto 0.6 offers no way to inject it. Every random
/// value openmls itself draws (key derivation seeds, nonces reuse guards, group ids...)
/// comes from [`SeededRand`].
pub struct CoveProvider<S> {
    crypto: RustCrypto,
    rand: SeededRand,
    storage: S,
}

impl<S> CoveProvider<S> {
    /// A provider over `storage` with randomness from `seed`.
    pub fn new(storage: S, seed: [u8; 32]) -> Self {
        CoveProvider {
            crypto: RustCrypto::default(),
            rand: SeededRand::new(seed),
            storage,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.storage
    }

    /// The RNG.
    pub fn rng(&self) -> &SeededRand {
        &self.rand
    }
}

impl<S: cove_store::Store> OpenMlsProvider for CoveProvider<S> {
    type CryptoProvider = RustCrypto;
    type RandProvider = SeededRand;
    type StorageProvider = S;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.rand
    }
}
