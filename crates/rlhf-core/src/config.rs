//! `--config FILE.toml`: a stage's flags from a TOML file, so one file can hold a whole
//! run's settings and a person can read them in one place.
//!
//! The keys are the long flag names (`lora-rank = 16`, `lr-schedule = "cosine"`; `_` may
//! stand for `-`). Keys at the top of the file apply to every stage that reads it (the
//! global flags: `seed`, `threads`, ...); a table named after the stage (`[train-rm-lora]`,
//! `[prep-data.pairs]` for a subcommand) or after `--config-section NAME` holds the stage's
//! own, and tables of other stages are skipped. A flag on the command line overrides the
//! file. An unknown key is a usage error (exit 2) naming the key and the closest valid one.
//!
//! Values: a string or number is the flag's value, `true` gives a switch (`false` leaves
//! it off), an array gives a list (`lora-targets = ["q_proj", "v_proj"]`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::error::ErrorKind;
use clap::{ArgAction, Command, Parser};

/// The command line after `--config` was applied (set once by [`parse`]).
static EFFECTIVE_ARGS: OnceLock<Vec<String>> = OnceLock::new();

/// The resolved settings as TOML (set once by [`parse`]).
static RESOLVED: OnceLock<String> = OnceLock::new();

/// File the trainers write into their output folder: the run's resolved settings.
pub const RESOLVED_FILE: &str = "run_config.toml";

/// The resolved settings of this process's command line as TOML (what `--print-config`
/// prints); None when the flags were not parsed by [`parse`] (library calls, tests).
pub fn resolved() -> Option<&'static str> {
    RESOLVED.get().map(String::as_str)
}

/// Writes [`resolved`] into the output folder `dir` as `run_config.toml` (nothing when
/// there is none): `--config DIR/run_config.toml` reruns with the same settings, whatever
/// the defaults of a later version.
pub fn write_resolved(dir: &Path) -> Result<(), crate::CoreError> {
    let Some(text) = resolved() else {
        return Ok(());
    };
    let path = dir.join(RESOLVED_FILE);
    std::fs::write(&path, text).map_err(|e| crate::CoreError::io("writing", path, e))
}

/// The command line as the stage ran it, the flags from `--config` included, without the
/// program name: what the lineage of every output records. None when no config was read.
pub fn effective_args() -> Option<&'static [String]> {
    EFFECTIVE_ARGS.get().map(Vec::as_slice)
}

/// Parses the command line of `stage` with its `--config` file; on an error prints it
/// and exits as clap does (2 for usage errors, 0 for --help and --version).
pub fn parse<C: Parser>(stage: &str) -> C {
    let args: Vec<OsString> = std::env::args_os().collect();
    match resolve::<C>(stage, &args).and_then(|full| C::try_parse_from(&full).map(|c| (c, full))) {
        Ok((_, full)) if asks_to_print(&args) => match resolved_toml::<C>(stage, &full) {
            Ok(text) => {
                print!("{text}");
                crate::cli::exit_now(0)
            }
            Err(e) => clap_exit(e),
        },
        Ok((c, full)) => {
            if let Ok(text) = resolved_toml::<C>(stage, &full) {
                let _ = RESOLVED.set(text);
            }
            if flag_value(&args, "config").is_some() {
                let shown = full
                    .iter()
                    .skip(1)
                    .map(|a| a.to_string_lossy().into_owned());
                let _ = EFFECTIVE_ARGS.set(shown.collect());
            }
            c
        }
        Err(e) => clap_exit(e),
    }
}

/// Prints a clap error, help or version as `Error::exit` does, and exits by
/// [`crate::cli::exit_now`] (0 for --help and --version, 2 for usage errors).
fn clap_exit(e: clap::Error) -> ! {
    let _ = e.print();
    crate::cli::exit_now(e.exit_code().clamp(0, 255) as u8)
}

/// True when the command line holds `--print-config` (before any `--`).
fn asks_to_print(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--print-config")
}

/// Long flags that are not settings of the run: not printed by `--print-config`.
const NOT_SETTINGS: [&str; 11] = [
    "help",
    "version",
    "config",
    "config-section",
    "print-config",
    "summary-json",
    "no-progress",
    "log-format",
    "threads",
    "live-metrics",
    "tensorboard",
];

