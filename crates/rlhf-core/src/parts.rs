//! Part folders: a sharded stage writes `part-I-of-N.parquet` files (I = 0..N-1) into one
//! folder. A reader accepts such a folder only when it holds every part of one N, all
//! written by one run (the same producer, arguments and input contents, but for the shard
//! and the per-task flags); a writer refuses to add a part to a folder holding parts of
//! another N or another run. Either way the message names the missing or foreign parts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};
use crate::lineage::Lineage;

/// The file name of part `index` of `count`.
pub fn part_name(index: usize, count: usize) -> String {
    format!("part-{index:05}-of-{count:05}.parquet")
}

/// `(index, count)` when `path`'s file name is a part name.
pub fn parse_part_name(path: &Path) -> Option<(usize, usize)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (i, n) = rest.split_once("-of-")?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(i) || !all_digits(n) {
        return None;
    }
    let (i, n): (usize, usize) = (i.parse().ok()?, n.parse().ok()?);
    (i < n).then_some((i, n))
}

fn list(items: &[usize]) -> String {
    const SHOWN: usize = 8;
    let mut s: Vec<String> = items.iter().take(SHOWN).map(|i| i.to_string()).collect();
    if items.len() > SHOWN {
        s.push(format!("... ({} in all)", items.len()));
    }
    s.join(", ")
}

fn incomplete(spec: &Path, message: String) -> CoreError {
    CoreError::BadInput {
        path: spec.to_path_buf(),
        row: None,
        message: format!(
            "{message}\n  hint: rerun the missing shards (same flags with --shard-index I \
             --num-shards N), or remove the folder and rerun every shard"
        ),
    }
}

/// Checks that the part files among `files` form one complete set: one N, each index
/// 0..N-1 exactly once, and no other files beside them.
pub fn check_complete(spec: &Path, files: &[PathBuf]) -> Result<()> {
    let parsed: Vec<(Option<(usize, usize)>, &PathBuf)> =
        files.iter().map(|f| (parse_part_name(f), f)).collect();
    if parsed.iter().all(|(p, _)| p.is_none()) {
        return Ok(());
    }
    if let Some((_, other)) = parsed.iter().find(|(p, _)| p.is_none()) {
        return Err(incomplete(
            spec,
            format!(
                "holds part files and also {}, which is not one of them",
                other.display()
            ),
        ));
    }
    let mut by_count: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (p, _) in &parsed {
        let (i, n) = p.expect("all parsed");
        by_count.entry(n).or_default().push(i);
    }
    if by_count.len() > 1 {
        let counts: Vec<String> = by_count
            .iter()
            .map(|(n, idx)| format!("{} part(s) of {n}", idx.len()))
            .collect();
        return Err(incomplete(
            spec,
            format!(
                "mixes parts of different shard counts: {}",
                counts.join(", ")
            ),
        ));
    }
    let (&n, indices) = by_count.iter().next().expect("one count");
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for &i in indices {
        *seen.entry(i).or_default() += 1;
    }
    let twice: Vec<usize> = seen
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&i, _)| i)
        .collect();
    if !twice.is_empty() {
        return Err(incomplete(
            spec,
            format!("names part(s) {} more than once", list(&twice)),
        ));
    }
    if seen.len() < n {
        // Lists at most a few missing indices, however large N claims to be.
        let missing: Vec<usize> = (0..n).filter(|i| !seen.contains_key(i)).take(9).collect();
        return Err(incomplete(
            spec,
            format!(
                "is incomplete: {} of {n} parts present, missing part(s) {} (e.g. {})",
                seen.len(),
                list(&missing),
                part_name(missing[0], n)
            ),
        ));
    }
    Ok(())
}

