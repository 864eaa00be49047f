//! Image sets: torchvision `ImageFolder` trees and tar shards of `<class>/<file>` members.
//!
//! Both are indexed when opened (paths, labels, where the bytes are), so a sample is read by
//! its dataset index in any order and from any thread.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{DataError, ImageError};

/// File name endings torchvision's `ImageFolder` accepts (`IMG_EXTENSIONS`), compared
/// case-insensitively. Files of other types are not part of a set; files with these
/// endings that are neither JPEG nor PNG fail at decode time as unsupported.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// Whether `name` ends with one of [`IMG_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMG_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}

/// Where an image set is, as written in a config: `{ folder = "dir" }` or
/// `{ tar = ["a.tar", "b.tar"] }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSetSpec {
    /// A torchvision `ImageFolder` tree ([`ImageFolder`]).
    Folder(PathBuf),
    /// Tar shards of `<class>/<file>` members, read in the order given ([`TarShards`]).
    Tar(Vec<PathBuf>),
    /// An image list (`<path> <label>` per line, [`super::list::open_image_list`]) of files
    /// under `root`.
    List {
        /// The list file.
        list: PathBuf,
        /// The folder the listed paths are relative to.
        root: PathBuf,
    },
}

impl ImageSetSpec {
    /// Opens the set, resolving relative paths against `base` (e.g. the repository root).
    /// `classes` fixes the labels of tar shards (otherwise the sorted union of their class
    /// folders) and of image lists (without it a list is an unlabelled OOD set); a folder
    /// set always labels its sorted class folders, as torchvision does.
    pub fn open(
        &self,
        base: &Path,
        classes: Option<&[String]>,
    ) -> Result<std::sync::Arc<dyn ImageSet>, DataError> {
        Ok(match self {
            ImageSetSpec::Folder(dir) => std::sync::Arc::new(ImageFolder::open(base.join(dir))?),
            ImageSetSpec::Tar(paths) => {
                let paths: Vec<PathBuf> = paths.iter().map(|p| base.join(p)).collect();
                std::sync::Arc::new(match classes {
                    Some(c) => TarShards::open_with_classes(&paths, c)?,
                    None => TarShards::open(&paths)?,
                })
            }
            ImageSetSpec::List { list, root } => std::sync::Arc::new(super::list::open_image_list(
                &base.join(list),
                &base.join(root),
                classes,
            )?),
        })
    }
}

/// One image of a set with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Position in the set's order (0-based).
    pub index: u64,
    /// Path relative to the set root, `/`-separated (for tar shards: the member name).
    pub path: String,
    /// Class index (position of the class name in [`ImageSet::classes`]).
    pub label: i32,
    /// The encoded image.
    pub bytes: Vec<u8>,
}

/// An indexed set of labelled images, readable by index from any thread.
pub trait ImageSet: Send + Sync {
    /// Where the set lives (root folder or first shard), for messages.
    fn location(&self) -> &Path;
    /// Number of images.
    fn len(&self) -> u64;
    /// Whether the set has no image (never true for an opened set).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names; label `i` is `classes()[i]`.
    fn classes(&self) -> &[String];
    /// Path of image `index` relative to the set root. Panics when `index >= len()`.
    fn path(&self, index: u64) -> &str;
    /// Label of image `index`. Panics when `index >= len()`.
    fn label(&self, index: u64) -> i32;
    /// The full path of image `index`, as used in error messages.
    fn full_path(&self, index: u64) -> PathBuf;
    /// Reads the bytes of image `index`. Panics when `index >= len()`.
    fn read(&self, index: u64) -> Result<Vec<u8>, ImageError>;
    /// Image `index` with its bytes.
    fn sample(&self, index: u64) -> Result<Sample, ImageError> {
        Ok(Sample {
            index,
            path: self.path(index).to_owned(),
            label: self.label(index),
            bytes: self.read(index)?,
        })
    }
}

fn utf8_name(path: &Path, name: std::ffi::OsString) -> Result<String, DataError> {
    name.into_string()
        .map_err(|n| DataError::NonUtf8Path { path: path.join(n) })
}

/// A torchvision `ImageFolder` tree: `root/<class>/**/<file>`.
///
/// Classes are the sub-folders of `root` in sorted (byte-wise = code point) order, labelled
/// `0..`; within a class, folders are walked recursively (following links), sorted by path
/// and files sorted by name within each folder, keeping files whose name ends with one of
/// [`IMG_EXTENSIONS`] — the order of `torchvision.datasets.ImageFolder`.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    paths: Vec<String>,
    labels: Vec<i32>,
}

