//! Cache locations: a local directory or an object-store URL, and the remote side of
//! reading (a content-addressed download cache) and writing (uploads, manifest last).
//!
//! A location is parsed once by [`CacheLocation::parse`]: a plain path or `file://` URL
//! is a local directory (read and written in place, as before); `s3://bucket/prefix`,
//! `gs://bucket/prefix`, `az://container/prefix` and read-only `http(s)://host/path` go
//! through the `object_store` crate. Credentials and options come from the standard
//! environment variables of each store (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL` for S3-compatible stores such as MinIO and Ceph,
//! `AWS_ALLOW_HTTP`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
//! Nothing here logs a credential; URLs are shown without user info or query.
//!
//! Reading a remote cache downloads its files once into a local content-addressed
//! store (`$POSTHOC_CACHE_DIR`, default `${XDG_CACHE_HOME:-~/.cache}/posthoc`):
//! `objects/<sha256>` is a file whose bytes hash to its name (checked on arrival), and
//! `caches/<sha256 of manifest.json>/` is a local cache directory whose files are hard
//! links to those objects. The local reader then does everything it does for a local
//! directory (hash checks on read included), and a later eval of the same cache (or of
//! another cache sharing files) downloads nothing.
//!
//! Writing a remote cache uploads every data file (multipart for large ones), then
//! `manifest.json` last: an object store has no rename, so the manifest is the commit
//! point. An interrupted upload leaves either no manifest (not a cache) or the previous
//! manifest removed before the first data object was replaced.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt,
    PutMode, PutOptions, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::{CacheError, Result, io_err};
use crate::io::{commit_tmp, create_dir_all, sha256_file};
use crate::manifest::{MANIFEST_FILE, Manifest};

/// Object metadata key holding a file's sha256 (S3: `x-amz-meta-posthoc-sha256`), so that
/// a resumed copy can skip a file without downloading it.
const SHA_METADATA: &str = "posthoc-sha256";
/// Upload part size (and the threshold above which uploads are multipart).
const PART_BYTES: usize = 8 << 20;

/// Where a cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// A local directory (a plain path or a `file://` URL).
    Local(PathBuf),
    /// A prefix in an object store.
    Remote(RemoteUrl),
}

/// The kind of object store a remote URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Amazon S3 or an S3-compatible store (`s3://`, `s3a://`).
    S3,
    /// Google Cloud Storage (`gs://`).
    Gcs,
    /// Azure Blob Storage (`az://`, `azure://`, `abfs://`, `abfss://`).
    Azure,
    /// A plain HTTP(S) server, read-only (`http://`, `https://`).
    Http,
}

/// A remote cache URL. `Display` leaves out user info and query (where secrets live).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    url: Url,
    kind: StoreKind,
}

impl RemoteUrl {
    /// The store kind.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Whether the store accepts writes (everything but plain HTTP).
    pub fn writable(&self) -> bool {
        self.kind != StoreKind::Http
    }

    /// The URL of object `name` under this prefix, for messages (no secrets).
    pub fn object(&self, name: &str) -> String {
        format!("{}/{name}", self.to_string().trim_end_matches('/'))
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.url.host_str().unwrap_or("");
        let port = self.url.port().map(|p| format!(":{p}")).unwrap_or_default();
        write!(
            f,
            "{}://{host}{port}{}",
            self.url.scheme(),
            self.url.path().trim_end_matches('/')
        )
    }
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Local(p) => write!(f, "{}", p.display()),
            CacheLocation::Remote(r) => write!(f, "{r}"),
        }
    }
}

impl CacheLocation {
    /// Parses a cache location: a path, or a `file://`, `s3://`, `gs://`, `az://`,
    /// `http(s)://` URL. Anything else with `://` is an error naming the schemes known.
    pub fn parse(text: &str) -> Result<CacheLocation> {
        let bad = |reason: String| CacheError::InvalidInput {
            context: format!("cache location `{}`", redact(text)),
            reason,
        };
        if !text.contains("://") {
            return Ok(CacheLocation::Local(PathBuf::from(text)));
        }
        let url = Url::parse(text).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        let kind = match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| bad("a file:// URL needs an absolute local path".into()))?;
                return Ok(CacheLocation::Local(path));
            }
            "s3" | "s3a" => StoreKind::S3,
            "gs" => StoreKind::Gcs,
            "az" | "azure" | "abfs" | "abfss" => StoreKind::Azure,
            "http" | "https" => StoreKind::Http,
            other => {
                return Err(bad(format!(
                    "unknown scheme `{other}` (known: a local path, file://, s3://, gs://, az://, http(s)://)"
                )));
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("the URL names no bucket or host".into()));
        }
        Ok(CacheLocation::Remote(RemoteUrl { url, kind }))
    }

    /// The local directory, when the location is local.
    pub fn local(&self) -> Option<&Path> {
        match self {
            CacheLocation::Local(p) => Some(p),
            CacheLocation::Remote(_) => None,
        }
    }
}

