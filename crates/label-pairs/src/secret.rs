//! Unguessable strings: the access token and the per-showing nonces. A 32-byte key from the
//! operating system's random source (`/dev/urandom`) keys blake3 over a counter, so each
//! value is 128 bits no one without the key can predict.

use std::io::Read;

/// A keyed source of unguessable hex strings.
pub struct Secret {
    key: [u8; 32],
    counter: u64,
}

impl Secret {
    /// A source with a fresh random key.
    pub fn new() -> anyhow::Result<Secret> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| rlhf_core::CoreError::io("reading", "/dev/urandom", e))?;
        Ok(Secret { key, counter: 0 })
    }

    /// The next value: 32 hex characters (128 bits).
    pub fn next_hex(&mut self) -> String {
        self.counter += 1;
        let h = blake3::keyed_hash(&self.key, &self.counter.to_le_bytes());
        h.to_hex()[..32].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_differ_between_calls_and_sources() {
        let (mut a, mut b) = (Secret::new().unwrap(), Secret::new().unwrap());
        let (x, y) = (a.next_hex(), a.next_hex());
        assert_eq!(x.len(), 32);
        assert_ne!(x, y);
        assert_ne!(x, b.next_hex());
    }
}
