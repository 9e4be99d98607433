//! The events known at a cutoff, split by node into shares that each fit in memory.
//!
//! Every feature and every column of the batch view is computed per sku×node or per node, but
//! for the SKU totals, which are sums over the per-sku×node table. So the nightly job can run the
//! per-node parts of `features.sql` one share of the nodes at a time: each share's events are
//! held in memory, its sorts do not spill and its groups fit the caches, and the time per event
//! stays the same as the lake grows.
//!
//! Each run writes its shares into a directory of its own under `<lake>/scratch`, held under an
//! exclusive file lock, so jobs running at once on one lake (a nightly job and a training set,
//! two backfills) never touch each other's files; a run that was killed leaves its directory
//! behind, unlocked, and the next run removes it.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;

use crate::BatchError;

/// At most this many shares, whatever the lake's size: the per-share tables are small, and a
/// lake that needs more holds more than a share's budget per share instead.
pub(crate) const MAX_SHARES: usize = 256;

/// The events known at a cutoff: the table `timely` of `features.sql`, in shares of the nodes
/// (every event of a node is in the same share).
pub(crate) enum Known {
    /// Few enough to hold in memory: one share.
    Held { schema: SchemaRef, batches: Vec<RecordBatch> },
    /// Too many: one Arrow IPC file per share in this run's scratch directory, removed when
    /// dropped.
    Split { schema: SchemaRef, _scratch: ScratchDir, shares: Vec<Share> },
}

/// One share's file.
pub(crate) struct Share {
    path: PathBuf,
    rows: usize,
    bytes: usize,
}

impl Known {
    /// The shares to compute, in order: those with events (at least one, so that the tables the
    /// shares create exist even when no event is known).
    pub(crate) fn shares(&self) -> Vec<usize> {
        match self {
            Known::Held { .. } => vec![0],
            Known::Split { shares, .. } => {
                let with_events: Vec<usize> = (0..shares.len()).filter(|&share| shares[share].rows > 0).collect();
                if with_events.is_empty() {
                    vec![0]
                } else {
                    with_events
                }
            }
        }
    }

    /// Registers every share as the table `name` of `context`: held in memory, or streamed from
    /// the shares' files by every query.
    pub(crate) async fn register_all(&self, context: &SessionContext, name: &str) -> Result<(), BatchError> {
        match self {
            Known::Held { schema, batches } => crate::register_rows(context, name, schema.clone(), batches.clone()).await,
            Known::Split { schema, shares, .. } => {
                let files: Vec<Arc<dyn datafusion::physical_plan::streaming::PartitionStream>> = shares
                    .iter()
                    .map(|share| Arc::new(ShareFile { schema: schema.clone(), path: share.path.clone() }) as _)
                    .collect();
                context.deregister_table(name)?;
                context.register_table(name, Arc::new(StreamingTable::try_new(schema.clone(), files)?))?;
                Ok(())
            }
        }
    }

    /// Registers `share` as the table `timely` of `context`: held (in memory, or shared with a
    /// cluster's executors: [`crate::register_rows`]), unless its file is larger than
    /// `hold_limit` bytes (its nodes have more events than a share's budget), when every query
    /// streams it from the file instead.
    pub(crate) async fn register(&self, context: &SessionContext, share: usize, hold_limit: usize) -> Result<(), BatchError> {
        match self {
            Known::Held { schema, batches } => crate::register_rows(context, "timely", schema.clone(), batches.clone()).await,
            Known::Split { schema, shares, .. } => {
                let share = &shares[share];
                if share.bytes <= hold_limit {
                    let batches = ipc_batches(&share.path)?.collect::<Result<_, _>>()?;
                    crate::register_rows(context, "timely", schema.clone(), batches).await
                } else {
                    let file = Arc::new(ShareFile { schema: schema.clone(), path: share.path.clone() });
                    context.deregister_table("timely")?;
                    context.register_table("timely", Arc::new(StreamingTable::try_new(schema.clone(), vec![file])?))?;
                    Ok(())
                }
            }
        }
    }
}