impl From<&Path> for CacheLocation {
    fn from(p: &Path) -> CacheLocation {
        CacheLocation::Local(p.to_path_buf())
    }
}

/// `text` without `user:password@` and `?query` (for messages about unparsable input).
fn redact(text: &str) -> String {
    let no_query = text.split('?').next().unwrap_or(text);
    match (no_query.find("://"), no_query.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &no_query[..s + 3], &no_query[at + 1..]),
        _ => no_query.to_string(),
    }
}

/// The process-wide runtime driving object-store requests (two worker threads; callers
/// block on it from ordinary threads).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("posthoc-store")
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Information about one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// The sha256 recorded in its metadata by our uploads, if any.
    pub sha256: Option<String>,
}

/// A connection to the objects under one remote prefix.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    url: RemoteUrl,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

/// What went wrong with a request, in one line, without secrets.
fn describe(e: &object_store::Error) -> String {
    use object_store::Error as E;
    let code = s3_error_code(&e.to_string());
    let with_code = |text: &str| match &code {
        Some(c) => format!("{text} ({c})"),
        None => text.to_string(),
    };
    match e {
        E::NotFound { .. } => with_code("not found"),
        E::PermissionDenied { .. } => with_code(
            "access denied: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)",
        ),
        E::Unauthenticated { .. } => with_code(
            "not authenticated: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)",
        ),
        E::AlreadyExists { .. } => "already exists".into(),
        E::Precondition { .. } => "changed meanwhile (precondition failed)".into(),
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            format!(
                "not supported by this store: {}",
                first_line(&e.to_string())
            )
        }
        other => {
            let text = first_line(&other.to_string());
            match &code {
                Some(c) => format!("{c}: {text}"),
                None => text,
            }
        }
    }
}

/// The first line of `text`, at most 300 characters.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// `<Code>X</Code>` of an S3 error body quoted in a message.
fn s3_error_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].to_string())
}