/// `--print-config`: the settings of the command line `full` (the `--config` flags already
/// in it) as TOML: every long flag of the stage with its value, defaults included, in the
/// stage's table (`[train-sft]`, `[prep-data.pairs]`); a flag without a value or default
/// is a comment. `--config` reads the text back to the same settings.
pub fn resolved_toml<C: Parser>(stage: &str, full: &[OsString]) -> Result<String, clap::Error> {
    let mut cmd = C::command();
    let top = cmd.try_get_matches_from_mut(full)?;
    cmd.build();
    let (target, matches, section) = match top.subcommand() {
        Some((name, sub)) => (
            cmd.find_subcommand(name)
                .cloned()
                .unwrap_or_else(|| cmd.clone()),
            sub,
            format!("{stage}.{name}"),
        ),
        None => (cmd.clone(), &top, stage.to_string()),
    };
    let mut out = format!(
        "# {} {}: the resolved settings (defaults included); run it with --config FILE\n[{section}]\n",
        stage,
        env!("CARGO_PKG_VERSION")
    );
    for arg in target.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => {
                let on = matches.try_get_one::<bool>(id).ok().flatten().copied();
                out.push_str(&format!("{long} = {}\n", on.unwrap_or(false)));
            }
            ArgAction::Set | ArgAction::Append => {
                let values: Option<Vec<String>> = matches
                    .try_get_raw(id)
                    .ok()
                    .flatten()
                    .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect());
                let list = arg.get_value_delimiter().is_some()
                    || matches!(arg.get_action(), ArgAction::Append);
                match values {
                    None => out.push_str(&format!("# {long} = (not set)\n")),
                    Some(v) if list => {
                        let items: Vec<String> = v.iter().map(|x| toml_value(x)).collect();
                        out.push_str(&format!("{long} = [{}]\n", items.join(", ")));
                    }
                    Some(v) => out.push_str(&format!("{long} = {}\n", toml_value(&v.join(" ")))),
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A flag's value as TOML: numbers bare, everything else a quoted string.
fn toml_value(v: &str) -> String {
    let number = !v.is_empty()
        && v.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '-')
        && v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
        && v.parse::<f64>().is_ok_and(f64::is_finite)
        && format!("x = {v}").parse::<toml::Table>().is_ok();
    if number {
        return v.to_string();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => q.push_str(&format!("\\u{:04X}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// [`parse`] on the given arguments (the first is the program name).
pub fn parse_from<C, I, T>(stage: &str, args: I) -> Result<C, clap::Error>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    C::try_parse_from(resolve::<C>(stage, &args)?)
}

/// The command line with the flags of the `--config` file inserted (unchanged without one).
fn resolve<C: Parser>(stage: &str, args: &[OsString]) -> Result<Vec<OsString>, clap::Error> {
    let Some(file) = flag_value(args, "config") else {
        return Ok(args.to_vec());
    };
    let mut cmd = C::command();
    cmd.build();
    let text = std::fs::read_to_string(&file).map_err(|e| {
        usage(
            &mut cmd,
            format!("--config {}: cannot read it: {e}", file.display()),
        )
    })?;
    let (sub, at) = subcommand_of(&cmd, args);
    let section = flag_value(args, "config-section").map(|p| p.to_string_lossy().into_owned());
    let (target, default_section, label) = match &sub {
        Some(name) => (
            cmd.find_subcommand(name)
                .cloned()
                .unwrap_or_else(|| cmd.clone()),
            vec![stage.to_string(), name.clone()],
            format!("{stage} {name}"),
        ),
        None => (cmd.clone(), vec![stage.to_string()], stage.to_string()),
    };
    let path: Vec<String> = match section {
        Some(s) => s.split('.').map(str::to_string).collect(),
        None => default_section,
    };
    let flags = flags_from_toml(&target, &label, &file, &text, &path, args)
        .map_err(|m| usage(&mut cmd, m))?;
    let mut full: Vec<OsString> = args[..at].to_vec();
    full.extend(flags.into_iter().map(OsString::from));
    full.extend(args[at..].iter().cloned());
    Ok(full)
}

fn usage(cmd: &mut Command, message: String) -> clap::Error {
    cmd.error(ErrorKind::ValueValidation, message)
}

/// The value of `--NAME VALUE` or `--NAME=VALUE` on the command line (the last one).
fn flag_value(args: &[OsString], name: &str) -> Option<PathBuf> {
    let long = format!("--{name}");
    let prefix = format!("--{name}=");
    let mut found = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == long {
            found = it.next().map(PathBuf::from);
        } else if let Some(v) = s.strip_prefix(&prefix) {
            found = Some(PathBuf::from(v));
        }
    }
    found
}

/// The subcommand named on the command line, and where the injected flags go: after it,
/// or right after the program name when the command has none.
fn subcommand_of(cmd: &Command, args: &[OsString]) -> (Option<String>, usize) {
    if cmd.get_subcommands().next().is_none() {
        return (None, 1.min(args.len()));
    }
    for (i, a) in args.iter().enumerate().skip(1) {
        let s = a.to_string_lossy();
        if cmd.find_subcommand(s.as_ref()).is_some() {
            return (Some(s.into_owned()), i + 1);
        }
    }
    (None, 1.min(args.len()))
}

/// A name a long flag answers to (its own or an alias).
struct Known {
    name: String,
    /// The flag's own long name.
    long: String,
    action: ArgAction,
    delim: Option<char>,
}

/// Every name of `cmd`'s long flags, aliases included.
fn known_flags(cmd: &Command) -> Vec<Known> {
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let names = std::iter::once(long).chain(arg.get_all_aliases().unwrap_or_default());
        for name in names {
            out.push(Known {
                name: name.to_string(),
                long: long.to_string(),
                action: arg.get_action().clone(),
                delim: arg.get_value_delimiter(),
            });
        }
    }
    out
}

/// Long flags given on the command line, as canonical names.
fn given_on_command_line(args: &[OsString], known: &[Known]) -> Vec<String> {
    let mut given = Vec::new();
    for a in args.iter().skip(1) {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        let Some(name) = s.strip_prefix("--") else {
            continue;
        };
        let name = name.split('=').next().unwrap_or(name);
        if let Some(k) = known.iter().find(|k| k.name == name) {
            given.push(k.long.clone());
        }
    }
    given
}

/// The flags the file gives for the section `path` of `cmd`, minus those on the command
/// line. Errors are messages for a usage error.
fn flags_from_toml(
    cmd: &Command,
    label: &str,
    file: &Path,
    text: &str,
    path: &[String],
    args: &[OsString],
) -> Result<Vec<String>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {}: not valid TOML: {e}", file.display()))?;
    let known = known_flags(cmd);
    let given = given_on_command_line(args, &known);
    // the top level, then each table of the section's path ([prep-data], then
    // [prep-data.pairs]): a deeper key overrides a shallower one; other tables are skipped
    let mut entries: Vec<(String, toml::Value, String)> = Vec::new();
    let mut level: Option<&toml::Table> = Some(&table);
    let mut origin = "the top level".to_string();
    for depth in 0..=path.len() {
        let Some(t) = level else { break };
        for (k, v) in t {
            if v.is_table() {
                if depth == path.len() && depth > 0 {
                    return Err(format!(
                        "--config {}: {origin} `{k}` is a table; flags take strings, numbers, booleans or arrays",
                        file.display()
                    ));
                }
                continue;
            }
            entries.retain(|e| normal(&e.0) != normal(k));
            entries.push((k.clone(), v.clone(), origin.clone()));
        }
        if depth < path.len() {
            level = t.get(&path[depth]).and_then(|v| v.as_table());
            origin = format!("[{}]", path[..=depth].join("."));
        }
    }
    let mut flags = Vec::new();
    for (key, value, origin) in entries {
        let name = normal(&key);
        if ["config", "config-section", "help", "version"].contains(&name.as_str()) {
            return Err(format!(
                "--config {}: `{key}` ({origin}) cannot be set in a config file",
                file.display()
            ));
        }
        let Some(Known {
            long,
            action,
            delim,
            ..
        }) = known.iter().find(|k| k.name == name)
        else {
            let names: Vec<&str> = known.iter().map(|k| k.name.as_str()).collect();
            let hint = closest(&name, &names)
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(format!(
                "--config {}: unknown key `{key}` ({origin}) for {label}{hint}",
                file.display(),
            ));
        };
        if given.contains(long) {
            continue;
        }
        let bad = |what: &str| format!("--config {}: `{key}` ({origin}) {what}", file.display());
        match (&value, action) {
            (toml::Value::Boolean(b), ArgAction::SetTrue) => {
                if *b {
                    flags.push(format!("--{long}"));
                }
            }
            (toml::Value::Boolean(b), ArgAction::SetFalse) => {
                if !*b {
                    flags.push(format!("--{long}"));
                }
            }
            (_, ArgAction::SetTrue | ArgAction::SetFalse) => {
                return Err(bad("is a switch: give true or false"));
            }
            (toml::Value::Integer(n), ArgAction::Count) => {
                for _ in 0..(*n).clamp(0, 8) {
                    flags.push(format!("--{long}"));
                }
            }
            (toml::Value::Array(items), _) => {
                let items: Vec<String> = items
                    .iter()
                    .map(scalar)
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("holds a value that is not a string, number or boolean"))?;
                match delim {
                    Some(d) => flags.push(format!("--{long}={}", items.join(&d.to_string()))),
                    None => flags.extend(items.iter().map(|v| format!("--{long}={v}"))),
                }
            }
            (v, _) => {
                let v =
                    scalar(v).ok_or_else(|| bad("is not a string, number, boolean or array"))?;
                flags.push(format!("--{long}={v}"));
            }
        }
    }
    Ok(flags)
}

