//! The orders a pipeline has published and not deleted, kept on disk beside the
//! checkpoints so that a reconciliation can tell which of them are gone. An API that cannot
//! show deletions (seed 003) leaves no other way to know what to tombstone.
//!
//! A generation is one file, `<dir>/<pipeline>.published.<gen>`, one id per line. Ids are
//! appended (and synced) *before* the batch that holds them is handed to the pipeline, so
//! the file is always a superset of what the committed checkpoint has published. The
//! checkpoint names its generation: a reconciliation that removes ids writes the next
//! generation whole and names it in the position of the batch that carries the tombstones.
//! Until that position is committed the older generation is the one a restart loads, so a
//! crash never loses a tombstone. A restart folds the ids of any newer generation into the
//! one it loads (their batches may have reached the topic without being committed) and
//! deletes the others.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("the published set {path}: {source}")]
pub struct SetError {
    path: String,
    source: std::io::Error,
}

pub struct PublishedSet {
    dir: PathBuf,
    pipeline: String,
    generation: u64,
    ids: HashSet<Box<str>>,
}

impl PublishedSet {
    /// An empty set at generation 0, not yet read from disk.
    pub fn new(dir: &Path, pipeline: &str) -> Self {
        Self { dir: dir.to_path_buf(), pipeline: pipeline.to_string(), generation: 0, ids: HashSet::new() }
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{}.published.{generation}", self.pipeline))
    }

    fn error(&self, path: &Path) -> impl FnOnce(std::io::Error) -> SetError {
        let path = path.display().to_string();
        move |source| SetError { path, source }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(|id| &**id)
    }

    /// Loads the generation a committed position names (a missing file is an empty set:
    /// the first reconciliation fills it from the listing), folds newer generations into
    /// it, and deletes every other.
    pub fn load(&mut self, generation: u64) -> Result<(), SetError> {
        self.generation = generation;
        self.ids = self.read(generation)?.into_iter().collect();
        let prefix = format!("{}.published.", self.pipeline);
        let mut others: Vec<u64> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_prefix(&prefix).and_then(|g| g.parse::<u64>().ok()))
            .filter(|g| *g != generation)
            .collect();
        others.sort_unstable();
        for other in others {
            if other > generation {
                let ids = self.read(other)?;
                self.extend(ids.iter().map(|id| &**id))?;
            }
            // Left behind by a crash; harmless if it stays.
            let _ = fs::remove_file(self.path(other));
        }
        Ok(())
    }

    fn read(&self, generation: u64) -> Result<Vec<Box<str>>, SetError> {
        let path = self.path(generation);
        match fs::File::open(&path) {
            Ok(f) => BufReader::new(f).lines().filter(|l| !l.as_ref().is_ok_and(|l| l.is_empty())).map(|l| l.map(Box::from).map_err(self.error(&path))).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.error(&path)(e)),
        }
    }

    /// Adds ids, appending the new ones to the current generation's file durably.
    pub fn extend<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<(), SetError> {
        let mut lines = String::new();
        for id in ids {
            if !self.ids.contains(id) {
                self.ids.insert(id.into());
                lines.push_str(id);
                lines.push('\n');
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.path(self.generation);
        fs::create_dir_all(&self.dir).map_err(self.error(&path))?;
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&path).map_err(self.error(&path))?;
        f.write_all(lines.as_bytes()).and_then(|_| f.sync_data()).map_err(self.error(&path))
    }

    /// Makes `ids` the set, written whole as the next generation; returns its number,
    /// which the position of the batch that depends on it must carry.
    pub fn replace(&mut self, ids: HashSet<Box<str>>) -> Result<u64, SetError> {
        let generation = self.generation + 1;
        let path = self.path(generation);
        let tmp = self.dir.join(format!(".{}.published.tmp", self.pipeline));
        let mut body = String::with_capacity(ids.len() * 33);
        for id in &ids {
            body.push_str(id);
            body.push('\n');
        }
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let mut f = fs::File::create(&tmp)?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(self.error(&path))?;
        self.generation = generation;
        self.ids = ids;
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_survive_a_restart_and_the_unloaded_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = PublishedSet::new(dir.path(), "p");
        set.load(0).unwrap();
        set.extend(["a", "b"]).unwrap();
        set.extend(["b", "c"]).unwrap();
        let next = set.replace(["a".into(), "c".into()].into_iter().collect()).unwrap();
        set.extend(["d"]).unwrap();

        // A restart whose checkpoint never saw the next generation: the old one whole, and
        // what was published after it ("d") too.
        let mut old = PublishedSet::new(dir.path(), "p");
        old.load(0).unwrap();
        assert_eq!(old.ids().collect::<HashSet<_>>(), ["a", "b", "c", "d"].into_iter().collect());
        assert!(!dir.path().join(format!("p.published.{next}")).exists(), "the generation not loaded is deleted");

        let mut set = PublishedSet::new(dir.path(), "p");
        set.load(0).unwrap();
        set.replace(["a".into()].into_iter().collect()).unwrap();
        let mut new = PublishedSet::new(dir.path(), "p");
        new.load(1).unwrap();
        assert_eq!(new.ids().collect::<Vec<_>>(), ["a"]);
        let mut again = PublishedSet::new(dir.path(), "p");
        again.load(1).unwrap();
        assert_eq!(again.ids().collect::<Vec<_>>(), ["a"], "a second restart reads the same");
        assert!(!dir.path().join("p.published.0").exists());
    }
}
