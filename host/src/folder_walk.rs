//! Walking model folders that may hold symbolic links. A1111 users link whole folders (or
//! single files) in from other disks, so links are followed; but each real folder is entered
//! once, so a link to a parent folder (a loop) cannot make a scan endless, exponential or
//! list the same files again and again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The real folders one walk has entered.
#[derive(Debug, Default)]
pub struct Visited(HashSet<PathBuf>);

impl Visited {
    /// Whether `dir` is a folder this walk has not entered yet (it is recorded as entered).
    pub fn first_visit(&mut self, dir: &Path) -> bool {
        std::fs::canonicalize(dir).is_ok_and(|real| self.0.insert(real))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_real_folder_is_entered_once_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(models.join("sub")).unwrap();
        std::os::unix::fs::symlink(&models, models.join("sub/loop")).unwrap();
        let mut visited = Visited::default();
        assert!(visited.first_visit(&models));
        assert!(visited.first_visit(&models.join("sub")));
        assert!(!visited.first_visit(&models.join("sub/loop")));
        assert!(!visited.first_visit(&models.join("sub/loop/sub")));
        assert!(!visited.first_visit(&models.join("missing")));
    }
}
