//! ppo-update: one policy iteration of PERL-style RLHF on a frozen base with LoRA adapters.
//! Reads rollouts and scores, recomputes log-probabilities, computes KL-regularised
//! advantages (PPO with GAE and a LoRA critic, PERL's REINFORCE with a learned baseline,
//! RLOO, GRPO), updates the policy adapter, and writes the next adapter folder with its
//! optimiser, critic and KL-controller state and metrics. `--full` tunes every policy weight
//! instead, against a second, frozen reference copy (the baseline PERL compares with).

pub mod args;
pub mod data;
pub mod models;
pub mod prepare;
pub mod ragged;
pub mod run;
pub mod settings;
pub mod state;
pub mod update;

pub use args::{Algo, Cli};
pub use run::{run, Summary};
pub use settings::Settings;