impl ImageFolder {
    /// Indexes the tree under `root`. Errors name the path: a missing or unreadable root,
    /// no class folder, a class folder without images (as torchvision), or a non-UTF-8 name.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref().to_owned();
        let open_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DataError::Open { path, source }
        };
        let mut classes = Vec::new();
        for entry in std::fs::read_dir(&root).map_err(open_err(&root))? {
            let entry = entry.map_err(open_err(&root))?;
            // `is_dir` through `metadata` follows symlinks, as `os.scandir().is_dir()` does.
            if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                classes.push(utf8_name(&root, entry.file_name())?);
            }
        }
        if classes.is_empty() {
            return Err(DataError::Empty {
                path: root,
                what: "no class folder (expected root/<class>/<image>)".into(),
            });
        }
        classes.sort();
        let mut paths = Vec::new();
        let mut labels = Vec::new();
        let mut empty = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let before = paths.len();
            let mut dirs = vec![class.clone()];
            let mut walked = Vec::new();
            // os.walk visits every folder; `sorted(os.walk(...))` orders them by path.
            while let Some(rel) = dirs.pop() {
                let dir = root.join(&rel);
                let mut files = Vec::new();
                for entry in std::fs::read_dir(&dir).map_err(open_err(&dir))? {
                    let entry = entry.map_err(open_err(&dir))?;
                    let name = utf8_name(&dir, entry.file_name())?;
                    if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                        dirs.push(format!("{rel}/{name}"));
                    } else if has_image_extension(&name) {
                        files.push(name);
                    }
                }
                files.sort();
                walked.push((rel, files));
            }
            walked.sort_by(|a, b| a.0.cmp(&b.0));
            for (rel, files) in walked {
                for f in files {
                    paths.push(format!("{rel}/{f}"));
                    labels.push(label as i32);
                }
            }
            if paths.len() == before {
                empty.push(class.clone());
            }
        }
        if !empty.is_empty() {
            return Err(DataError::Empty {
                path: root,
                what: format!(
                    "no image file (extensions {IMG_EXTENSIONS:?}) in class folder(s) {empty:?}"
                ),
            });
        }
        Ok(Self {
            root,
            classes,
            paths,
            labels,
        })
    }

    /// A set of files listed explicitly (paths relative to `root`, one label each) instead
    /// of walked from class folders: an index file, a fixture's row list. An error when
    /// the lists differ in length.
    pub fn from_files(
        root: impl AsRef<Path>,
        classes: Vec<String>,
        paths: Vec<String>,
        labels: Vec<i32>,
    ) -> Result<Self, DataError> {
        if paths.len() != labels.len() {
            return Err(DataError::InvalidConfig {
                field: "labels",
                reason: format!("{} labels for {} paths", labels.len(), paths.len()),
            });
        }
        Ok(Self {
            root: root.as_ref().to_owned(),
            classes,
            paths,
            labels,
        })
    }

    /// The set's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl ImageSet for ImageFolder {
    fn location(&self) -> &Path {
        &self.root
    }
    fn len(&self) -> u64 {
        self.paths.len() as u64
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn path(&self, index: u64) -> &str {
        &self.paths[index as usize]
    }
    fn label(&self, index: u64) -> i32 {
        self.labels[index as usize]
    }
    fn full_path(&self, index: u64) -> PathBuf {
        self.root.join(self.path(index))
    }
    fn read(&self, index: u64) -> Result<Vec<u8>, ImageError> {
        let path = self.full_path(index);
        std::fs::read(&path).map_err(|source| ImageError::Read { path, source })
    }
}

/// Where one tar member's bytes are.
#[derive(Debug, Clone)]
struct Member {
    shard: usize,
    name: String,
    offset: u64,
    size: u64,
    label: i32,
}

/// Plain (uncompressed) tar shards of `<class>/<file>` members, read in member order
/// (shards in the order given).
///
/// Regular-file members whose name ends with one of [`IMG_EXTENSIONS`] are the images;
/// folders and other members are ignored. The class of a member is the first component of
/// its name; labels index the sorted union of the classes of all shards, or given names.
#[derive(Debug)]
pub struct TarShards {
    shards: Vec<(PathBuf, File)>,
    classes: Vec<String>,
    members: Vec<Member>,
}