impl RemoteStore {
    /// Connects to the store of `url` with options from the environment.
    pub fn connect(url: &RemoteUrl) -> Result<RemoteStore> {
        // reqwest is built without a default TLS provider; install ring's once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        };
        // Client options (timeouts, proxies, `*_ALLOW_HTTP`) come from the environment
        // through each builder's `from_env`; only the plain HTTP store gets its own.
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(300));
        let fail = |e: object_store::Error| CacheError::Store {
            url: url.to_string(),
            reason: format!("cannot configure the store: {}", describe(&e)),
        };
        let text = url.url.as_str();
        let store: Arc<dyn ObjectStore> = match url.kind {
            StoreKind::S3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(text)
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?,
            ),
            StoreKind::Gcs => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(text)
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?,
            ),
            StoreKind::Azure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(text)
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?,
            ),
            StoreKind::Http => {
                let mut base = url.url.clone();
                base.set_query(None);
                let trimmed = base.path().trim_end_matches('/').to_string();
                base.set_path(&trimmed);
                Arc::new(
                    object_store::http::HttpBuilder::new()
                        .with_url(base.as_str())
                        .with_retry(retry)
                        .with_client_options(client.with_allow_http(true))
                        .build()
                        .map_err(fail)?,
                )
            }
        };
        let prefix = match url.kind {
            StoreKind::Http => ObjectPath::default(),
            _ => ObjectPath::parse(url.url.path().trim_matches('/')).map_err(|e| {
                CacheError::InvalidInput {
                    context: format!("cache location `{url}`"),
                    reason: format!("invalid object path: {e}"),
                }
            })?,
        };
        Ok(RemoteStore {
            url: url.clone(),
            store,
            prefix,
        })
    }

    /// The URL of this prefix.
    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    fn path(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    fn err(&self, name: &str, action: &str, e: &object_store::Error) -> CacheError {
        CacheError::Store {
            url: self.url.object(name),
            reason: format!("{action}: {}", describe(e)),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.url.writable() {
            return Ok(());
        }
        Err(CacheError::Store {
            url: self.url.to_string(),
            reason: "http(s) locations are read-only".into(),
        })
    }

    /// The bytes of object `name`, or `None` when it does not exist.
    pub fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let path = self.path(name);
        let store = self.store.clone();
        let got = runtime().block_on(async move { store.get(&path).await?.bytes().await });
        match got {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(name, "GET", &e)),
        }
    }

    /// Size and recorded sha256 of object `name`, or `None` when it does not exist.
    pub fn head(&self, name: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path(name);
        let store = self.store.clone();
        let got = runtime().block_on(async move {
            let options = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            store.get_opts(&path, options).await
        });
        match got {
            Ok(r) => Ok(Some(ObjectInfo {
                size: r.meta.size,
                sha256: r
                    .attributes
                    .get(&Attribute::Metadata(SHA_METADATA.into()))
                    .map(|v| v.to_string()),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(name, "HEAD", &e)),
        }
    }

    /// Checks that the prefix's bucket (container) exists and is reachable: a listing
    /// of the prefix. Used to turn a "not found" into "no such bucket" where it is one.
    pub fn check_bucket(&self) -> Result<()> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let listed = runtime()
            .block_on(async move { store.list_with_delimiter(Some(&prefix)).await.map(|_| ()) });
        match listed {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(e, object_store::Error::NotFound { .. })
                    || s3_error_code(&e.to_string()).as_deref() == Some("NoSuchBucket") =>
            {
                Err(CacheError::Store {
                    url: self.url.to_string(),
                    reason: format!(
                        "the bucket `{}` does not exist or is not visible with these credentials",
                        self.url.url.host_str().unwrap_or("")
                    ),
                })
            }
            Err(e) => Err(self.err("", "LIST", &e)),
        }
    }

    /// Streams object `name` into `dst` (through `<dst>.<pid>.tmp`, fsynced, renamed),
    /// hashing on the way. With `expect = (sha256, size)` a mismatching object is
    /// rejected ([`CacheError::HashMismatch`] / [`CacheError::SizeMismatch`] naming its
    /// URL) and nothing is left at `dst`. Returns the sha256 and size.
    pub fn download(
        &self,
        name: &str,
        dst: &Path,
        expect: Option<(&str, u64)>,
    ) -> Result<(String, u64)> {
        let tmp = PathBuf::from(format!("{}.{}.tmp", dst.display(), std::process::id()));
        let result = self.download_to(name, &tmp, expect);
        match result {
            Ok(summary) => {
                commit_tmp(&tmp, dst)?;
                Ok(summary)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn download_to(
        &self,
        name: &str,
        tmp: &Path,
        expect: Option<(&str, u64)>,
    ) -> Result<(String, u64)> {
        let mut file = File::create(tmp).map_err(io_err(tmp))?;
        let path = self.path(name);
        let store = self.store.clone();
        let object_url = PathBuf::from(self.url.object(name));
        let limit = expect.map(|(_, size)| size);
        let streamed: Result<(String, u64)> = runtime().block_on(async {
            let got = store
                .get(&path)
                .await
                .map_err(|e| self.err(name, "GET", &e))?;
            if let Some(size) = limit
                && got.meta.size != size
            {
                return Err(CacheError::SizeMismatch {
                    file: object_url.clone(),
                    expected: size,
                    found: got.meta.size,
                });
            }
            let mut stream = got.into_stream();
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.err(name, "GET", &e))?;
                total += chunk.len() as u64;
                if limit.is_some_and(|l| total > l) {
                    return Err(CacheError::SizeMismatch {
                        file: object_url.clone(),
                        expected: limit.unwrap_or(0),
                        found: total,
                    });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).map_err(io_err(tmp))?;
            }
            Ok((hex::encode(hasher.finalize()), total))
        });
        let (sha, size) = streamed?;
        if let Some((expected, expected_size)) = expect {
            if size != expected_size {
                return Err(CacheError::SizeMismatch {
                    file: object_url,
                    expected: expected_size,
                    found: size,
                });
            }
            if sha != expected {
                return Err(CacheError::HashMismatch {
                    file: object_url,
                    expected: expected.to_string(),
                    found: sha,
                });
            }
        }
        file.sync_all().map_err(io_err(tmp))?;
        Ok((sha, size))
    }

    /// sha256 and size of object `name` (streamed, nothing stored), or `None` when absent.
    pub fn hash(&self, name: &str) -> Result<Option<(String, u64)>> {
        let path = self.path(name);
        let store = self.store.clone();
        let hashed = runtime().block_on(async move {
            let mut stream = store.get(&path).await?.into_stream();
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                total += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok::<_, object_store::Error>((hex::encode(hasher.finalize()), total))
        });
        match hashed {
            Ok(h) => Ok(Some(h)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(name, "GET", &e)),
        }
    }

    /// Uploads local file `src` as object `name` (multipart above 8 MiB; an upload that
    /// fails or is killed never becomes visible), recording `sha256` in its metadata.
    pub fn upload(&self, src: &Path, name: &str, sha256: &str) -> Result<()> {
        self.check_writable()?;
        let mut file = File::open(src).map_err(io_err(src))?;
        let path = self.path(name);
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(SHA_METADATA.into()),
            sha256.to_string().into(),
        );
        let mut writer = BufWriter::with_capacity(self.store.clone(), path, PART_BYTES)
            .with_attributes(attributes);
        runtime().block_on(async {
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(io_err(src)(e));
                    }
                };
                if let Err(e) = writer.write_all(&buf[..n]).await {
                    let _ = writer.abort().await;
                    return Err(CacheError::Store {
                        url: self.url.object(name),
                        reason: format!("PUT: {}", first_line(&e.to_string())),
                    });
                }
            }
            writer.shutdown().await.map_err(|e| CacheError::Store {
                url: self.url.object(name),
                reason: format!("PUT: {}", first_line(&e.to_string())),
            })
        })
    }

    /// Writes `bytes` as object `name` in one request. With `create_only` it fails with
    /// `Ok(false)` when the object already exists (atomic where the store supports
    /// conditional puts: S3 `If-None-Match`, GCS, Azure).
    pub fn put(&self, name: &str, bytes: Vec<u8>, create_only: bool) -> Result<bool> {
        self.check_writable()?;
        let path = self.path(name);
        let store = self.store.clone();
        let options = PutOptions {
            mode: if create_only {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..PutOptions::default()
        };
        let put = runtime().block_on(async move {
            store
                .put_opts(&path, PutPayload::from(bytes), options)
                .await
        });
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
                if create_only =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err(name, "PUT", &e)),
        }
    }

    /// Deletes object `name` (absent is fine).
    pub fn delete(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        let path = self.path(name);
        let store = self.store.clone();
        match runtime().block_on(async move { store.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(name, "DELETE", &e)),
        }
    }

    /// Reads and validates the manifest: `(manifest, its bytes)`. A missing manifest is
    /// [`CacheError::Unfinished`] (or a missing-bucket error when the bucket is absent).
    pub fn manifest(&self) -> Result<(Manifest, Bytes)> {
        let Some(bytes) = self.get(MANIFEST_FILE)? else {
            self.check_bucket()?;
            return Err(CacheError::Unfinished {
                dir: PathBuf::from(self.url.to_string()),
                reason: format!("no {MANIFEST_FILE} (not a cache, or a write that never finished)"),
            });
        };
        let file = PathBuf::from(self.url.object(MANIFEST_FILE));
        let text = std::str::from_utf8(&bytes).map_err(|e| CacheError::InvalidManifest {
            file: file.clone(),
            key: "(file)".into(),
            reason: format!("not UTF-8: {e}"),
        })?;
        Ok((Manifest::parse(text, &file)?, bytes))
    }
}

