//! Outputs never overwrite inputs: before any work, each stage checks that no output path
//! equals, lies inside, or contains one of its input paths (after resolving `.`, `..` and
//! symbolic links), and refuses with a usage error (exit 2) naming both flags.

use std::path::{Component, Path, PathBuf};

use crate::error::{CoreError, Result};

/// A glob input split into its folder (before the first pattern character) and the
/// pattern below it; None for a plain path.
fn split_glob(path: &Path) -> Option<(PathBuf, String)> {
    let text = path.to_string_lossy();
    let i = text.find(['*', '?', '['])?;
    let cut = text[..i].rfind('/').map(|j| j + 1).unwrap_or(0);
    Some((PathBuf::from(&text[..cut]), text[cut..].to_string()))
}

/// `path` made absolute and normalised: `.` and `..` resolved, and symbolic links resolved
/// in the longest prefix that exists (the rest does not exist yet, so it holds no link).
pub fn resolved(path: &Path) -> PathBuf {
    let path = path.to_path_buf();
    let absolute = if path.is_absolute() {
        path
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut normal = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    let mut existing = normal.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return normal,
        }
    }
}

/// Refuses (usage error) when an output equals, lies inside or contains an input.
/// Each entry is (flag, path), e.g. `("--out", out)`, `("--model", model)`.
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    for (out_flag, out) in outputs {
        let o = resolved(out);
        for (in_flag, input) in inputs {
            if let Some((base, pattern)) = split_glob(input) {
                let base = resolved(&base);
                let full = format!("{}/{pattern}", base.display());
                let matches = glob::Pattern::new(&full)
                    .is_ok_and(|p| o.ancestors().any(|a| p.matches_path(a)));
                if matches || base.starts_with(&o) {
                    return Err(overlap(
                        out_flag,
                        out,
                        "matches or contains",
                        in_flag,
                        input,
                    ));
                }
                continue;
            }
            let i = resolved(input);
            let relation = if o == i {
                "is the same path as"
            } else if o.starts_with(&i) {
                "lies inside"
            } else if i.starts_with(&o) {
                "contains"
            } else {
                continue;
            };
            return Err(overlap(out_flag, out, relation, in_flag, input));
        }
    }
    Ok(())
}

fn overlap(out_flag: &str, out: &Path, relation: &str, in_flag: &str, input: &Path) -> CoreError {
    CoreError::Usage(format!(
        "{out_flag} {} {relation} {in_flag} {}: an output must never overwrite an input\n  \
         hint: choose an {out_flag} outside every input",
        out.display(),
        input.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_inside_and_above_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let check = |out: PathBuf| check_outputs(&[("--out", &out)], &[("--model", &model)]);
        let e = check(model.clone()).unwrap_err().to_string();
        assert!(
            e.contains("--out") && e.contains("same path") && e.contains("--model"),
            "{e}"
        );
        assert!(check(model.join("adapter"))
            .unwrap_err()
            .to_string()
            .contains("lies inside"));
        assert!(check(d.path().to_path_buf())
            .unwrap_err()
            .to_string()
            .contains("contains"));
        assert!(check(model.join("../model/./")).is_err());
        check(d.path().join("model-2")).unwrap();
        check(d.path().join("out/new")).unwrap();
    }

    #[test]
    fn links_and_globs_are_followed() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("r.parquet"), b"").unwrap();
        #[cfg(unix)]
        {
            let link = d.path().join("link");
            std::os::unix::fs::symlink(&data, &link).unwrap();
            let out = link.join("r.parquet");
            let input = data.join("r.parquet");
            assert!(check_outputs(&[("--out", &out)], &[("--rollouts", &input)]).is_err());
        }
        let glob = data.join("part-*.parquet");
        let beside = data.join("scores.parquet");
        check_outputs(&[("--out", &beside)], &[("--rollouts", &glob)]).unwrap();
        let matching = data.join("part-7.parquet");
        assert!(check_outputs(&[("--out", &matching)], &[("--rollouts", &glob)]).is_err());
        assert!(check_outputs(&[("--out", d.path())], &[("--rollouts", &glob)]).is_err());
    }
}
