//! A parallel, ordered batch loader: worker threads read, decode and preprocess batches of an
//! [`ImageSet`] while the caller runs the network; batches come out in dataset order through
//! a bounded queue.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::decode::ImageDecoder;
use super::error::{DataError, ImageError};
use super::sets::ImageSet;
use super::transform::Preprocess;

/// Which part of a set to load and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Images per batch (the last batch of the selection may be smaller; with
    /// `skip_bad`, bad images are left out of their batch).
    pub batch_size: usize,
    /// Use only the first `limit` images of the set (before sharding); `None` = all.
    pub limit: Option<u64>,
    /// `(i, n)`: the `i`-th of `n` contiguous, disjoint, near-equal parts of the selection
    /// (`[len * i / n, len * (i + 1) / n)`); `None` = the whole selection.
    pub shard: Option<(u64, u64)>,
    /// Resume: skip images whose dataset index is below this (absolute index).
    pub resume_from: u64,
    /// Record unreadable images as [`BadImage`] and go on, instead of stopping with an error.
    pub skip_bad: bool,
    /// Decode threads (at least 1).
    pub threads: usize,
    /// Batches decoded ahead of the consumer (queue bound, at least 1).
    pub prefetch: usize,
}

impl Default for LoaderOptions {
    /// Batch 64, everything, fail on the first bad image, 1 thread, 4 batches ahead.
    fn default() -> Self {
        Self {
            batch_size: 64,
            limit: None,
            shard: None,
            resume_from: 0,
            skip_bad: false,
            threads: 1,
            prefetch: 4,
        }
    }
}

impl LoaderOptions {
    /// The dataset indices these options select out of a set of `len` images.
    pub fn selection(&self, len: u64) -> Result<Range<u64>, DataError> {
        let invalid = |field, reason: String| DataError::InvalidConfig { field, reason };
        if self.batch_size == 0 {
            return Err(invalid("loader.batch_size", "must be at least 1".into()));
        }
        if self.threads == 0 {
            return Err(invalid("loader.threads", "must be at least 1".into()));
        }
        if self.prefetch == 0 {
            return Err(invalid("loader.prefetch", "must be at least 1".into()));
        }
        let total = self.limit.map_or(len, |l| l.min(len));
        let (start, end) = match self.shard {
            None => (0, total),
            Some((i, n)) => {
                if n == 0 || i >= n {
                    return Err(invalid(
                        "loader.shard",
                        format!("part {i} of {n}: need 0 <= i < n"),
                    ));
                }
                let at = |k: u64| ((u128::from(total) * u128::from(k)) / u128::from(n)) as u64;
                (at(i), at(i + 1))
            }
        };
        Ok(start.max(self.resume_from).min(end)..end)
    }
}

/// An image left out because it could not be read or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadImage {
    /// Its dataset index.
    pub index: u64,
    /// Its path relative to the set root.
    pub path: String,
    /// The error message (names the full path).
    pub reason: String,
}

/// A batch of preprocessed images in dataset order.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Dataset index of each image.
    pub indices: Vec<u64>,
    /// Path of each image relative to the set root.
    pub paths: Vec<String>,
    /// Label (class index) of each image.
    pub labels: Vec<i32>,
    /// Pixels, `NCHW` `f32`, normalised; `len = n * 3 * crop * crop`.
    pub data: Vec<f32>,
    /// `[n, 3, crop, crop]`.
    pub shape: [usize; 4],
    /// Images of this batch's index range that were skipped (only with `skip_bad`).
    pub skipped: Vec<BadImage>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch holds no image (all of its range was skipped).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Reads, decodes and preprocesses the images `range` of `set` into one batch (one thread).
