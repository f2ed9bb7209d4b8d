//! A scratch directory removed when its guard drops.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use super::LabError;

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
}

impl Workdir {
    pub fn new(tag: &str) -> Result<Workdir, LabError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("astg-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|source| LabError::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
        Ok(Workdir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a file (creating parent directories) and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf, LabError> {
        let path = self.path.join(name);
        let io = |source| LabError::Io {
            what: format!("writing {}", path.display()),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        fs::write(&path, contents).map_err(io)?;
        Ok(path)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("ASTROGATE_KEEP_LAB").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
