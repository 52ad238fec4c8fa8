//! Re-checks at every start that the daemon's private files are private: the TCP token (a
//! credential: a copy readable by others may already have leaked, so it is refused, never
//! silently used or quietly tightened) and the socket's folder (whoever can write there could
//! swap the socket and talk to clients in the daemon's name).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Sticky bit: in such a folder (`/tmp`) only a file's owner may remove or rename it.
const STICKY: u32 = 0o1000;

/// Why a private file cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// Another user owns it.
    #[error("{path} belongs to uid {owner}, not to this user (uid {me}); remove it, or choose another path")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    /// The token file can be read or written by other users.
    #[error("token file {path} has mode {mode:o}: other users can read it, so the token may have leaked; delete it (the daemon makes a new one) or `chmod 600` it if nobody else could have read it")]
    OpenToken { path: PathBuf, mode: u32 },
    /// The token path is not a plain file.
    #[error("token file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    /// Other users could replace the socket in its folder.
    #[error("socket folder {path} has mode {mode:o}: other users could replace the socket; `chmod 700` it or pass --socket in a private folder")]
    OpenFolder { path: PathBuf, mode: u32 },
    /// The socket did not end up private.
    #[error("socket {path} has mode {mode:o} after binding (expected 600)")]
    OpenSocket { path: PathBuf, mode: u32 },
    /// The file could not be inspected.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn metadata(path: &Path) -> Result<std::fs::Metadata, PrivacyError> {
    std::fs::metadata(path).map_err(|source| PrivacyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn owned_by_me(path: &Path, meta: &std::fs::Metadata) -> Result<(), PrivacyError> {
    let me = my_uid();
    if meta.uid() != me {
        return Err(PrivacyError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Checks an existing token file: a regular file of this user with no group or other bits.
pub fn check_token_file(path: &Path) -> Result<(), PrivacyError> {
    let meta = metadata(path)?;
    if !meta.is_file() {
        return Err(PrivacyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    owned_by_me(path, &meta)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivacyError::OpenToken {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks the socket's folder: this user's (or root's, as `/tmp` is), and not writable by
/// others unless sticky. Group or other read and search bits are harmless: the socket's own
/// 0600 mode is what guards connecting to it.
pub fn check_socket_folder(path: &Path) -> Result<(), PrivacyError> {
    let meta = metadata(path)?;
    if meta.uid() != 0 {
        owned_by_me(path, &meta)?;
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Err(PrivacyError::OpenFolder {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks the bound socket: this user's, mode 0600.
pub fn check_socket(path: &Path) -> Result<(), PrivacyError> {
    let meta = metadata(path)?;
    owned_by_me(path, &meta)?;
    let mode = meta.mode() & 0o777;
    if mode != 0o600 {
        return Err(PrivacyError::OpenSocket {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn chown(path: &Path, uid: u32) {
        std::os::unix::fs::chown(path, Some(uid), None).unwrap();
    }

    #[test]
    fn a_token_others_can_read_or_another_user_owns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "abc").unwrap();
        chmod(&token, 0o600);
        check_token_file(&token).unwrap();
        for open in [0o644, 0o640, 0o604, 0o660] {
            chmod(&token, open);
            let err = check_token_file(&token).unwrap_err();
            assert!(matches!(err, PrivacyError::OpenToken { .. }), "{err}");
            assert!(err.to_string().contains("may have leaked"), "{err}");
        }
        chmod(&token, 0o600);
        // Only root can give a file away; as anyone else the check above is what runs.
        if my_uid() == 0 {
            chown(&token, 4242);
            let err = check_token_file(&token).unwrap_err();
            assert!(
                matches!(err, PrivacyError::Owner { owner: 4242, .. }),
                "{err}"
            );
        }
        let err = check_token_file(dir.path()).unwrap_err();
        assert!(matches!(err, PrivacyError::NotAFile { .. }), "{err}");
    }

    #[test]
    fn a_socket_folder_others_can_write_to_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("run");
        std::fs::create_dir(&folder).unwrap();
        for fine in [0o700, 0o755, 0o1777] {
            chmod(&folder, fine);
            check_socket_folder(&folder).unwrap();
        }
        for open in [0o777, 0o770, 0o722] {
            chmod(&folder, open);
            let err = check_socket_folder(&folder).unwrap_err();
            assert!(matches!(err, PrivacyError::OpenFolder { .. }), "{err}");
        }
        chmod(&folder, 0o700);
        if my_uid() == 0 {
            chown(&folder, 4242);
            let err = check_socket_folder(&folder).unwrap_err();
            assert!(matches!(err, PrivacyError::Owner { .. }), "{err}");
        }
    }
}