/// Checks that the part files among `files` were written by one run (see
/// [`Lineage::run_key`]); `lineages[i]` belongs to `files[i]`.
pub fn check_one_run(spec: &Path, files: &[PathBuf], lineages: &[Option<Lineage>]) -> Result<()> {
    let mut first: Option<(&PathBuf, Option<String>)> = None;
    for (f, l) in files.iter().zip(lineages) {
        if parse_part_name(f).is_none() {
            continue;
        }
        let key = l.as_ref().map(Lineage::run_key);
        match &first {
            None => first = Some((f, key)),
            Some((f0, k0)) if *k0 != key => {
                let differs = match (lineages_of(files, lineages, f0), l) {
                    (Some(a), Some(b)) => a.run_difference(b),
                    _ => "one has no lineage".to_string(),
                };
                return Err(incomplete(
                    spec,
                    format!(
                        "mixes parts of different runs: {} and {} differ ({differs})",
                        file_name(f0),
                        file_name(f)
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn lineages_of<'a>(
    files: &[PathBuf],
    lineages: &'a [Option<Lineage>],
    f: &Path,
) -> Option<&'a Lineage> {
    files
        .iter()
        .position(|x| x == f)
        .and_then(|i| lineages[i].as_ref())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| p.display().to_string())
}

/// Before writing part file `target`: refuses when its folder already holds parts of
/// another shard count, or other shards' parts from another run (usage error: `--out`
/// points at a folder holding something else). The same shard's own earlier part may be
/// replaced.
pub fn check_writable_part(target: &Path, lineage: &Lineage) -> Result<()> {
    let Some((index, count)) = parse_part_name(target) else {
        return Ok(());
    };
    let Some(dir) = target.parent() else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let key = lineage.run_key();
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let Some((i, n)) = parse_part_name(&path) else {
            continue;
        };
        if n != count {
            return Err(CoreError::Usage(format!(
                "--out {} already holds {} (a run with {n} shards); this run has {count}\n  \
                 hint: remove the folder (or choose another --out) before rerunning with \
                 another shard count",
                dir.display(),
                file_name(&path)
            )));
        }
        if i == index {
            continue;
        }
        let theirs = crate::parquet_io::read_lineage(&path).ok().flatten();
        if theirs.as_ref().map(Lineage::run_key).as_ref() != Some(&key) {
            let why = theirs
                .map(|t| t.run_difference(lineage))
                .unwrap_or_else(|| "it has no readable lineage".into());
            return Err(CoreError::Usage(format!(
                "--out {} holds {} from another run ({why})\n  hint: remove the folder (or \
                 choose another --out) before rerunning with other flags or inputs",
                dir.display(),
                file_name(&path)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| {
                let p = dir.join(n);
                std::fs::write(&p, b"").unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn part_names_round_trip() {
        assert_eq!(part_name(2, 13), "part-00002-of-00013.parquet");
        assert_eq!(
            parse_part_name(Path::new("x/part-00002-of-00013.parquet")),
            Some((2, 13))
        );
        assert_eq!(
            parse_part_name(Path::new("part-00013-of-00013.parquet")),
            None
        );
        assert_eq!(parse_part_name(Path::new("rollouts.parquet")), None);
    }

    #[test]
    fn only_complete_sets_of_one_count_pass() {
        let d = tempfile::tempdir().unwrap();
        let ok = touch(d.path(), &[&part_name(0, 2), &part_name(1, 2)]);
        check_complete(d.path(), &ok).unwrap();
        let plain = touch(d.path(), &["a.parquet", "b.parquet"]);
        check_complete(d.path(), &plain).unwrap();
        let e = check_complete(d.path(), &ok[..1]).unwrap_err().to_string();
        assert!(
            e.contains("missing part(s) 1") && e.contains("part-00001-of-00002"),
            "{e}"
        );
        let mut mixed = ok.clone();
        mixed.extend(touch(d.path(), &[&part_name(0, 3)]));
        let e = check_complete(d.path(), &mixed).unwrap_err().to_string();
        assert!(e.contains("different shard counts"), "{e}");
        let mut foreign = ok.clone();
        foreign.push(plain[0].clone());
        let e = check_complete(d.path(), &foreign).unwrap_err().to_string();
        assert!(e.contains("a.parquet"), "{e}");
        let twice = vec![ok[0].clone(), ok[0].clone(), ok[1].clone()];
        assert!(check_complete(d.path(), &twice).is_err());
        let huge = touch(d.path(), &["part-00000-of-99999999999999.parquet"]);
        let e = check_complete(d.path(), &huge).unwrap_err().to_string();
        assert!(e.contains("1 of 99999999999999 parts"), "{e}");
    }
}