impl TarShards {
    /// Indexes `paths` (headers only); classes are the sorted union of the members' class
    /// folders.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self, DataError> {
        Self::open_inner(paths, None)
    }

    /// Indexes `paths` with a fixed class list (label = position in `classes`); a member of
    /// another class is an error.
    pub fn open_with_classes<P: AsRef<Path>>(
        paths: &[P],
        classes: &[String],
    ) -> Result<Self, DataError> {
        Self::open_inner(paths, Some(classes))
    }

    fn open_inner<P: AsRef<Path>>(
        paths: &[P],
        classes: Option<&[String]>,
    ) -> Result<Self, DataError> {
        let Some(first) = paths.first() else {
            return Err(DataError::Empty {
                path: PathBuf::new(),
                what: "no tar shard given".into(),
            });
        };
        let mut shards = Vec::with_capacity(paths.len());
        // (shard, name, class, offset, size)
        let mut raw: Vec<(usize, String, String, u64, u64)> = Vec::new();
        for (shard_idx, path) in paths.iter().enumerate() {
            let path = path.as_ref().to_owned();
            let tar_err = |what: String| DataError::Tar {
                path: path.clone(),
                what,
            };
            let file = File::open(&path).map_err(|source| DataError::Open {
                path: path.clone(),
                source,
            })?;
            let mut archive = tar::Archive::new(&file);
            let entries = archive
                .entries_with_seek()
                .map_err(|e| tar_err(e.to_string()))?;
            for entry in entries {
                let entry = entry.map_err(|e| tar_err(format!("bad header: {e}")))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name_bytes = entry.path_bytes();
                let name = std::str::from_utf8(&name_bytes)
                    .map_err(|_| DataError::NonUtf8Path {
                        path: path.join(String::from_utf8_lossy(&name_bytes).as_ref()),
                    })?
                    .trim_start_matches("./")
                    .to_owned();
                if !has_image_extension(&name) {
                    continue;
                }
                let Some((class, _)) = name.split_once('/') else {
                    return Err(tar_err(format!("member {name:?} is not <class>/<file>")));
                };
                let class = class.to_owned();
                raw.push((
                    shard_idx,
                    name,
                    class,
                    entry.raw_file_position(),
                    entry.size(),
                ));
            }
            shards.push((path, file));
        }
        if raw.is_empty() {
            return Err(DataError::Empty {
                path: first.as_ref().to_owned(),
                what: format!("no image member in {} shard(s)", paths.len()),
            });
        }
        let classes: Vec<String> = match classes {
            Some(c) => c.to_vec(),
            None => {
                let mut c: Vec<String> = raw.iter().map(|r| r.2.clone()).collect();
                c.sort();
                c.dedup();
                c
            }
        };
        let members = raw
            .into_iter()
            .map(|(shard, name, class, offset, size)| {
                let label = classes.iter().position(|c| *c == class).ok_or_else(|| {
                    DataError::UnknownClass {
                        path: shards[shard].0.clone(),
                        member: name.clone(),
                        class: class.clone(),
                    }
                })? as i32;
                Ok(Member {
                    shard,
                    name,
                    offset,
                    size,
                    label,
                })
            })
            .collect::<Result<Vec<_>, DataError>>()?;
        Ok(Self {
            shards,
            classes,
            members,
        })
    }

    /// The shard paths, in reading order.
    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|(p, _)| p.as_path())
    }
}