/// The local download cache: `$POSTHOC_CACHE_DIR`, else `$XDG_CACHE_HOME/posthoc`, else
/// `~/.cache/posthoc`.
pub fn download_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("POSTHOC_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("posthoc");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("posthoc")
}

/// The local directory where a cache bound for `url` is written before its upload:
/// `<download cache>/staging/<first 16 hex digits of sha256(url)>`.
pub fn staging_dir(url: &RemoteUrl) -> PathBuf {
    let digest = hex::encode(Sha256::digest(url.to_string().as_bytes()));
    download_cache_dir().join("staging").join(&digest[..16])
}

/// Makes the remote cache at `url` available as a local cache directory (see the module
/// docs): downloads what the download cache lacks, verifying each file's sha256 and size
/// against the manifest on arrival, and returns the directory.
pub fn fetch_remote(url: &RemoteUrl) -> Result<PathBuf> {
    let store = RemoteStore::connect(url)?;
    let (manifest, bytes) = store.manifest()?;
    let root = download_cache_dir();
    let objects = root.join("objects");
    let view = root
        .join("caches")
        .join(hex::encode(Sha256::digest(&bytes)));
    if view.join(MANIFEST_FILE).exists() {
        tracing::debug!(url = %url, dir = %view.display(), "remote cache already downloaded");
        return Ok(view);
    }
    create_dir_all(&objects)?;
    create_dir_all(&view)?;
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    tracing::info!(url = %url, files = manifest.files.len(), bytes = total, dir = %root.display(), "fetching remote cache");
    for f in &manifest.files {
        let object = objects.join(&f.sha256);
        let have = std::fs::metadata(&object).is_ok_and(|m| m.len() == f.bytes);
        if !have {
            store.download(&f.name, &object, Some((&f.sha256, f.bytes)))?;
        }
        let target = view.join(&f.name);
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(&object, &target).is_err() {
            std::fs::copy(&object, &target).map_err(io_err(&target))?;
        }
    }
    crate::io::write_atomic(&view.join(MANIFEST_FILE), &bytes)?;
    Ok(view)
}

