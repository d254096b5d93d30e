//! Password hashes: argon2id in PHC string form (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
//! the only form a password is ever stored in.
//!
//! Verifying is slow by design (tens of milliseconds and 19 MiB of memory): callers run it off
//! the async threads. A user that does not exist is checked against [`PasswordHash::dummy`],
//! so a wrong name costs what a wrong password costs and timing does not tell which users
//! exist. [`VerifiedCache`] remembers recent successes as keyed digests, so a fleet of
//! workers reconnecting with the right password does not pay argon2 each time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use blake2::{Blake2b512, Digest};

/// An argon2id hash in PHC string form, checked to parse.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

/// A stored hash that is not an argon2id PHC string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid password hash: {why} (expected an argon2id PHC string, $argon2id$v=19$...)")]
pub struct InvalidPasswordHash {
    /// What is wrong with it.
    pub why: String,
}

/// The largest argon2 memory cost a hash may ask for, in KiB (256 MiB).
const MAX_MEMORY_KIB: u32 = 256 * 1024;
/// The most argon2 passes a hash may ask for.
const MAX_PASSES: u32 = 10;
/// The most argon2 lanes a hash may ask for.
const MAX_LANES: u32 = 4;

impl PasswordHash {
    /// Hashes `password` with a fresh random salt and the argon2 defaults (m=19 MiB, t=2,
    /// p=1, OWASP's recommendation).
    pub fn new(password: &str) -> Self {
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .expect("argon2 with default parameters hashes any password");
        Self(hash.to_string())
    }

    /// Checks that `phc` is an argon2id PHC string whose cost is within the broker's limits.
    pub fn parse(phc: &str) -> Result<Self, InvalidPasswordHash> {
        let parsed = argon2::PasswordHash::new(phc)
            .map_err(|e| InvalidPasswordHash { why: e.to_string() })?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(InvalidPasswordHash {
                why: format!("algorithm {} is not argon2id", parsed.algorithm),
            });
        }
        if parsed.hash.is_none() {
            return Err(InvalidPasswordHash {
                why: "it has no hash part".into(),
            });
        }
        let params = argon2::Params::try_from(&parsed)
            .map_err(|e| InvalidPasswordHash { why: e.to_string() })?;
        // Every login verifies with the hash's own cost: a hash made with a huge one (from a
        // hand-edited file or `password_hash` on the API) would let each login take GiBs.
        if params.m_cost() > MAX_MEMORY_KIB
            || params.t_cost() > MAX_PASSES
            || params.p_cost() > MAX_LANES
        {
            return Err(InvalidPasswordHash {
                why: format!(
                    "its cost (m={}, t={}, p={}) is above the broker's limit (m={MAX_MEMORY_KIB}, t={MAX_PASSES}, p={MAX_LANES})",
                    params.m_cost(),
                    params.t_cost(),
                    params.p_cost()
                ),
            });
        }
        Ok(Self(phc.to_owned()))
    }

    /// A hash of a random password nobody knows, made once: what a login as an unknown user
    /// is checked against.
    pub fn dummy() -> &'static PasswordHash {
        static DUMMY: OnceLock<PasswordHash> = OnceLock::new();
        DUMMY.get_or_init(|| {
            let mut secret = [0u8; 32];
            OsRng.fill_bytes(&mut secret);
            PasswordHash::new(&hex(&secret))
        })
    }

    /// Whether `password` is the one hashed (slow: run it on a blocking thread).
    pub fn verify(&self, password: &str) -> bool {
        let Ok(parsed) = argon2::PasswordHash::new(&self.0) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    }

    /// The PHC string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but long and useless in a log line.
        f.write_str("PasswordHash(argon2id)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Most users remembered by [`VerifiedCache`].
const CACHE_CAPACITY: usize = 1024;
/// How long a verified password is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);

/// Recently verified passwords, per user, as digests keyed with a secret drawn at start: the
/// plain password is never kept, and a digest is useless outside this process. An entry holds
/// only while the user's stored hash is the one it was verified against, so a changed password
/// or a deleted user is never let in by it. Only successes are remembered: every failure pays
/// the full argon2 cost.
#[derive(Debug)]
pub struct VerifiedCache {
    key: [u8; 32],
    entries: Mutex<HashMap<String, CachedLogin>>,
}

#[derive(Debug)]
struct CachedLogin {
    hash: String,
    digest: [u8; 64],
    at: Instant,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self {
            key,
            entries: Mutex::default(),
        }
    }
}

impl VerifiedCache {
    fn digest(&self, user: &str, password: &str) -> [u8; 64] {
        let mut d = Blake2b512::new();
        d.update(self.key);
        d.update((user.len() as u64).to_le_bytes());
        d.update(user.as_bytes());
        d.update(password.as_bytes());
        d.finalize().into()
    }

    /// Whether `password` was verified for `user` against `hash` within the last minutes.
    pub fn contains(&self, user: &str, hash: &PasswordHash, password: &str) -> bool {
        let digest = self.digest(user, password);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(user).is_some_and(|c| {
            c.hash == hash.0 && c.at.elapsed() < CACHE_TTL && constant_time_eq(&c.digest, &digest)
        })
    }

    /// Remembers a successful verification; the oldest entry goes when the cache is full.
    pub fn insert(&self, user: &str, hash: &PasswordHash, password: &str) {
        let login = CachedLogin {
            hash: hash.0.clone(),
            digest: self.digest(user, password),
            at: Instant::now(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY && !entries.contains_key(user) {
            entries.retain(|_, c| c.at.elapsed() < CACHE_TTL);
            if entries.len() >= CACHE_CAPACITY {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, c)| c.at)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(user.to_owned(), login);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_whose_cost_would_let_each_login_take_gibibytes_is_refused() {
        let ours = PasswordHash::new("pw");
        let huge = ours.as_str().replacen("m=19456", "m=4194304", 1);
        assert_ne!(huge, ours.as_str());
        let refused = PasswordHash::parse(&huge).unwrap_err();
        assert!(
            refused.why.contains("above the broker's limit"),
            "{}",
            refused.why
        );
        let slow = ours.as_str().replacen("t=2", "t=1000", 1);
        assert!(PasswordHash::parse(&slow).is_err());
    }

    #[test]
    fn a_hash_verifies_its_password_only_and_never_holds_it() {
        let hash = PasswordHash::new("s3cret");
        assert!(hash.as_str().starts_with("$argon2id$"));
        assert!(!hash.as_str().contains("s3cret"));
        assert!(hash.verify("s3cret"));
        assert!(!hash.verify("s3cret "));
        assert!(!PasswordHash::dummy().verify(""));
        assert_eq!(PasswordHash::parse(hash.as_str()).unwrap(), hash);
    }

    #[test]
    fn only_argon2id_phc_strings_parse() {
        assert!(PasswordHash::parse("guest").is_err());
        assert!(PasswordHash::parse("").is_err());
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$YWJjZGVmZ2hpamtsbW5vcA";
        assert!(PasswordHash::parse(argon2i)
            .unwrap_err()
            .to_string()
            .contains("not argon2id"));
    }

    #[test]
    fn the_cache_holds_only_for_the_same_user_hash_and_password() {
        let cache = VerifiedCache::default();
        let hash = PasswordHash::new("pw");
        let other = PasswordHash::new("pw");
        cache.insert("app", &hash, "pw");
        assert!(cache.contains("app", &hash, "pw"));
        assert!(!cache.contains("app", &hash, "pw2"));
        assert!(!cache.contains("app", &other, "pw"));
        assert!(!cache.contains("ap", &hash, "pw"));
    }
}
