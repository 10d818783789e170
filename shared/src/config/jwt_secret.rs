//! The HS256 secret of bearer tokens: `LATCHKEY_JWT_SECRET`, else the one `latchkey serve`
//! generated into the data directory, so that tokens survive restarts and `latchkey token`
//! signs what the server verifies.

use std::io::ErrorKind;
use std::path::Path;

use rand::RngCore;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::{ConfigError, Settings};
use crate::adapters::secret_file;

/// The file of the generated HS256 secret when `LATCHKEY_JWT_SECRET` is unset: 64 hex digits
/// (32 random bytes), mode 0600.
pub const JWT_SECRET_FILE: &str = "jwt.secret";
/// The organization of the token `latchkey serve` prints when it generated the secret.
pub const DEV_ORG: &str = "local";

impl Settings {
    /// The HS256 secret without creating one (what `latchkey token` signs with, which must be
    /// what a running `latchkey serve` verifies with): `LATCHKEY_JWT_SECRET`, else the one in the
    /// data directory.
    ///
    /// # Errors
    /// [`ConfigError::Unset`] naming where it looked when there is none; [`ConfigError::Invalid`]
    /// when the file is open to group or others; [`ConfigError::DataDir`] when it cannot be read.
    pub fn jwt_secret_existing(&self) -> Result<SecretString, ConfigError> {
        if let Some(s) = &self.jwt_secret {
            return Ok(s.clone());
        }
        let path = self.data_dir.join(JWT_SECRET_FILE);
        if !path.exists() {
            let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
            return Err(ConfigError::Unset {
                name: "LATCHKEY_JWT_SECRET",
                why: format!(
                    "{} does not exist either: run this where `latchkey serve` runs, or set \
                     LATCHKEY_DATA_DIR to its data directory (or LATCHKEY_JWT_SECRET to its secret)",
                    shown.display()
                ),
            });
        }
        secret(&path, secret_file::read_private(&path))
    }

    /// The HS256 secret: `LATCHKEY_JWT_SECRET`, else the one stored in the data directory,
    /// generated on first use ([`JWT_SECRET_FILE`]; concurrent starts agree on one). `true` when
    /// it came from the data directory.
    ///
    /// # Errors
    /// As [`Settings::jwt_secret_existing`], and when the data directory cannot be created.
    pub fn jwt_secret_or_generate(&self) -> Result<(SecretString, bool), ConfigError> {
        if let Some(s) = &self.jwt_secret {
            return Ok((s.clone(), false));
        }
        let stored = secret_file::read_or_create(&self.data_dir, JWT_SECRET_FILE, || {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rand::rng().fill_bytes(&mut bytes[..]);
            Zeroizing::new(hex::encode(&bytes[..]).into_bytes())
        });
        Ok((secret(&self.data_dir.join(JWT_SECRET_FILE), stored)?, true))
    }
}

/// The secret in a file's bytes, surrounding whitespace dropped.
fn secret(path: &Path, bytes: std::io::Result<Zeroizing<Vec<u8>>>) -> Result<SecretString, ConfigError> {
    let bytes = bytes.map_err(|source| match source.kind() {
        ErrorKind::PermissionDenied => ConfigError::Invalid { name: "LATCHKEY_JWT_SECRET", why: source.to_string() },
        _ => ConfigError::DataDir { path: path.to_owned(), source },
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ConfigError::Invalid {
        name: "LATCHKEY_JWT_SECRET",
        why: format!("{} is not text", path.display()),
    })?;
    Ok(SecretString::from(text.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::BackendKind;

    fn settings(dir: &Path) -> Settings {
        let dir = dir.to_string_lossy().into_owned();
        Settings::from_vars(BackendKind::Embedded, |name| (name == "LATCHKEY_DATA_DIR").then(|| dir.clone())).unwrap()
    }

    #[test]
    fn the_generated_secret_is_kept_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let s = settings(&data);
        assert!(s.jwt_secret_existing().is_err(), "nothing to read yet");
        assert!(!data.exists(), "reading creates nothing");
        let (generated, from_dir) = s.jwt_secret_or_generate().unwrap();
        assert!(from_dir);
        assert_eq!(generated.expose_secret().len(), 64);
        assert!(generated.expose_secret().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(s.jwt_secret_or_generate().unwrap().0.expose_secret(), generated.expose_secret());
        assert_eq!(s.jwt_secret_existing().unwrap().expose_secret(), generated.expose_secret());
        let mode = std::fs::metadata(data.join(JWT_SECRET_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_secret_file_open_to_others_is_refused_naming_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        s.jwt_secret_or_generate().unwrap();
        let path = dir.path().join(JWT_SECRET_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        for refused in [s.jwt_secret_existing().unwrap_err(), s.jwt_secret_or_generate().unwrap_err()] {
            let message = refused.to_string();
            assert!(message.contains("LATCHKEY_JWT_SECRET") && message.contains("group or others"), "{message}");
        }
    }
}