/// One file of a [`copy`]: what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyAction {
    /// Written (and read back to check its sha256).
    Copied,
    /// Already present with the right sha256: left alone.
    Skipped,
}

/// Outcome of a [`copy`].
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// The manifest copied.
    pub manifest: Manifest,
    /// Per data file, in manifest order: name, bytes, what happened.
    pub files: Vec<(String, u64, CopyAction)>,
}

/// One side of a copy.
enum Side {
    Local(PathBuf),
    Remote(RemoteStore),
}

impl Side {
    fn open(location: &CacheLocation) -> Result<Side> {
        Ok(match location {
            CacheLocation::Local(p) => Side::Local(p.clone()),
            CacheLocation::Remote(u) => Side::Remote(RemoteStore::connect(u)?),
        })
    }

    /// sha256 and size of file `name`, or `None` when absent. Trusts our own recorded
    /// metadata on objects whose size matches; hashes everything else.
    fn current(&self, name: &str, expect: (&str, u64)) -> Result<Option<(String, u64)>> {
        match self {
            Side::Local(dir) => {
                let p = dir.join(name);
                if !p.exists() {
                    return Ok(None);
                }
                sha256_file(&p).map(Some)
            }
            Side::Remote(s) => match s.head(name)? {
                None => Ok(None),
                Some(info) if info.size != expect.1 => Ok(Some((String::new(), info.size))),
                Some(ObjectInfo {
                    sha256: Some(sha),
                    size,
                }) if sha == expect.0 => Ok(Some((sha, size))),
                Some(_) => s.hash(name),
            },
        }
    }
}

