//! The file checkpoint store: one `<pipeline>.json` per pipeline. A commit writes a temp
//! file, fsyncs it, renames it over the old one and fsyncs the directory, so a crash leaves
//! either the old checkpoint or the new one, never a torn file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Checkpoint, CheckpointError};

#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, pipeline: &str) -> PathBuf {
        self.dir.join(format!("{pipeline}.json"))
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
        move |source| CheckpointError::Io { path: path.display().to_string(), source }
    }

    pub fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path(pipeline);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path)(e)),
        };
        super::parse(&bytes, &path.display().to_string()).map(Some)
    }

    pub fn commit(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let path = self.path(&cp.pipeline);
        let io = |e| Self::io(&path)(e);
        fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = self.dir.join(format!(".{}.json.tmp", cp.pipeline));
        let mut body = serde_json::to_vec_pretty(cp).expect("a checkpoint serialises");
        body.push(b'\n');
        {
            let mut f = fs::File::create(&tmp).map_err(io)?;
            f.write_all(&body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &path).map_err(io)?;
        // The rename is durable only once the directory entry is.
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    /// Deletes the checkpoint; returns whether there was one.
    pub fn reset(&self, pipeline: &str) -> Result<bool, CheckpointError> {
        let path = self.path(pipeline);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{load_for, Store};

    #[test]
    fn commits_loads_and_resets() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("nested"));
        assert!(store.load("p").unwrap().is_none());
        let cp = Checkpoint::new("p", "postgresql://db:5432/x/sales_orders", serde_json::json!({"v": 1}));
        store.commit(&cp).unwrap();
        assert_eq!(store.load("p").unwrap().unwrap(), cp);
        assert!(store.reset("p").unwrap());
        assert!(!store.reset("p").unwrap());
    }

    #[tokio::test]
    async fn refuses_a_checkpoint_of_another_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileStore::new(dir.path());
        file.commit(&Checkpoint::new("p", "postgresql://a:5432/x/t", serde_json::json!({}))).unwrap();
        let store = Store::File(file);
        let e = load_for(&store, "p", "postgresql://b:5432/x/t").await.unwrap_err().to_string();
        assert!(e.contains("another source") && e.contains("checkpoint reset"), "{e}");
        assert!(load_for(&store, "p", "postgresql://a:5432/x/t").await.unwrap().is_some());
    }

    #[test]
    fn a_torn_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        fs::write(store.path("p"), b"{\"version\":").unwrap();
        let e = store.load("p").unwrap_err().to_string();
        assert!(e.contains("not a valid checkpoint"), "{e}");
    }
}