impl ImageSet for TarShards {
    fn location(&self) -> &Path {
        &self.shards[0].0
    }
    fn len(&self) -> u64 {
        self.members.len() as u64
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn path(&self, index: u64) -> &str {
        &self.members[index as usize].name
    }
    fn label(&self, index: u64) -> i32 {
        self.members[index as usize].label
    }
    fn full_path(&self, index: u64) -> PathBuf {
        let m = &self.members[index as usize];
        self.shards[m.shard].0.join(&m.name)
    }
    fn read(&self, index: u64) -> Result<Vec<u8>, ImageError> {
        let m = &self.members[index as usize];
        let mut buf = vec![0u8; m.size as usize];
        self.shards[m.shard]
            .1
            .read_exact_at(&mut buf, m.offset)
            .map_err(|source| ImageError::Read {
                path: self.full_path(index),
                source,
            })?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_spec_reads_the_config_forms() {
        #[derive(serde::Deserialize)]
        struct Data {
            a: ImageSetSpec,
            b: ImageSetSpec,
        }
        // The TOML config's `{ folder = "x/y" }` is this JSON object.
        let d: Data =
            serde_json::from_str(r#"{"a": {"folder": "x/y"}, "b": {"tar": ["0.tar", "1.tar"]}}"#)
                .unwrap();
        assert_eq!(d.a, ImageSetSpec::Folder("x/y".into()));
        assert_eq!(d.b, ImageSetSpec::Tar(vec!["0.tar".into(), "1.tar".into()]));
        let err = ImageSetSpec::Folder("missing".into())
            .open(Path::new("/nonexistent-base"), None)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent-base/missing"),
            "{err}"
        );
    }

    #[test]
    fn extensions_match_torchvision_case_insensitively() {
        assert!(has_image_extension("a/test_1.JPEG"));
        assert!(has_image_extension("x.Png"));
        assert!(has_image_extension("x.webp"));
        assert!(!has_image_extension("index.csv"));
        assert!(!has_image_extension("jpg"));
        assert!(!has_image_extension("x.gif"));
    }

    #[test]
    fn image_folder_walks_sorted_and_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in [
            "b/10.jpg",
            "b/2.jpg",
            "b/1.jpg",
            "b/sub/0.png",
            "b/notes.txt",
            "a/z.jpeg",
            "a/A.JPG",
            "a/sub2/x.png",
            "a/sub/deep/y.png",
            "a/sub/x.png",
        ] {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let set = ImageFolder::open(root).unwrap();
        assert_eq!(set.classes(), &["a".to_string(), "b".to_string()]);
        let paths: Vec<&str> = (0..set.len()).map(|i| set.path(i)).collect();
        assert_eq!(
            paths,
            vec![
                "a/A.JPG",
                "a/z.jpeg",
                "a/sub/x.png",
                "a/sub/deep/y.png",
                "a/sub2/x.png",
                "b/1.jpg",
                "b/10.jpg",
                "b/2.jpg",
                "b/sub/0.png",
            ]
        );
        let labels: Vec<i32> = (0..set.len()).map(|i| set.label(i)).collect();
        assert_eq!(labels, vec![0, 0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(set.read(6).unwrap(), b"x");
    }

    #[test]
    fn image_folder_rejects_missing_root_and_empty_class() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = ImageFolder::open(&missing).unwrap_err();
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
        let err = ImageFolder::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no class folder"), "{err}");
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/readme.txt"), b"x").unwrap();
        let err = ImageFolder::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("[\"c\"]"), "{err}");
    }

    fn write_tar(path: &Path, members: &[(&str, &[u8])]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn tar_shards_keep_member_order_and_label_by_sorted_union() {
        let dir = tempfile::tempdir().unwrap();
        let (s0, s1) = (dir.path().join("s0.tar"), dir.path().join("s1.tar"));
        write_tar(
            &s0,
            &[
                ("zebra/1.jpg", b"z1"),
                ("ant/0.jpg", b"a0"),
                ("ant/x.txt", b"t"),
            ],
        );
        write_tar(&s1, &[("bee/0.png", b"b0bytes")]);
        let set = TarShards::open(&[&s0, &s1]).unwrap();
        assert_eq!(set.classes(), &["ant", "bee", "zebra"].map(String::from));
        assert_eq!(set.len(), 3);
        let s: Vec<Sample> = (0..3).map(|i| set.sample(i).unwrap()).collect();
        assert_eq!(
            s.iter()
                .map(|s| (s.path.as_str(), s.label, s.bytes.as_slice()))
                .collect::<Vec<_>>(),
            vec![
                ("zebra/1.jpg", 2, &b"z1"[..]),
                ("ant/0.jpg", 0, &b"a0"[..]),
                ("bee/0.png", 1, &b"b0bytes"[..]),
            ]
        );
        assert!(set.full_path(2).ends_with("s1.tar/bee/0.png"));
        let err = TarShards::open_with_classes(&[&s0], &["ant".to_string()]).unwrap_err();
        assert!(err.to_string().contains("zebra/1.jpg"), "{err}");
        let flat = dir.path().join("flat.tar");
        write_tar(&flat, &[("0.jpg", b"x")]);
        let err = TarShards::open(&[&flat]).unwrap_err();
        assert!(err.to_string().contains("flat.tar"), "{err}");
    }
}
