//! Full consistency check of a cache directory.

use std::path::{Path, PathBuf};

use crate::error::{CacheError, Result};
use crate::io::file_size;
use crate::manifest::{HEAD_FILE, Manifest, PERCENTILES_FILE, Role, STATS_FILE};
use crate::reader::{SplitReader, check_not_partial, read_head};
use crate::stats::TrainStats;

/// One file that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    /// File name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its set (splits only).
    pub set: Option<String>,
    /// Rows read.
    pub rows: u64,
    /// Bytes hashed.
    pub bytes: u64,
}

/// Outcome of [`verify`]: the files that passed and the problems found (each names its
/// file).
#[derive(Debug)]
pub struct Report {
    /// The cache directory.
    pub dir: PathBuf,
    /// Files that passed.
    pub passed: Vec<FileCheck>,
    /// Problems, at most one per file plus cross-file ones.
    pub problems: Vec<CacheError>,
}

impl Report {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(self)` when clean, else the first problem.
    pub fn into_result(mut self) -> Result<Report> {
        if self.problems.is_empty() {
            Ok(self)
        } else {
            Err(self.problems.remove(0))
        }
    }
}

/// Reads every file of the cache at `dir` completely and checks: sha256 and size against
/// the manifest, footer metadata and schema, dims (head C x m, splits m and C, stats),
/// row counts, finite values, labels (`0..C` for ID sets, -1 for OOD), strictly
/// increasing `index`, and that the statistics' class counts match the ID-train labels.
///
/// Fails outright (`Err`) when the directory is not a finished cache (no or invalid
/// manifest, `.partial` left over); otherwise problems are collected in the report.
pub fn verify(dir: impl AsRef<Path>) -> Result<Report> {
    let dir = dir.as_ref().to_path_buf();
    let manifest = Manifest::read(&dir)?;
    check_not_partial(&dir)?;
    let (m, c) = (manifest.model.feature_dim, manifest.model.num_classes);
    let mut report = Report {
        dir: dir.clone(),
        passed: Vec::new(),
        problems: Vec::new(),
    };
    let mut train_counts: Option<Vec<u64>> = None;
    for entry in &manifest.files {
        let path = dir.join(&entry.name);
        match file_size(&path) {
            Ok(Some(size)) if size == entry.bytes => {}
            Ok(Some(size)) => {
                report.problems.push(CacheError::SizeMismatch {
                    file: path,
                    expected: entry.bytes,
                    found: size,
                });
                continue;
            }
            Ok(None) => {
                report.problems.push(CacheError::MissingFile {
                    file: path,
                    what: format!("{} file listed in the manifest", entry.role),
                });
                continue;
            }
            Err(e) => {
                report.problems.push(e);
                continue;
            }
        }
        let result = match entry.role {
            Role::Head => read_head(&dir, entry, &manifest, true).map(|_| entry.rows),
            Role::Stats if entry.name == PERCENTILES_FILE => continue, // read with STATS_FILE
            Role::Stats => {
                let pct = manifest
                    .file(PERCENTILES_FILE)
                    .expect("manifest validated: stats come in pairs");
                match TrainStats::read(&dir, entry, pct, m, c, true) {
                    Ok(stats) => {
                        report.passed.push(FileCheck {
                            name: pct.name.clone(),
                            role: pct.role,
                            set: None,
                            rows: pct.rows,
                            bytes: pct.bytes,
                        });
                        check_stats_against_train(&dir, &manifest, &stats, &mut report);
                        Ok(entry.rows)
                    }
                    Err(e) => Err(e),
                }
            }
            role => read_split(&dir, entry, m, c, role, &mut train_counts),
        };
        match result {
            Ok(rows) => report.passed.push(FileCheck {
                name: entry.name.clone(),
                role: entry.role,
                set: entry.set.clone(),
                rows,
                bytes: entry.bytes,
            }),
            Err(e) => report.problems.push(e),
        }
    }
    if let (Some(counts), Some(stats_entry)) = (train_counts, manifest.file(STATS_FILE))
        && let Some(pct) = manifest.file(PERCENTILES_FILE)
        && let Ok(stats) = TrainStats::read(&dir, stats_entry, pct, m, c, false)
        && stats.class_counts != counts
    {
        report.problems.push(CacheError::InvalidInput {
            context: dir.join(STATS_FILE).display().to_string(),
            reason: format!(
                "class counts {:?} differ from the ID-train labels' {:?}",
                stats.class_counts, counts
            ),
        });
    }
    debug_assert!(manifest.file(HEAD_FILE).is_some());
    Ok(report)
}

fn read_split(
    dir: &Path,
    entry: &crate::FileEntry,
    m: usize,
    c: usize,
    role: Role,
    train_counts: &mut Option<Vec<u64>>,
) -> Result<u64> {
    let mut reader = SplitReader::open(
        dir,
        entry,
        m,
        c,
        true,
        crate::schema::DEFAULT_ROW_GROUP_ROWS,
    )?;
    let mut counts = vec![0u64; c];
    while let Some(b) = reader.next_checked()? {
        if role == Role::IdTrain {
            for &l in b.labels {
                counts[l as usize] += 1; // labels checked to be in 0..C
            }
        }
    }
    let rows = reader.finish()?;
    if role == Role::IdTrain {
        *train_counts = Some(counts);
    }
    Ok(rows)
}

fn check_stats_against_train(
    dir: &Path,
    manifest: &Manifest,
    stats: &TrainStats,
    report: &mut Report,
) {
    let Some(train) = manifest.split_names(Some(Role::IdTrain)).into_iter().next() else {
        return;
    };
    let entry = manifest.split_entry(&train).expect("listed");
    if stats.n_train != entry.rows {
        report.problems.push(CacheError::RowCount {
            file: dir.join(STATS_FILE),
            expected: entry.rows,
            found: stats.n_train,
        });
    }
}
