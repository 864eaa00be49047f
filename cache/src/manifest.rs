//! `manifest.json`: what a cache holds, where it came from, and a hash of every file.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result, io_err};

/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the linear head.
pub const HEAD_FILE: &str = "head.parquet";
/// File name of the per-class ID-train statistics.
pub const STATS_FILE: &str = "stats.parquet";
/// File name of the ID-train activation percentiles.
pub const PERCENTILES_FILE: &str = "activation_percentiles.parquet";
/// Directory holding an unfinished write (never present in a finished cache).
pub const PARTIAL_DIR: &str = ".partial";

/// What a file of the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The in-distribution training split (source of the statistics).
    IdTrain,
    /// The in-distribution test split.
    IdTest,
    /// An out-of-distribution set (labels are -1).
    Ood,
    /// The linear head `W`, `b`.
    Head,
    /// ID-train statistics.
    Stats,
}

impl Role {
    /// The lowercase name used in the manifest and in Parquet footers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::IdTrain => "id_train",
            Role::IdTest => "id_test",
            Role::Ood => "ood",
            Role::Head => "head",
            Role::Stats => "stats",
        }
    }

    /// Parses [`Role::as_str`] back.
    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::IdTrain,
            Role::IdTest,
            Role::Ood,
            Role::Head,
            Role::Stats,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Whether this role is a data split (rows of features and logits).
    pub fn is_split(self) -> bool {
        matches!(self, Role::IdTrain | Role::IdTest | Role::Ood)
    }

    /// Whether rows of this role carry class labels (`0..C`) rather than -1.
    pub fn is_id(self) -> bool {
        matches!(self, Role::IdTrain | Role::IdTest)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The network whose features are cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// A name for the model (e.g. `densenet100-cifar10`).
    pub id: String,
    /// sha256 (hex) of the checkpoint file, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_sha256: Option<String>,
    /// Feature width `m` (penultimate layer).
    pub feature_dim: usize,
    /// Number of classes `C`.
    pub num_classes: usize,
    /// Class names, `C` entries, in class-index order.
    pub class_names: Vec<String>,
}

/// The program that wrote the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// Program name.
    pub name: String,
    /// Program version.
    pub version: String,
}

impl ToolInfo {
    /// This crate (`posthoc-cache` and its version).
    pub fn this_crate() -> ToolInfo {
        ToolInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// An input the producer skipped (unreadable image, ...); it has no row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The set it belongs to.
    pub set: String,
    /// Its dataset index (the row it would have had).
    pub index: u64,
    /// Its path relative to the set root.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// One file of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name, relative to the cache directory (no separators).
    pub name: String,
    /// What the file holds.
    pub role: Role,
    /// Set name for data splits; absent for head and stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// Number of rows.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256 of the file's bytes (lowercase hex).
    pub sha256: String,
}

/// `manifest.json` of a format-v1 cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The model.
    pub model: ModelInfo,
    /// How inputs were preprocessed (free-form, given by the producer).
    pub preprocessing: serde_json::Value,
    /// The writing program.
    pub tool: ToolInfo,
    /// Creation time (RFC 3339), when the caller gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Command, configuration, importer source... (free-form).
    pub provenance: serde_json::Value,
    /// Inputs the producer skipped.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Every file, head first, then splits (ID train, ID test, OOD by name), then stats.
    pub files: Vec<FileEntry>,
}

/// What a producer states up front when creating a cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestInit {
    /// The model.
    pub model: ModelInfo,
    /// Preprocessing description (free-form JSON object).
    pub preprocessing: serde_json::Value,
    /// The writing program.
    pub tool: ToolInfo,
    /// Creation time (RFC 3339), if wanted; omitted for byte-reproducible manifests.
    pub created: Option<String>,
    /// Free-form provenance (command, config, ...).
    pub provenance: serde_json::Value,
}

/// The split file name of `set` with `role`: `<set>.parquet` for ID splits,
/// `ood-<set>.parquet` for OOD sets.
pub fn split_file_name(set: &str, role: Role) -> String {
    match role {
        Role::Ood => format!("ood-{set}.parquet"),
        _ => format!("{set}.parquet"),
    }
}

