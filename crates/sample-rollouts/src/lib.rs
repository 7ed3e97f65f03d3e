//! sample-rollouts: sample K responses per prompt from the base model plus an optional
//! policy adapter and write the rollouts artifact, with per-token sampling and reference
//! log-probabilities (adapter off, or --ref-model), deterministic per seed whatever the batch size and sharding.

pub mod eos;
pub mod output;
pub mod prompts;
pub mod reference;
pub mod run;
pub mod sampler;
pub mod seeding;
pub mod settings;

pub use run::run;
pub use settings::{Cli, Settings};