/// A run's own directory `<scratch>/<name>`, held while `<scratch>/<name>.lock` is locked by
/// this process; removed with its lock file when dropped.
pub(crate) struct ScratchDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl ScratchDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a new directory under `scratch` for this run. Its lock file is locked under a
    /// hidden name first and then renamed, so another run never sees it unlocked.
    pub(crate) fn claim(scratch: &Path) -> Result<ScratchDir, BatchError> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(scratch).map_err(|error| scratch_error(scratch, error))?;
        let name = format!("run-{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed));
        let hidden = scratch.join(format!(".{name}.lock"));
        let lock = File::create(&hidden).map_err(|error| scratch_error(&hidden, error))?;
        lock.try_lock().map_err(|error| scratch_error(&hidden, error))?;
        let lock_path = scratch.join(format!("{name}.lock"));
        std::fs::rename(&hidden, &lock_path).map_err(|error| scratch_error(&lock_path, error))?;
        let path = scratch.join(&name);
        if path.exists() {
            // left by a killed run of a process that had this id
            std::fs::remove_dir_all(&path).map_err(|error| scratch_error(&path, error))?;
        }
        std::fs::create_dir(&path).map_err(|error| scratch_error(&path, error))?;
        Ok(ScratchDir { path, lock_path, _lock: lock })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // the directory first: a directory without its lock file is a finished run's
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
        // and the scratch space itself once no run uses it (fails, harmlessly, while one does)
        if let Some(scratch) = self.path.parent() {
            let _ = std::fs::remove_dir(scratch);
        }
    }
}

/// Removes what killed runs left under `scratch`: each directory and lock file whose lock no
/// process holds, and loose files of versions before the per-run directories. Runs in progress
/// keep theirs: a run's lock file exists, locked, before its directory does.
pub(crate) fn remove_abandoned(scratch: &Path) -> Result<(), BatchError> {
    let Ok(entries) = std::fs::read_dir(scratch) else { return Ok(()) };
    for entry in entries.flatten() {
        let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
        if name.starts_with('.') {
            // a lock file being created
            continue;
        }
        let run = name.strip_suffix(".lock").unwrap_or(&name);
        let lock = File::open(scratch.join(format!("{run}.lock"))).ok();
        if lock.as_ref().is_some_and(|lock| lock.try_lock().is_err()) {
            continue;
        }
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            // (another run's sweep was first)
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(scratch_error(&path, error)),
            _ => {}
        }
    }
    Ok(())
}

/// Writes events into one file per share, by their node.
pub(crate) struct Splitter {
    schema: SchemaRef,
    scratch: ScratchDir,
    node: usize,
    writers: Vec<(PathBuf, FileWriter<BufWriter<File>>, usize)>,
}

impl Splitter {
    /// Creates `shares` empty files in a new directory of this run under `scratch`.
    pub(crate) fn create(scratch: &Path, schema: SchemaRef, shares: usize) -> Result<Splitter, BatchError> {
        let scratch = ScratchDir::claim(scratch)?;
        let dir = &scratch.path;
        let node = schema.index_of("node").map_err(|error| scratch_error(dir, error))?;
        let writers = (0..shares)
            .map(|share| {
                let path = dir.join(format!("share-{share}.arrow"));
                let writer = ipc_writer(&path, &schema)?;
                Ok((path, writer, 0))
            })
            .collect::<Result<_, BatchError>>()?;
        Ok(Splitter { schema, scratch, node, writers })
    }

    /// Appends each event of `batch` to its node's share.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), BatchError> {
        let nodes = arrow_cast::cast(batch.column(self.node), &DataType::Utf8).map_err(|error| scratch_error(&self.scratch.path, error))?;
        let nodes = nodes.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
        let count = self.writers.len();
        let of_row: Vec<usize> = nodes.iter().map(|node| share_of(node.unwrap_or_default(), count)).collect();
        for (share, (path, writer, rows)) in self.writers.iter_mut().enumerate() {
            let mask: BooleanArray = of_row.iter().map(|&of| Some(of == share)).collect();
            let part = filter_record_batch(batch, &mask).map_err(|error| scratch_error(path, error))?;
            if part.num_rows() > 0 {
                writer.write(&part).map_err(|error| scratch_error(path, error))?;
                *rows += part.num_rows();
            }
        }
        Ok(())
    }

    /// Closes the files.
    pub(crate) fn finish(self) -> Result<Known, BatchError> {
        let mut shares = Vec::with_capacity(self.writers.len());
        for (path, mut writer, rows) in self.writers {
            writer.finish().map_err(|error| scratch_error(&path, error))?;
            let bytes = std::fs::metadata(&path).map_err(|error| scratch_error(&path, error))?.len() as usize;
            shares.push(Share { path, rows, bytes });
        }
        Ok(Known::Split { schema: self.schema, _scratch: self.scratch, shares })
    }
}

/// Tables of the nightly job kept in Arrow IPC files of a run's scratch directory instead of in
/// memory: the tables each share of the nodes creates, and the job's output rows, when the events
/// are in several shares (so that what is held stays one share's, however many shares).
pub(crate) struct Spill {
    dir: Arc<ScratchDir>,
    files: usize,
}

/// One spilled table: its schema, its file and how many rows it holds.
#[derive(Clone)]
pub(crate) struct SpillFile {
    pub schema: SchemaRef,
    pub path: PathBuf,
    pub rows: usize,
    /// The directory stays while a file of it is kept.
    _dir: Arc<ScratchDir>,
}

