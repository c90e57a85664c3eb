//! `SecretMap`: a scope's decrypted key → value map, and its binary encoding.
//!
//! The encoding is a sequence of (u32 key length, key, u32 value length,
//! value), little-endian, keys sorted. It is written into a zeroizing buffer
//! and encrypted as one age payload (the scope's `encrypted_data`).

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::error::{Result, VaultError};

/// A decrypted key → value map. Values are wiped when dropped; no `Debug`.
#[derive(Default)]
pub struct SecretMap {
    entries: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl SecretMap {
    /// Decodes the plaintext of a scope's `encrypted_data`.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || VaultError::Crypto("stored secret map is malformed".into());
        let mut entries = BTreeMap::new();
        let mut rest = bytes;
        let take = |rest: &mut &[u8]| -> Result<Vec<u8>> {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(corrupt());
            }
            let (item, tail) = tail.split_at(len);
            *rest = tail;
            Ok(item.to_vec())
        };
        while !rest.is_empty() {
            let key = String::from_utf8(take(&mut rest)?).map_err(|_| corrupt())?;
            let value = Zeroizing::new(take(&mut rest)?);
            entries.insert(key, value);
        }
        Ok(Self { entries })
    }

    /// Encodes the map into a zeroizing buffer, ready to encrypt.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let size: usize = self
            .entries
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let mut out = Zeroizing::new(Vec::with_capacity(size));
        for (key, value) in &self.entries {
            // Keys and values are bounded by the gRPC message limit (4 MiB),
            // far below u32::MAX.
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: String, value: Zeroizing<Vec<u8>>) {
        self.entries.insert(key, value);
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut map = SecretMap::default();
        map.insert("B".into(), Zeroizing::new(b"two".to_vec()));
        map.insert("A".into(), Zeroizing::new(vec![0, 1, 255]));
        map.insert("EMPTY".into(), Zeroizing::new(vec![]));
        let decoded = SecretMap::decode(&map.encode()).unwrap();
        let got: Vec<_> = decoded
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("A".into(), vec![0, 1, 255]),
                ("B".into(), b"two".to_vec()),
                ("EMPTY".into(), vec![]),
            ]
        );
    }

    #[test]
    fn truncated_input_is_rejected() {
        let mut map = SecretMap::default();
        map.insert("KEY".into(), Zeroizing::new(b"value".to_vec()));
        let bytes = map.encode();
        for cut in 1..bytes.len() {
            assert!(SecretMap::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
