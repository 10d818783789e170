//! The embedded backend's checks: the data directory (present, mode 0700), the master key, the
//! JWT secret (unless `LATCHKEY_JWT_SECRET` is set) and the database file: present when
//! needed, private (0600), the right size.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Check, Verdict, check};

/// The file names of the embedded backend under its data directory.
const DATABASE: &str = "latchkey.db";
const MASTER_KEY: &str = latchkey::adapters::local_key::MASTER_KEY_FILE;
const JWT_SECRET: &str = latchkey::config::JWT_SECRET_FILE;

/// The embedded backend's checks under `dir`.
pub(super) fn checks(dir: &Path, jwt_secret_set: bool) -> Vec<Check> {
    let mut checks = Vec::new();
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            checks.push(check(
                "data directory",
                Verdict::Warn,
                format!("{shown} does not exist yet: `latchkey serve` creates it (mode 0700)"),
            ));
            checks.push(jwt_secret_check(None, jwt_secret_set));
            return checks;
        }
        Err(e) => {
            checks.push(check("data directory", Verdict::Fail, format!("{shown}: {e}")));
            return checks;
        }
        Ok(m) if !m.is_dir() => {
            checks.push(check("data directory", Verdict::Fail, format!("{shown} is not a directory")));
            return checks;
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            checks.push(if mode & 0o077 != 0 {
                check(
                    "data directory",
                    Verdict::Fail,
                    format!("{shown} has mode {mode:04o}: other users can look inside; run `chmod 700 {shown}`"),
                )
            } else {
                check("data directory", Verdict::Ok, format!("{shown} (mode {mode:04o})"))
            });
        }
    }
    let database = dir.join(DATABASE);
    checks.push(secret_file_check("master key", &dir.join(MASTER_KEY), Some(32), || {
        if database.exists() {
            (
                Verdict::Fail,
                format!("{DATABASE} exists without {MASTER_KEY}: its secrets cannot be decrypted; restore the key"),
            )
        } else {
            (Verdict::Warn, "not created yet: `latchkey serve` creates it (32 bytes, mode 0600)".to_owned())
        }
    }));
    checks.push(jwt_secret_check(Some(dir), jwt_secret_set));
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("{DATABASE}{suffix}"));
        let name = format!("database file {DATABASE}{suffix}");
        match std::fs::metadata(&path) {
            Err(_) if suffix.is_empty() => {
                checks.push(check(name, Verdict::Warn, "not created yet: `latchkey serve` creates it"));
            }
            Err(_) => {}
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                checks.push(if mode & 0o077 != 0 {
                    check(
                        name,
                        Verdict::Warn,
                        format!("mode {mode:04o}: readable by others until `latchkey serve` sets it to 0600"),
                    )
                } else {
                    check(name, Verdict::Ok, format!("mode {mode:04o}"))
                });
            }
        }
    }
    checks
}

fn jwt_secret_check(dir: Option<&Path>, jwt_secret_set: bool) -> Check {
    if jwt_secret_set {
        return check("jwt secret", Verdict::Ok, "LATCHKEY_JWT_SECRET is set");
    }
    let missing = || {
        (
            Verdict::Warn,
            "LATCHKEY_JWT_SECRET is unset and there is no secret file: `latchkey serve` generates one and \
             prints a token; set LATCHKEY_JWT_SECRET to share one with other processes"
                .to_owned(),
        )
    };
    match dir {
        None => {
            let (verdict, why) = missing();
            check("jwt secret", verdict, why)
        }
        Some(dir) => secret_file_check("jwt secret", &dir.join(JWT_SECRET), None, missing),
    }
}

/// A secret file: present (else `missing` decides), private (0600), and of `size` bytes if
/// given (else at least 32, as HS256 secrets must be).
fn secret_file_check(name: &str, path: &Path, size: Option<u64>, missing: impl FnOnce() -> (Verdict, String)) -> Check {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (verdict, why) = missing();
            check(name, verdict, format!("{shown}: {why}"))
        }
        Err(e) => check(name, Verdict::Fail, format!("{shown}: {e}")),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                check(
                    name,
                    Verdict::Fail,
                    format!("{shown} has mode {mode:04o}: Latchkey refuses it; run `chmod 600 {shown}`"),
                )
            } else if size.is_some_and(|s| s != m.len()) {
                check(name, Verdict::Fail, format!("{shown} holds {} bytes, not {}", m.len(), size.unwrap_or(0)))
            } else if size.is_none() && m.len() < 32 {
                check(name, Verdict::Fail, format!("{shown} holds {} bytes: HS256 needs at least 32", m.len()))
            } else {
                check(name, Verdict::Ok, format!("{shown} (mode {mode:04o})"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8], mode: u32) {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn verdict_of<'c>(checks: &'c [Check], name: &str) -> &'c Check {
        checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
    }

    #[test]
    fn a_missing_data_directory_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let found = checks(&dir.path().join("absent"), false);
        assert_eq!(verdict_of(&found, "data directory").verdict, Verdict::Warn);
        assert!(found.iter().all(|c| c.verdict != Verdict::Fail), "{found:?}");
    }

    #[test]
    fn private_files_of_the_right_size_pass_and_a_readable_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        write(&dir.path().join(MASTER_KEY), &[7; 32], 0o600);
        write(&dir.path().join(JWT_SECRET), &[b'a'; 64], 0o600);
        write(&dir.path().join(DATABASE), b"", 0o600);
        let found = checks(dir.path(), false);
        assert!(found.iter().all(|c| c.verdict == Verdict::Ok), "{found:?}");

        std::fs::set_permissions(dir.path().join(MASTER_KEY), std::fs::Permissions::from_mode(0o644)).unwrap();
        let key = verdict_of(&checks(dir.path(), false), "master key").clone();
        assert_eq!(key.verdict, Verdict::Fail);
        assert!(key.why.contains("chmod 600"), "{}", key.why);
    }

    #[test]
    fn a_database_without_its_key_fails_and_a_short_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        write(&dir.path().join(DATABASE), b"", 0o600);
        assert_eq!(verdict_of(&checks(dir.path(), true), "master key").verdict, Verdict::Fail);
        write(&dir.path().join(MASTER_KEY), &[7; 16], 0o600);
        let key = verdict_of(&checks(dir.path(), true), "master key").clone();
        assert_eq!(key.verdict, Verdict::Fail);
        assert!(key.why.contains("16 bytes"), "{}", key.why);
    }
}
