//! prep-data: normalise raw feedback data (HH-RLHF, SHP, TL;DR, UltraFeedback, thumbs,
//! rankings, generic) into prompts, preferences, ratings and sft Parquet files with a
//! rejects file; label scored rollouts into oracle preference pairs; generate the embedded
//! synthetic task. Does not link libtorch.
//!
//! The binary (main.rs) parses the command line and calls each subcommand's `run`; the
//! row parsers of [`formats`] and the readers of [`input`] are public so that tests can
//! drive them directly.

pub mod convert;
pub mod error;
pub mod formats;
pub mod input;
pub mod output;
pub mod pairs;
pub mod reject;
pub mod render;
pub mod split;
pub mod synthetic_cmd;