/// Copies the cache at `src` to `dst` (any two locations). Resumable: files already at
/// `dst` with the manifest's sha256 are skipped. Every file is checked against the
/// source manifest while it is read, and read back at `dst` after it is written; the
/// manifest goes last (and a different manifest at `dst` is removed first, so that no
/// reader accepts a mixture). `progress` is called with the bytes done after each file.
pub fn copy(
    src: &CacheLocation,
    dst: &CacheLocation,
    mut progress: impl FnMut(&str, u64),
) -> Result<CopyReport> {
    if let CacheLocation::Remote(u) = dst
        && !u.writable()
    {
        return Err(CacheError::Store {
            url: u.to_string(),
            reason: "http(s) locations are read-only".into(),
        });
    }
    // The source, as a local directory (a remote source goes through the download
    // cache, which checks every file's sha256 on arrival).
    let src_dir = match src {
        CacheLocation::Local(p) => {
            let cache = crate::FeatureCache::open_with(p, false)?;
            cache.dir().to_path_buf()
        }
        CacheLocation::Remote(u) => fetch_remote(u)?,
    };
    let manifest_path = src_dir.join(MANIFEST_FILE);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let manifest = Manifest::read(&src_dir)?;
    let dst_side = Side::open(dst)?;
    // Remove a different manifest at the destination before touching its data files.
    match &dst_side {
        Side::Local(dir) => {
            create_dir_all(dir)?;
            let m = dir.join(MANIFEST_FILE);
            if std::fs::read(&m).is_ok_and(|b| b != manifest_bytes) {
                std::fs::remove_file(&m).map_err(io_err(&m))?;
                crate::io::fsync_dir(dir)?;
            }
        }
        Side::Remote(s) => {
            if let Some(old) = s.get(MANIFEST_FILE)?
                && old != manifest_bytes
            {
                s.delete(MANIFEST_FILE)?;
            }
        }
    }
    let mut files = Vec::new();
    for f in &manifest.files {
        let src_file = src_dir.join(&f.name);
        let expect = (f.sha256.as_str(), f.bytes);
        let action = if dst_side.current(&f.name, expect)? == Some((f.sha256.clone(), f.bytes)) {
            CopyAction::Skipped
        } else {
            // Check the source before writing it anywhere.
            let (sha, size) = sha256_file(&src_file)?;
            if size != f.bytes || sha != f.sha256 {
                return Err(CacheError::HashMismatch {
                    file: src_file,
                    expected: f.sha256.clone(),
                    found: sha,
                });
            }
            match &dst_side {
                Side::Local(dir) => {
                    let target = dir.join(&f.name);
                    let tmp = crate::io::tmp_path(&target);
                    std::fs::copy(&src_file, &tmp).map_err(io_err(&tmp))?;
                    File::open(&tmp)
                        .and_then(|t| t.sync_all())
                        .map_err(io_err(&tmp))?;
                    commit_tmp(&tmp, &target)?;
                }
                Side::Remote(s) => s.upload(&src_file, &f.name, &f.sha256)?,
            }
            let written = match &dst_side {
                Side::Local(dir) => Some(sha256_file(&dir.join(&f.name))?),
                Side::Remote(s) => s.hash(&f.name)?,
            };
            let location = match dst {
                CacheLocation::Local(d) => d.join(&f.name),
                CacheLocation::Remote(u) => PathBuf::from(u.object(&f.name)),
            };
            match written {
                Some((sha, size)) if sha == f.sha256 && size == f.bytes => {}
                Some((sha, _)) => {
                    return Err(CacheError::HashMismatch {
                        file: location,
                        expected: f.sha256.clone(),
                        found: sha,
                    });
                }
                None => {
                    return Err(CacheError::MissingFile {
                        file: location,
                        what: "the file just written".into(),
                    });
                }
            }
            crate::fault::point("copy.file");
            CopyAction::Copied
        };
        progress(&f.name, f.bytes);
        files.push((f.name.clone(), f.bytes, action));
    }
    match &dst_side {
        Side::Local(dir) => crate::io::write_atomic(&dir.join(MANIFEST_FILE), &manifest_bytes)?,
        Side::Remote(s) => {
            s.put(MANIFEST_FILE, manifest_bytes, false)?;
        }
    }
    Ok(CopyReport { manifest, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            CacheLocation::parse("out/x").unwrap(),
            CacheLocation::Local("out/x".into())
        );
        assert_eq!(
            CacheLocation::parse("file:///tmp/c").unwrap(),
            CacheLocation::Local("/tmp/c".into())
        );
        let CacheLocation::Remote(r) = CacheLocation::parse("s3://bucket/a/b/").unwrap() else {
            panic!("remote")
        };
        assert_eq!(r.kind(), StoreKind::S3);
        assert_eq!(r.to_string(), "s3://bucket/a/b");
        assert_eq!(r.object("manifest.json"), "s3://bucket/a/b/manifest.json");
        let CacheLocation::Remote(r) =
            CacheLocation::parse("https://user:secret@host:8080/c?sig=xyz").unwrap()
        else {
            panic!("remote")
        };
        assert!(!r.writable());
        assert_eq!(r.to_string(), "https://host:8080/c");
        for (text, kind) in [("gs://b/p", StoreKind::Gcs), ("az://c/p", StoreKind::Azure)] {
            match CacheLocation::parse(text).unwrap() {
                CacheLocation::Remote(r) => assert_eq!(r.kind(), kind),
                other => panic!("{other:?}"),
            }
        }
        let err = CacheLocation::parse("ftp://u:pw@h/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown scheme `ftp`"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(CacheLocation::parse("s3:///x").is_err());
    }

    #[test]
    fn s3_codes_are_found() {
        assert_eq!(
            s3_error_code("... <Error><Code>NoSuchBucket</Code><Message>x</Message>").as_deref(),
            Some("NoSuchBucket")
        );
        assert_eq!(s3_error_code("plain"), None);
    }
}