impl Spill {
    pub(crate) fn claim(scratch: &Path) -> Result<Spill, BatchError> {
        Ok(Spill { dir: Arc::new(ScratchDir::claim(scratch)?), files: 0 })
    }

    /// Writes `stream` into a new file named after `name`.
    pub(crate) async fn write(&mut self, name: &str, mut stream: SendableRecordBatchStream) -> Result<SpillFile, BatchError> {
        let path = self.dir.path.join(format!("{name}-{}.arrow", self.files));
        self.files += 1;
        let schema = stream.schema();
        let mut writer = ipc_writer(&path, &schema)?;
        let mut rows = 0;
        while let Some(batch) = futures::TryStreamExt::try_next(&mut stream).await? {
            rows += batch.num_rows();
            writer.write(&batch).map_err(|error| scratch_error(&path, error))?;
        }
        writer.finish().map_err(|error| scratch_error(&path, error))?;
        Ok(SpillFile { schema, path, rows, _dir: self.dir.clone() })
    }
}

impl SpillFile {
    /// Its batches, read one at a time.
    pub(crate) fn batches(&self) -> Result<impl Iterator<Item = Result<RecordBatch, BatchError>> + Send + 'static, BatchError> {
        ipc_batches(&self.path)
    }

    /// A partition of a table that streams it from its file to every query that scans it.
    pub(crate) fn partition(&self) -> Arc<dyn PartitionStream> {
        Arc::new(ShareFile { schema: self.schema.clone(), path: self.path.clone() })
    }
}

/// The share of a node: a fixed hash, so that a node's events all land in one share.
fn share_of(node: &str, shares: usize) -> usize {
    (crate::fixed_hash(node) % shares as u64) as usize
}

/// A new Arrow IPC file of `schema` at `path`.
fn ipc_writer(path: &Path, schema: &SchemaRef) -> Result<FileWriter<BufWriter<File>>, BatchError> {
    let file = File::create(path).map_err(|error| scratch_error(path, error))?;
    FileWriter::try_new(BufWriter::with_capacity(64 << 10, file), schema).map_err(|error| scratch_error(path, error))
}

/// The batches of the Arrow IPC file at `path`, read one at a time.
fn ipc_batches(path: &Path) -> Result<impl Iterator<Item = Result<RecordBatch, BatchError>> + Send + 'static, BatchError> {
    let path = path.to_path_buf();
    let file = File::open(&path).map_err(|error| scratch_error(&path, error))?;
    let reader = FileReader::try_new(std::io::BufReader::new(file), None).map_err(|error| scratch_error(&path, error))?;
    Ok(reader.map(move |batch| batch.map_err(|error| scratch_error(&path, error))))
}

fn scratch_error(path: &Path, error: impl std::fmt::Display) -> BatchError {
    BatchError::Scratch { path: path.display().to_string(), message: error.to_string() }
}

/// A share read from its file by every query that scans it, for shares too large to hold.
#[derive(Debug)]
struct ShareFile {
    schema: SchemaRef,
    path: PathBuf,
}

impl PartitionStream for ShareFile {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches: Box<dyn Iterator<Item = Result<RecordBatch, BatchError>> + Send> = match ipc_batches(&self.path) {
            Ok(batches) => Box::new(batches),
            Err(error) => Box::new(std::iter::once(Err(error))),
        };
        crate::batch_stream(self.schema.clone(), batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn what_a_killed_run_left_goes_and_a_running_ones_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        let running = ScratchDir::claim(&scratch).unwrap();
        std::fs::write(running.path.join("share-0.arrow"), b"events").unwrap();
        let run = running.path.file_name().unwrap().to_string_lossy().into_owned();
        // a killed run's directory and lock file (unlocked), and a loose file of an older version
        std::fs::create_dir(scratch.join("run-1-0")).unwrap();
        std::fs::write(scratch.join("run-1-0/share-0.arrow"), b"events").unwrap();
        std::fs::write(scratch.join("run-1-0.lock"), b"").unwrap();
        std::fs::write(scratch.join("share-3.arrow"), b"events").unwrap();

        remove_abandoned(&scratch).unwrap();
        assert_eq!(names(&scratch), [run.clone(), format!("{run}.lock")]);
        assert_eq!(names(&running.path), ["share-0.arrow"]);
        // a second run beside the first has a directory of its own
        let second = ScratchDir::claim(&scratch).unwrap();
        assert_ne!(second.path, running.path);
        drop(running);
        assert_eq!(names(&scratch).len(), 2, "the second run's files stay");
        drop(second);
        assert!(!scratch.exists(), "the last run removes the scratch space");
    }
}
