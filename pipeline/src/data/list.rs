//! Image lists in the OpenOOD / ImageNet-devkit style: one `<path> <label>` per line,
//! paths relative to a root folder.

use std::path::{Path, PathBuf};

use super::error::DataError;
use super::sets::ImageFolder;

/// One parsed line of an image list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Path relative to the list's root, as written (it may hold spaces, quotes and
    /// non-ASCII characters).
    pub path: String,
    /// The label, when the line has one.
    pub label: Option<i64>,
}

/// Parses one line: the label is the last whitespace-separated field when it is an
/// integer, and the path is everything before it (trimmed); otherwise the whole trimmed
/// line is the path. `None` for a blank line.
pub fn parse_list_line(line: &str) -> Option<ListEntry> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    if let Some((path, last)) = line.rsplit_once(char::is_whitespace)
        && let Ok(label) = last.parse::<i64>()
        && !path.trim().is_empty()
    {
        return Some(ListEntry {
            path: path.trim_end().to_owned(),
            label: Some(label),
        });
    }
    Some(ListEntry {
        path: line.to_owned(),
        label: None,
    })
}

/// Opens the image list `list` of files under `root` as a set in list order.
///
/// With `classes` (an ID set) every line needs a label in `0..classes.len()`; without (an
/// OOD set) labels are optional and every image gets label -1. Each listed file must exist.
/// Blank lines are skipped; every other problem is an error naming the list file and the
/// 1-based line number.
pub fn open_image_list(
    list: &Path,
    root: &Path,
    classes: Option<&[String]>,
) -> Result<ImageFolder, DataError> {
    let text = std::fs::read_to_string(list).map_err(|source| DataError::Open {
        path: list.to_owned(),
        source,
    })?;
    let bad = |line: usize, reason: String| DataError::ListLine {
        path: list.to_owned(),
        line,
        reason,
    };
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some(entry) = parse_list_line(line) else {
            continue;
        };
        let label = match (classes, entry.label) {
            (Some(c), Some(l)) if (0..c.len() as i64).contains(&l) => l as i32,
            (Some(c), Some(l)) => {
                return Err(bad(
                    n,
                    format!("label {l} is not in 0..{} (the model's classes)", c.len()),
                ));
            }
            (Some(_), None) => {
                return Err(bad(
                    n,
                    format!(
                        "{:?} has no label (an ID list needs `<path> <label>`)",
                        entry.path
                    ),
                ));
            }
            (None, _) => -1,
        };
        let full: PathBuf = root.join(&entry.path);
        if !full.is_file() {
            return Err(bad(n, format!("{} is not a file", full.display())));
        }
        paths.push(entry.path);
        labels.push(label);
    }
    if paths.is_empty() {
        return Err(DataError::Empty {
            path: list.to_owned(),
            what: "the image list names no image".into(),
        });
    }
    ImageFolder::from_files(
        root,
        classes.map_or_else(Vec::new, <[String]>::to_vec),
        paths,
        labels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_last_integer_field() {
        let e = |path: &str, label| ListEntry {
            path: path.into(),
            label,
        };
        assert_eq!(
            parse_list_line("val/ILSVRC2012_val_00000001.JPEG 65"),
            Some(e("val/ILSVRC2012_val_00000001.JPEG", Some(65)))
        );
        assert_eq!(
            parse_list_line("  a dir/jack-o'-lantern \"x\" é.jpg\t7 \r"),
            Some(e("a dir/jack-o'-lantern \"x\" é.jpg", Some(7)))
        );
        assert_eq!(parse_list_line("ood/a b.jpg"), Some(e("ood/a b.jpg", None)));
        assert_eq!(parse_list_line("12"), Some(e("12", None)));
        assert_eq!(parse_list_line("   "), None);
    }

    fn write(dir: &Path, rel: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn lists_open_in_order_and_bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "b/n03590841_jack-o'-lantern.JPEG");
        write(root, "a/space name é.jpg");
        let list = root.join("list.txt");
        std::fs::write(
            &list,
            "b/n03590841_jack-o'-lantern.JPEG 1\n\na/space name é.jpg 0\n",
        )
        .unwrap();
        let classes = vec!["a".to_string(), "b".to_string()];
        let set = open_image_list(&list, root, Some(&classes)).unwrap();
        use crate::data::ImageSet;
        assert_eq!(set.len(), 2);
        assert_eq!(set.path(0), "b/n03590841_jack-o'-lantern.JPEG");
        assert_eq!((set.label(0), set.label(1)), (1, 0));
        assert_eq!(set.classes(), classes.as_slice());
        assert_eq!(set.read(1).unwrap(), b"x");
        // OOD: labels ignored.
        let ood = open_image_list(&list, root, None).unwrap();
        assert_eq!(ood.label(0), -1);

        std::fs::write(&list, "a/space name é.jpg 0\nb/missing.jpg 1\n").unwrap();
        let e = open_image_list(&list, root, Some(&classes))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("image list {}:2: ", list.display())),
            "{e}"
        );
        assert!(e.contains("b/missing.jpg is not a file"), "{e}");

        std::fs::write(&list, "a/space name é.jpg 2\n").unwrap();
        let e = open_image_list(&list, root, Some(&classes))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1: label 2 is not in 0..2"), "{e}");

        std::fs::write(&list, "a/space name é.jpg\n").unwrap();
        let e = open_image_list(&list, root, Some(&classes))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1: ") && e.contains("has no label"), "{e}");
        assert_eq!(open_image_list(&list, root, None).unwrap().len(), 1);
    }
}
