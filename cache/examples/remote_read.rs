//! The two ways of reading a cache from an object store, measured by `just bench-remote`
//! (each mode in its own process, so its peak RSS is its own):
//!
//! ```text
//! remote_read download s3://bucket/prefix id_test,isun   # what `posthoc eval` does
//! remote_read range    s3://bucket/prefix id_test,isun   # Parquet range reads
//! ```
//!
//! - `download`: the content-addressed download cache (`posthoc_cache::store::fetch_remote`,
//!   `$POSTHOC_CACHE_DIR`): every file of the cache is fetched once, its sha256 checked
//!   on arrival, then the sets are read from the local copy (hashes checked again, as
//!   `eval` does). A second run finds everything local and downloads nothing.
//! - `range`: each set's Parquet file read straight from the store with the async reader
//!   (`ParquetObjectReader`): the footer, then only the column chunks scoring needs
//!   (`index`, `label`, `feature`; `path` and `logits` are never fetched). No sha256 can be
//!   checked this way (the manifest's hash covers the whole file), and every run fetches
//!   again.
//!
//! Prints one line: mode, rows, sets, seconds, bytes fetched from the store.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow_array::Array;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use posthoc_cache::schema::col;
use posthoc_cache::store::fetch_remote;
use posthoc_cache::{CacheLocation, FeatureCache, Manifest};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, url, sets] = &args[..] else {
        eprintln!("usage: remote_read download|range s3://bucket/prefix SET[,SET...]");
        std::process::exit(2);
    };
    let sets: Vec<&str> = sets.split(',').collect();
    let started = Instant::now();
    let (rows, bytes) = match mode.as_str() {
        "download" => download(url, &sets),
        "range" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(range(url, &sets)),
        other => panic!("unknown mode {other}"),
    };
    println!(
        "{mode}: {rows} rows of {} sets in {:.3} s, {bytes} bytes fetched",
        sets.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The download cache, then the local reader (what `eval --cache s3://...` does).
fn download(url: &str, sets: &[&str]) -> (usize, u64) {
    let CacheLocation::Remote(remote) = CacheLocation::parse(url).expect("url") else {
        panic!("{url} is not a remote location");
    };
    let before = dir_bytes(&posthoc_cache::store::download_cache_dir().join("objects"));
    let dir = fetch_remote(&remote).expect("fetch");
    let fetched = dir_bytes(&posthoc_cache::store::download_cache_dir().join("objects")) - before;
    let cache = FeatureCache::open_with(&dir, true).expect("open");
    let rows = std::thread::scope(|s| {
        let handles: Vec<_> = sets
            .iter()
            .map(|set| s.spawn(|| cache.split_features(set).expect("read").features.nrows()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (rows, fetched)
}

/// Bytes of the files in `dir` (0 when absent).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// A Parquet file on an object store, read by byte ranges; counts the bytes it fetches.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
    fetched: Arc<AtomicU64>,
}

fn parquet_err(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for RangeReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.fetched
            .fetch_add(range.end - range.start, Ordering::Relaxed);
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(parquet_err)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let n: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.fetched.fetch_add(n, Ordering::Relaxed);
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(parquet_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let meta = ParquetMetaDataReader::new()
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(meta))
        }
        .boxed()
    }
}

/// Range reads of the scoring columns of every set, all sets concurrently.
async fn range(url: &str, sets: &[&str]) -> (usize, u64) {
    let rest = url.strip_prefix("s3://").expect("an s3:// url");
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // reqwest is built without a default TLS provider (as in `RemoteStore::connect`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .expect("s3 store"),
    );
    let object = |name: &str| ObjectPath::from(format!("{}/{name}", prefix.trim_end_matches('/')));
    let text = store
        .get(&object("manifest.json"))
        .await
        .expect("manifest")
        .bytes()
        .await
        .expect("manifest bytes");
    let manifest = Manifest::parse(
        std::str::from_utf8(&text).expect("utf-8"),
        std::path::Path::new("manifest.json"),
    )
    .expect("manifest");
    let fetched = Arc::new(AtomicU64::new(text.len() as u64));
    let reads = sets.iter().map(|set| {
        let entry = manifest.split_entry(set).expect("set").clone();
        let reader = RangeReader {
            store: store.clone(),
            path: object(&entry.name),
            size: entry.bytes,
            fetched: fetched.clone(),
        };
        async move {
            let builder = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .expect("footer");
            let schema = builder.schema().clone();
            let roots: Vec<usize> = [col::INDEX, col::LABEL, col::FEATURE]
                .iter()
                .map(|c| schema.index_of(c).expect("column"))
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let batches: Vec<_> = builder
                .with_projection(mask)
                .with_batch_size(8192)
                .build()
                .expect("stream")
                .try_collect()
                .await
                .expect("batches");
            batches.iter().map(|b| b.column(0).len()).sum::<usize>()
        }
    });
    let rows = futures_util::future::join_all(reads).await.iter().sum();
    (rows, fetched.load(Ordering::Relaxed))
}
