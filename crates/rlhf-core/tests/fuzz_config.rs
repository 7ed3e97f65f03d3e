//! Fuzz (proptest) of `--config FILE.toml` (`config::parse_from`): a stage's command line
//! with a config file holding arbitrary text, or TOML assembled from the stage's flag
//! names, other keys, tables of this and other stages, and values of every TOML type.
//! Parsing gives settings or a clap error (a usage error, exit code 2), never a panic.
//! `RLHF_FUZZ_CASES` sets the cases per property (default 256; `make fuzz` runs 20,000).

mod fuzz_common;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fuzz_common::config;
use proptest::prelude::*;
use rlhf_core::cli::GlobalArgs;
use rlhf_core::config::parse_from;

/// A stage with flags of every kind the stages use, and a subcommand.
#[derive(Debug, Parser)]
#[command(name = "stage")]
struct Stage {
    #[command(flatten)]
    global: GlobalArgs,
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    lora_rank: i64,
    #[arg(long, value_delimiter = ',', alias = "target-modules")]
    lora_targets: Vec<String>,
    #[arg(long)]
    full: bool,
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    lr_schedule: Schedule,
    #[arg(long)]
    rule: Vec<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Schedule {
    Constant,
    Cosine,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// A subcommand with its own flag.
    Pairs {
        #[arg(long, default_value_t = 0.0)]
        tie_threshold: f64,
    },
}

const KEYS: &[&str] = &[
    "model",
    "lora-rank",
    "lora_rank",
    "lora-targets",
    "target-modules",
    "full",
    "learning-rate",
    "lr-schedule",
    "rule",
    "seed",
    "threads",
    "verbose",
    "quiet",
    "tie-threshold",
    "config",
    "help",
    "lora-rnk",
    "",
    "a.b",
];

const TABLES: &[&str] = &[
    "stage",
    "stage.pairs",
    "other",
    "stage.other",
    "",
    "stage.pairs.deeper",
];

fn value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("inf".to_string()),
        Just("nan".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        fuzz_common::text(&["q_proj", "cosine", ",", "--full", "="]).prop_map(|s| format!("{s:?}")),
        Just("'''multi\nline'''".to_string()),
    ];
    scalar.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..3).prop_map(|kv| {
                let items: Vec<String> = kv.iter().map(|(k, v)| format!("{k:?} = {v}")).collect();
                format!("{{ {} }}", items.join(", "))
            }),
        ]
    })
}

/// A TOML document: key = value lines under random table headers.
fn toml_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k:?} = {v}")),
        1 => prop::sample::select(TABLES).prop_map(|t| format!("[{t}]")),
        1 => prop::sample::select(TABLES).prop_map(|t| format!("[[{t}]]")),
        1 => fuzz_common::text(&["=", "[", "]", "\"", "#", "\n"]),
    ];
    prop::collection::vec(line, 0..10).prop_map(|lines| lines.join("\n"))
}

fn command_line() -> impl Strategy<Value = Vec<String>> {
    let arg = prop_oneof![
        Just("--full".to_string()),
        Just("--lora-rank=4".to_string()),
        Just("pairs".to_string()),
        Just("--config-section".to_string()),
        Just("other".to_string()),
        Just("--".to_string()),
        any::<String>(),
    ];
    prop::collection::vec(arg, 0..3)
}

fn parse(text: &str, args: &[String]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.toml");
    std::fs::write(&file, text).unwrap();
    let mut full = vec![
        "stage".to_string(),
        "--config".into(),
        file.display().to_string(),
    ];
    full.extend(args.iter().cloned());
    if let Err(e) = parse_from::<Stage, _, _>("stage", &full) {
        // Rendering the message must not panic either.
        prop_assert!(!e.to_string().is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn assembled_toml_gives_settings_or_a_usage_error(text in toml_text(), args in command_line()) {
        parse(&text, &args)?;
    }

    #[test]
    fn arbitrary_text_gives_settings_or_a_usage_error(text in any::<String>(), args in command_line()) {
        parse(&text, &args)?;
    }
}

#[test]
fn deeply_nested_values_are_an_error_not_a_stack_overflow() {
    for text in [
        format!("rule = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!(
            "rule = {}1{}",
            "{ a = ".repeat(100_000),
            " }".repeat(100_000)
        ),
        format!("{} = 1", "a.".repeat(100_000) + "b"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(&file, &text).unwrap();
        let args = ["stage", "--config", file.to_str().unwrap()];
        assert!(parse_from::<Stage, _, _>("stage", args).is_err());
    }
}
