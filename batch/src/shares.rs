//! The events known at a cutoff, split by node into shares that each fit in memory.
//!
//! Every feature and every column of the batch view is computed per sku×node or per node, but
//! for the SKU totals, which are sums over the per-sku×node table. So the nightly job can run the
//! per-node parts of `features.sql` one share of the nodes at a time: each share's events are
//! held in memory, its sorts do not spill and its groups fit the caches, and the time per event
//! stays the same as the lake grows.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
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
    /// Too many: one Arrow IPC file per share in a scratch directory, removed when dropped.
    Split { schema: SchemaRef, dir: PathBuf, shares: Vec<Share> },
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

    /// Registers `share` as the table `timely` of `context`: held in memory, unless its file is
    /// larger than `hold_limit` bytes (its nodes have more events than a share's budget), when
    /// every query streams it from the file instead.
    pub(crate) fn register(&self, context: &SessionContext, share: usize, hold_limit: usize) -> Result<(), BatchError> {
        match self {
            Known::Held { schema, batches } => crate::register_in_memory(context, "timely", schema.clone(), batches.clone()),
            Known::Split { schema, shares, .. } => {
                let share = &shares[share];
                if share.bytes <= hold_limit {
                    let batches = read(&share.path)?;
                    crate::register_in_memory(context, "timely", schema.clone(), batches)
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

impl Drop for Known {
    fn drop(&mut self) {
        if let Known::Split { dir, .. } = self {
            // a scratch directory left behind is removed by the next run anyway
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes events into one file per share, by their node.
pub(crate) struct Splitter {
    schema: SchemaRef,
    dir: PathBuf,
    node: usize,
    writers: Vec<(PathBuf, FileWriter<BufWriter<File>>, usize)>,
}

impl Splitter {
    /// Creates the directory `dir` and `shares` empty files in it.
    pub(crate) fn create(dir: &Path, schema: SchemaRef, shares: usize) -> Result<Splitter, BatchError> {
        std::fs::create_dir_all(dir).map_err(|error| scratch_error(dir, error))?;
        let node = schema.index_of("node").map_err(|error| scratch_error(dir, error))?;
        let writers = (0..shares)
            .map(|share| {
                let path = dir.join(format!("share-{share}.arrow"));
                let file = File::create(&path).map_err(|error| scratch_error(&path, error))?;
                let writer = FileWriter::try_new(BufWriter::with_capacity(64 << 10, file), &schema).map_err(|error| scratch_error(&path, error))?;
                Ok((path, writer, 0))
            })
            .collect::<Result<_, BatchError>>()?;
        Ok(Splitter { schema, dir: dir.to_path_buf(), node, writers })
    }

    /// Appends each event of `batch` to its node's share.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), BatchError> {
        let nodes = arrow_cast::cast(batch.column(self.node), &DataType::Utf8).map_err(|error| scratch_error(&self.dir, error))?;
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
        Ok(Known::Split { schema: self.schema, dir: self.dir, shares })
    }
}

/// The share of a node: a fixed hash, so that a node's events all land in one share.
fn share_of(node: &str, shares: usize) -> usize {
    (crate::fixed_hash(node) % shares as u64) as usize
}

fn read(path: &Path) -> Result<Vec<RecordBatch>, BatchError> {
    let file = File::open(path).map_err(|error| scratch_error(path, error))?;
    let reader = FileReader::try_new(std::io::BufReader::new(file), None).map_err(|error| scratch_error(path, error))?;
    reader.collect::<Result<_, _>>().map_err(|error| scratch_error(path, error))
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
        let batches: Box<dyn Iterator<Item = datafusion::error::Result<RecordBatch>> + Send> =
            match File::open(&self.path).map_err(datafusion::error::DataFusionError::from).and_then(|file| {
                FileReader::try_new(std::io::BufReader::new(file), None).map_err(datafusion::error::DataFusionError::from)
            }) {
                Ok(reader) => Box::new(reader.map(|batch| batch.map_err(datafusion::error::DataFusionError::from))),
                Err(error) => Box::new(std::iter::once(Err(error))),
            };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::iter(batches)))
    }
}
