//! Write-once secret files in the embedded backend's data directory (`master.key`, and
//! `jwt.secret` when `latchkey serve` generates one): the directory is this user's only (0700),
//! each file is created whole with mode 0600 and never replaced, so processes starting together
//! agree on one value.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

/// Creates `dir` (and its parents) if missing and sets its mode to 0700, whatever the umask and
/// whether it existed already.
///
/// # Errors
/// The directory cannot be created or its mode set.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The bytes of `dir/name`, created with `generate()`'s if the file does not exist yet; `dir` is
/// made private first ([`ensure_private_dir`]).
///
/// A new value is written to a temporary file in `dir` (mode 0600), synced, then moved into
/// place only if nothing is there (`persist_noclobber`): a concurrent writer that loses the race
/// discards its value and returns the winner's, and no reader ever sees a partial file.
///
/// # Errors
/// I/O errors of the directory or file; `PermissionDenied` when the existing file may be read or
/// written by group or others (its path in the message, never its content).
pub fn read_or_create(
    dir: &Path,
    name: &str,
    generate: impl FnOnce() -> Zeroizing<Vec<u8>>,
) -> io::Result<Zeroizing<Vec<u8>>> {
    ensure_private_dir(dir)?;
    let path = dir.join(name);
    match read_private(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        existing => return existing,
    }
    let value = generate();
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    file.write_all(&value)?;
    file.as_file().sync_all()?;
    match file.persist_noclobber(&path) {
        Ok(_) => Ok(value),
        // Another process created it meanwhile; the temporary file is removed on drop.
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => read_private(&path),
        Err(e) => Err(e.error),
    }
}

/// The content of `path`, refused when group or others have any access to it. The mode is read
/// from the open file, so it is the mode of what is read.
pub fn read_private(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut file = std::fs::File::open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} must not be readable by group or others (chmod 600 it)", path.display()),
        ));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn value(v: &[u8]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(v.to_vec())
    }

    #[test]
    fn a_missing_file_is_created_once_with_mode_0600_in_a_0700_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("nested").join("data");
        let first = read_or_create(&dir, "secret", || value(b"first")).unwrap();
        assert_eq!(&first[..], b"first");
        assert_eq!(mode(&dir.join("secret")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let again = read_or_create(&dir, "secret", || panic!("an existing file is never regenerated")).unwrap();
        assert_eq!(&again[..], b"first");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["secret"], "no temporary file is left behind");
    }

    #[test]
    fn an_existing_directory_open_to_others_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        read_or_create(dir.path(), "secret", || value(b"x")).unwrap();
        assert_eq!(mode(dir.path()), 0o700);
    }

    #[test]
    fn concurrent_writers_all_get_the_winners_value() {
        let dir = tempfile::tempdir().unwrap();
        let writers = 8;
        let start = Arc::new(Barrier::new(writers));
        let handles: Vec<_> = (0..writers)
            .map(|i| {
                let (dir, start) = (dir.path().to_owned(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    read_or_create(&dir, "secret", || value(format!("writer {i}").as_bytes())).unwrap()
                })
            })
            .collect();
        let seen: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap().to_vec()).collect();
        let stored = std::fs::read(dir.path().join("secret")).unwrap();
        assert!(seen.iter().all(|v| *v == stored), "every writer returns the stored value: {seen:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the losers' temporary files are gone");
    }

    #[test]
    fn a_file_readable_by_others_is_refused_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        read_or_create(dir.path(), "secret", || value(b"canary-value")).unwrap();
        std::fs::set_permissions(dir.path().join("secret"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_or_create(dir.path(), "secret", || panic!("not regenerated")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("secret") && !err.to_string().contains("canary"), "{err}");
    }
}
