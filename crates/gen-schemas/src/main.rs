//! gen-schemas: writes `schemas/<artifact>.json` from the Rust artifact definitions, or with
//! --check fails when the checked-in files differ from the code.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};
use rlhf_core::schema::Artifact;

/// Write schemas/*.json from the artifact definitions in rlhf-core, or check them.
#[derive(Debug, Parser)]
#[command(name = "gen-schemas", version, about)]
struct Cli {
    /// Folder holding the schema files.
    #[arg(long, default_value = "schemas")]
    out_dir: PathBuf,
    /// Do not write; exit 1 when a file is missing or differs from the code.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    global: GlobalArgs,
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for a in Artifact::ALL {
        let path = cli.out_dir.join(format!("{}.json", a.name()));
        let text = serde_json::to_string_pretty(&a.json_description())? + "\n";
        if cli.check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != text {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(&cli.out_dir)
                .with_context(|| format!("creating {}", cli.out_dir.display()))?;
            rlhf_core::atomic::write_file(&path, text.as_bytes())?;
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "schemas out of date with the code: {}\n  hint: run `make schemas` and commit the result",
            stale.join(", ")
        );
    }
    Ok(())
}

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("gen-schemas");
    cli.global.init();
    cli::finish(run(&cli), &[])
}