/// Checks that `set` is a usable set name: `[A-Za-z0-9][A-Za-z0-9_.-]*`, not a reserved
/// file stem (`head`, `stats`, `activation_percentiles`, `manifest`).
pub fn validate_set_name(set: &str) -> Result<()> {
    let bad = |reason: &str| CacheError::InvalidInput {
        context: format!("set name `{set}`"),
        reason: reason.to_string(),
    };
    let mut chars = set.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return Err(bad("must start with an ASCII letter or digit")),
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(bad("may only hold ASCII letters, digits, `_`, `-`, `.`"));
    }
    if ["head", "stats", "activation_percentiles", "manifest"].contains(&set) {
        return Err(bad("is reserved"));
    }
    Ok(())
}

impl ModelInfo {
    /// Checks `m > 0`, `C > 0` and `C` class names.
    pub fn validate(&self, context: &str) -> Result<()> {
        let bad = |key: &str, reason: String| CacheError::InvalidInput {
            context: format!("{context}: model.{key}"),
            reason,
        };
        if self.feature_dim == 0 {
            return Err(bad("feature_dim", "must be > 0".into()));
        }
        if self.num_classes == 0 {
            return Err(bad("num_classes", "must be > 0".into()));
        }
        if self.class_names.len() != self.num_classes {
            return Err(bad(
                "class_names",
                format!(
                    "{} names for {} classes",
                    self.class_names.len(),
                    self.num_classes
                ),
            ));
        }
        if let Some(h) = &self.checkpoint_sha256
            && !is_sha256_hex(h)
        {
            return Err(bad(
                "checkpoint_sha256",
                "not 64 lowercase hex digits".into(),
            ));
        }
        Ok(())
    }
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// Reads and validates `<dir>/manifest.json` (version, dims, file list); does not
    /// touch the data files.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let file = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CacheError::Unfinished {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "no {MANIFEST_FILE} (not a cache, or a write that never finished)"
                    ),
                });
            }
            Err(e) => return Err(io_err(&file)(e)),
        };
        Manifest::parse(&text, &file)
    }

    /// Parses and validates manifest text; `file` (a path or URL) names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest> {
        let file = file.to_path_buf();
        // Check the version before the full schema so that a newer format says so.
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|source| CacheError::ManifestJson {
                file: file.clone(),
                source,
            })?;
        match raw.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(CacheError::UnsupportedVersion {
                    file,
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                    supported: FORMAT_VERSION,
                });
            }
            None => {
                return Err(CacheError::InvalidManifest {
                    file,
                    key: "format_version".into(),
                    reason: "missing or not an integer".into(),
                });
            }
        }
        let manifest: Manifest =
            serde_json::from_value(raw).map_err(|source| CacheError::ManifestJson {
                file: file.clone(),
                source,
            })?;
        manifest.validate(&file)?;
        Ok(manifest)
    }

    /// Checks internal consistency; `file` names the manifest in errors.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let bad = |key: &str, reason: String| CacheError::InvalidManifest {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        if self.format_version != FORMAT_VERSION {
            return Err(CacheError::UnsupportedVersion {
                file: file.to_path_buf(),
                found: self.format_version,
                supported: FORMAT_VERSION,
            });
        }
        self.model.validate("manifest").map_err(|e| match e {
            CacheError::InvalidInput { context, reason } => bad(&context, reason),
            other => other,
        })?;
        let mut names = BTreeSet::new();
        let mut sets = BTreeSet::new();
        let (mut heads, mut id_train, mut id_test) = (0, 0, 0);
        let mut stats_files = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            let key = format!("files[{i}]");
            if !names.insert(f.name.as_str()) {
                return Err(bad(&key, format!("file `{}` listed twice", f.name)));
            }
            if !is_sha256_hex(&f.sha256) {
                return Err(bad(&key, "sha256 is not 64 lowercase hex digits".into()));
            }
            match f.role {
                Role::Head => {
                    heads += 1;
                    if f.name != HEAD_FILE || f.set.is_some() {
                        return Err(bad(
                            &key,
                            format!("a head file must be `{HEAD_FILE}` without set"),
                        ));
                    }
                    if f.rows != self.model.num_classes as u64 {
                        return Err(bad(
                            &key,
                            format!(
                                "head has {} rows for {} classes",
                                f.rows, self.model.num_classes
                            ),
                        ));
                    }
                }
                Role::Stats => {
                    if ![STATS_FILE, PERCENTILES_FILE].contains(&f.name.as_str()) || f.set.is_some()
                    {
                        return Err(bad(
                            &key,
                            format!(
                                "a stats file must be `{STATS_FILE}` or `{PERCENTILES_FILE}` without set"
                            ),
                        ));
                    }
                    stats_files.insert(f.name.as_str());
                }
                role => {
                    let Some(set) = &f.set else {
                        return Err(bad(&key, "a split entry needs `set`".into()));
                    };
                    validate_set_name(set).map_err(|e| bad(&key, e.to_string()))?;
                    if !sets.insert(set.as_str()) {
                        return Err(bad(&key, format!("set `{set}` listed twice")));
                    }
                    if f.name != split_file_name(set, role) {
                        return Err(bad(
                            &key,
                            format!(
                                "set `{set}` with role {role} must be stored as `{}`",
                                split_file_name(set, role)
                            ),
                        ));
                    }
                    id_train += usize::from(role == Role::IdTrain);
                    id_test += usize::from(role == Role::IdTest);
                }
            }
        }
        if heads != 1 {
            return Err(bad("files", format!("{heads} head entries, expected 1")));
        }
        if id_train > 1 || id_test > 1 {
            return Err(bad(
                "files",
                "at most one id_train and one id_test split".into(),
            ));
        }
        if stats_files.len() == 1 {
            return Err(bad(
                "files",
                format!("`{STATS_FILE}` and `{PERCENTILES_FILE}` come together"),
            ));
        }
        for s in &self.skipped {
            if !sets.contains(s.set.as_str()) {
                return Err(bad("skipped", format!("entry for unknown set `{}`", s.set)));
            }
        }
        Ok(())
    }

    /// The entry of set `set`, or [`CacheError::MissingSplit`].
    pub fn split_entry(&self, set: &str) -> Result<&FileEntry> {
        self.files
            .iter()
            .find(|f| f.role.is_split() && f.set.as_deref() == Some(set))
            .ok_or_else(|| CacheError::MissingSplit {
                set: set.to_string(),
                available: self.split_names(None),
            })
    }

    /// Names of the sets with `role` (all splits when `None`), in manifest order.
    pub fn split_names(&self, role: Option<Role>) -> Vec<String> {
        self.files
            .iter()
            .filter(|f| f.role.is_split() && role.is_none_or(|r| r == f.role))
            .filter_map(|f| f.set.clone())
            .collect()
    }

    /// The entry named `name`, if listed.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Sorts `files` into the canonical order (head, splits by role then set, stats).
    pub(crate) fn sort_files(&mut self) {
        fn rank(f: &FileEntry) -> (u8, String) {
            let r = match f.role {
                Role::Head => 0,
                Role::IdTrain => 1,
                Role::IdTest => 2,
                Role::Ood => 3,
                Role::Stats => 4,
            };
            (r, f.name.clone())
        }
        self.files.sort_by_key(rank);
        self.skipped
            .sort_by(|a, b| (&a.set, a.index).cmp(&(&b.set, b.index)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_are_checked() {
        assert!(validate_set_name("isun").is_ok());
        assert!(validate_set_name("id_train").is_ok());
        assert!(validate_set_name("places-365.v2").is_ok());
        assert!(validate_set_name("").is_err());
        assert!(validate_set_name("../x").is_err());
        assert!(validate_set_name("a/b").is_err());
        assert!(validate_set_name("head").is_err());
        assert!(validate_set_name("_x").is_err());
    }

    #[test]
    fn split_file_names() {
        assert_eq!(
            split_file_name("id_train", Role::IdTrain),
            "id_train.parquet"
        );
        assert_eq!(split_file_name("isun", Role::Ood), "ood-isun.parquet");
    }

    #[test]
    fn roles_round_trip() {
        for r in [
            Role::IdTrain,
            Role::IdTest,
            Role::Ood,
            Role::Head,
            Role::Stats,
        ] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }
}