/// A key as a long flag name: `lora_rank` and `lora-rank` are the same key.
fn normal(key: &str) -> String {
    key.trim().replace('_', "-")
}

/// A TOML scalar as command-line text.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        _ => None,
    }
}

/// The name closest to `key` by edit distance, when it is close enough to be a typo.
fn closest<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (edit_distance(key, n), *n))
        .filter(|(d, n)| *d <= (n.len() / 3).max(2))
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::GlobalArgs;
    use clap::{Parser, Subcommand};

    #[derive(Debug, Parser)]
    #[command(name = "stage")]
    struct Stage {
        #[command(flatten)]
        global: GlobalArgs,
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 8)]
        lora_rank: i64,
        #[arg(long, value_delimiter = ',', alias = "target-modules")]
        lora_targets: Vec<String>,
        #[arg(long)]
        full: bool,
        #[arg(long, default_value_t = 1e-4)]
        learning_rate: f64,
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("run.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn parse(stage: &str, args: &[&str]) -> Result<Stage, clap::Error> {
        parse_from::<Stage, _, _>(stage, std::iter::once("stage").chain(args.iter().copied()))
    }

    #[test]
    fn the_file_supplies_flags_and_the_command_line_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "seed = 7\nmodel = \"m\"\n\n[stage]\nlora_rank = 16\nlora-targets = [\"q_proj\", \"v_proj\"]\nfull = true\nlearning-rate = 3e-3\n\n[other-stage]\nbogus = 1\n",
        );
        let c = parse("stage", &["--config", f.to_str().unwrap()]).unwrap();
        assert_eq!(c.global.seed, 7);
        assert_eq!(c.model, PathBuf::from("m"));
        assert_eq!(c.lora_rank, 16);
        assert_eq!(c.lora_targets, ["q_proj", "v_proj"]);
        assert!(c.full);
        assert_eq!(c.learning_rate, 3e-3);
        // the command line wins, whatever the spelling (alias, --flag=value)
        let c = parse(
            "stage",
            &[
                "--lora-rank=4",
                "--config",
                f.to_str().unwrap(),
                "--target-modules",
                "o_proj",
                "--seed",
                "1",
            ],
        )
        .unwrap();
        assert_eq!((c.lora_rank, c.global.seed), (4, 1));
        assert_eq!(c.lora_targets, ["o_proj"]);
        // another section
        let other = write(
            dir.path(),
            "[a]\nlora-rank = 2\nmodel = \"x\"\n[b]\nlora-rank = 3\nmodel = \"y\"\n",
        );
        let c = parse(
            "stage",
            &["--config", other.to_str().unwrap(), "--config-section", "b"],
        )
        .unwrap();
        assert_eq!((c.lora_rank, c.model), (3, PathBuf::from("y")));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_usage_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            (
                "model = \"m\"\n[stage]\nlora-rnak = 4\n",
                "did you mean `lora-rank`",
            ),
            (
                "model = \"m\"\n[stage]\nfull = 1\n",
                "`full` ([stage]) is a switch",
            ),
            ("model = \"m\"\n[stage]\nlora-rank = \"four\"\n", "four"),
            (
                "model = \"m\"\n[stage]\nconfig = \"x.toml\"\n",
                "cannot be set",
            ),
            ("model = \n", "not valid TOML"),
        ] {
            let f = write(dir.path(), text);
            let err = parse("stage", &["--config", f.to_str().unwrap()]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{text}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        let err = parse("stage", &["--config", "/nonexistent/run.toml"]).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[derive(Debug, Parser)]
    #[command(name = "tool")]
    struct Tool {
        #[command(flatten)]
        global: GlobalArgs,
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(Debug, Subcommand)]
    enum Sub {
        Pairs {
            #[arg(long, default_value_t = 0.0)]
            label_noise: f64,
        },
        Synthetic {
            #[arg(long, default_value_t = 1)]
            num_prompts: u64,
        },
    }

    #[test]
    fn a_subcommand_reads_its_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "seed = 3\n[tool.pairs]\nlabel-noise = 0.25\n[tool.synthetic]\nnum-prompts = 9\n",
        );
        let t =
            parse_from::<Tool, _, _>("tool", ["tool", "--config", f.to_str().unwrap(), "pairs"])
                .unwrap();
        assert_eq!(t.global.seed, 3);
        assert!(matches!(t.cmd, Sub::Pairs { label_noise } if label_noise == 0.25));
        let t = parse_from::<Tool, _, _>(
            "tool",
            ["tool", "synthetic", "--config", f.to_str().unwrap()],
        )
        .unwrap();
        assert!(matches!(t.cmd, Sub::Synthetic { num_prompts: 9 }));
    }

    #[test]
    fn printed_settings_read_back_to_the_same_settings() {
        let args = [
            "stage",
            "--model",
            "m \"x\"",
            "--lora-targets",
            "q_proj,v_proj",
            "--learning-rate",
            "3e-4",
            "--seed",
            "5",
            "--full",
        ];
        let full: Vec<OsString> = args.iter().map(OsString::from).collect();
        let text = resolved_toml::<Stage>("stage", &full).unwrap();
        assert!(text.contains("[stage]\n"), "{text}");
        assert!(
            text.contains("lora-rank = 8\n"),
            "defaults are printed: {text}"
        );
        assert!(
            text.contains("lora-targets = [\"q_proj\", \"v_proj\"]"),
            "{text}"
        );
        assert!(
            !text.contains("print-config") && !text.contains("summary-json"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), &text);
        let back = parse("stage", &["--config", f.to_str().unwrap()]).unwrap();
        let first = parse("stage", &args[1..]).unwrap();
        assert_eq!(
            format!("{back:?}").replace(&format!("{:?}", Some(&f)), "None"),
            format!("{first:?}")
        );
        let sub: Vec<OsString> = ["tool", "pairs", "--label-noise", "0.5"]
            .iter()
            .map(OsString::from)
            .collect();
        let text = resolved_toml::<Tool>("tool", &sub).unwrap();
        assert!(text.contains("[tool.pairs]\nlabel-noise = 0.5\n"), "{text}");
    }

    #[test]
    fn values_are_quoted_unless_they_are_toml_numbers() {
        assert_eq!(toml_value("8"), "8");
        assert_eq!(toml_value("-0.5"), "-0.5");
        assert_eq!(toml_value("3e-4"), "3e-4");
        assert_eq!(toml_value("007"), "\"007\"");
        assert_eq!(toml_value("cpu"), "\"cpu\"");
        assert_eq!(toml_value("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(toml_value(""), "\"\"");
    }
}