pub fn load_batch(
    set: &dyn ImageSet,
    range: Range<u64>,
    preprocess: &Preprocess,
    decoder: &mut ImageDecoder,
    skip_bad: bool,
) -> Result<Batch, DataError> {
    let per_image = preprocess.output_len();
    let cap = (range.end - range.start) as usize;
    let mut batch = Batch {
        indices: Vec::with_capacity(cap),
        paths: Vec::with_capacity(cap),
        labels: Vec::with_capacity(cap),
        data: Vec::with_capacity(cap * per_image),
        shape: [0, 3, preprocess.crop(), preprocess.crop()],
        skipped: Vec::new(),
    };
    for index in range {
        let decoded: Result<_, ImageError> = set
            .read(index)
            .and_then(|bytes| decoder.decode_rgb(&bytes, &set.full_path(index)));
        match decoded {
            Ok(image) => {
                let at = batch.data.len();
                batch.data.resize(at + per_image, 0.0);
                preprocess.apply_into(image, &mut batch.data[at..]);
                batch.indices.push(index);
                batch.paths.push(set.path(index).to_owned());
                batch.labels.push(set.label(index));
            }
            Err(e) if skip_bad => {
                tracing::warn!(index, error = %e, "skipping unreadable image");
                batch.skipped.push(BadImage {
                    index,
                    path: set.path(index).to_owned(),
                    reason: e.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    batch.shape[0] = batch.indices.len();
    Ok(batch)
}

type BatchResult = Result<Batch, DataError>;

/// Iterator over the batches of a selection of an [`ImageSet`], decoded on `threads` worker
/// threads, in dataset order, at most `prefetch` batches ahead of the consumer.
///
/// The first error (without `skip_bad`) is yielded once and ends the iteration. Dropping the
/// loader stops and joins its threads.
pub struct Loader {
    pending: Option<Receiver<Receiver<BatchResult>>>,
    threads: Vec<JoinHandle<()>>,
    selection: Range<u64>,
    failed: bool,
    stop: Arc<AtomicBool>,
}

impl Loader {
    /// Starts the threads for the selection of `options` (see [`LoaderOptions::selection`]).
    pub fn new(
        set: Arc<dyn ImageSet>,
        preprocess: Preprocess,
        options: &LoaderOptions,
    ) -> Result<Self, DataError> {
        let selection = options.selection(set.len())?;
        tracing::debug!(
            set = %set.location().display(),
            ?selection,
            batch_size = options.batch_size,
            threads = options.threads,
            "starting image loader"
        );
        let batch = options.batch_size as u64;
        // Jobs: (index range, where to send the result). The consumer gets the result
        // receivers in order, so batches come out in order whatever thread finishes first.
        let (job_tx, job_rx) = bounded::<(Range<u64>, Sender<BatchResult>)>(options.prefetch);
        let (order_tx, order_rx) = bounded::<Receiver<BatchResult>>(options.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(options.threads + 1);
        let sel = selection.clone();
        threads.push(
            std::thread::Builder::new()
                .name("posthoc-load-feed".into())
                .spawn(move || {
                    let mut start = sel.start;
                    while start < sel.end {
                        let end = (start + batch).min(sel.end);
                        let (tx, rx) = bounded(1);
                        if order_tx.send(rx).is_err() || job_tx.send((start..end, tx)).is_err() {
                            return; // the loader was dropped
                        }
                        start = end;
                    }
                })
                .expect("spawn loader thread"),
        );
        for t in 0..options.threads {
            let (set, preprocess, jobs) = (Arc::clone(&set), preprocess.clone(), job_rx.clone());
            let (skip_bad, stop) = (options.skip_bad, Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("posthoc-decode-{t}"))
                    .spawn(move || {
                        let mut decoder = ImageDecoder::new();
                        for (range, tx) in jobs {
                            if stop.load(Ordering::Relaxed) {
                                continue; // drain the queue without work
                            }
                            let result =
                                load_batch(&*set, range, &preprocess, &mut decoder, skip_bad);
                            let _ = tx.send(result); // the consumer may be gone
                        }
                    })
                    .expect("spawn decode thread"),
            );
        }
        Ok(Self {
            pending: Some(order_rx),
            threads,
            selection,
            failed: false,
            stop,
        })
    }

    /// The dataset indices this loader goes through.
    pub fn selection(&self) -> Range<u64> {
        self.selection.clone()
    }

    /// Number of images selected (including any that turn out bad).
    pub fn total(&self) -> u64 {
        self.selection.end - self.selection.start
    }

    fn shutdown(&mut self) {
        // Dropping the ordered receiver makes the feeder stop, which closes the job queue,
        // which ends the workers after their current batch.
        self.stop.store(true, Ordering::Relaxed);
        self.pending = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rx = self.pending.as_ref()?.recv().ok()?;
        let result = rx.recv().unwrap_or(Err(DataError::WorkerPanicked));
        if result.is_err() {
            self.failed = true;
            self.shutdown();
        }
        Some(result)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(limit: Option<u64>, shard: Option<(u64, u64)>, resume_from: u64) -> LoaderOptions {
        LoaderOptions {
            limit,
            shard,
            resume_from,
            ..LoaderOptions::default()
        }
    }

    #[test]
    fn selection_applies_limit_then_shard_then_resume() {
        assert_eq!(opts(None, None, 0).selection(10).unwrap(), 0..10);
        assert_eq!(opts(Some(4), None, 0).selection(10).unwrap(), 0..4);
        assert_eq!(opts(Some(40), None, 0).selection(10).unwrap(), 0..10);
        let parts: Vec<_> = (0..3)
            .map(|i| opts(None, Some((i, 3)), 0).selection(10).unwrap())
            .collect();
        assert_eq!(parts, vec![0..3, 3..6, 6..10]);
        assert_eq!(opts(None, Some((1, 3)), 4).selection(10).unwrap(), 4..6);
        assert_eq!(opts(None, Some((1, 3)), 9).selection(10).unwrap(), 6..6);
        assert!(opts(None, Some((3, 3)), 0).selection(10).is_err());
        let zero = LoaderOptions {
            batch_size: 0,
            ..LoaderOptions::default()
        };
        assert!(zero.selection(10).is_err());
    }
}
