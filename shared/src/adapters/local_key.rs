//! The local master key: 256 random bits in a file created with mode 0600. It plays KMS's part
//! for the embedded backend: data keys are wrapped with AES-256-GCM under the master key with
//! the encryption context as associated data, so unwrapping under another context fails just
//! as KMS `Decrypt` does.

use std::path::Path;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::secret_file;
use crate::crypto::KeyProvider;
use crate::crypto::{CryptoError, DataKey, EncryptionContext, PlainKey, aead_open, aead_seal};

/// The master key's file in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

pub struct LocalKeyProvider {
    master: PlainKey,
    key_id: String,
}

impl LocalKeyProvider {
    /// Loads `dir/master.key`, creating it (32 random bytes, mode 0600, `dir` made 0700) if
    /// missing. Processes starting together agree on one key ([`secret_file::read_or_create`]).
    ///
    /// # Errors
    /// I/O errors; `PermissionDenied` for a key file group or others may read; `InvalidData`
    /// for one that does not hold 32 bytes.
    pub fn open_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(MASTER_KEY_FILE);
        let bytes = secret_file::read_or_create(dir, MASTER_KEY_FILE, || {
            zeroize::Zeroizing::new(PlainKey::generate().expose().to_vec())
        })?;
        let master = PlainKey::try_from_slice(&bytes).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} must hold 32 bytes", path.display()))
        })?;
        let digest = Sha256::digest(master.expose());
        let key_id = format!("local:{}", hex::encode(&digest[..8]));
        Ok(Self { master, key_id })
    }

    /// The master key's public fingerprint, stored beside each record.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<DataKey, CryptoError> {
        let plaintext = PlainKey::generate();
        let wrapped = aead_seal(&self.master, plaintext.expose(), &ctx.aad());
        Ok(DataKey { plaintext, wrapped, key_id: self.key_id.clone() })
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<PlainKey, CryptoError> {
        if key_id != self.key_id {
            return Err(CryptoError::Decrypt);
        }
        let bytes = aead_open(&self.master, wrapped, &ctx.aad())?;
        PlainKey::try_from_slice(&bytes).ok_or(CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn master_key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalKeyProvider::open_or_create(dir.path()).unwrap();
        let b = LocalKeyProvider::open_or_create(dir.path()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_key_id_is_the_start_of_the_keys_sha256_in_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = LocalKeyProvider::open_or_create(dir.path()).unwrap();
        // sha256 of 32 bytes of 7, its first 8 bytes in lowercase hex: stored beside each record.
        assert_eq!(key.key_id(), "local:4bb06f8e4e3a7715");
    }

    #[test]
    fn a_master_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        LocalKeyProvider::open_or_create(dir.path()).unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(LocalKeyProvider::open_or_create(dir.path()).is_err());
    }
}
