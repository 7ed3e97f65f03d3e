//! score-rewards: score rollouts with reward models (LoRA adapters or fully tuned models),
//! rule rewards and the embedded task's oracle; write one scores row per rollout with each
//! source in its own column and their weighted sum plus penalties as `reward`.

pub mod combine;
pub mod groups;
pub mod rules;
pub mod run;
pub mod settings;
pub mod stats;
pub mod text_input;

pub use run::run;
pub use settings::{Cli, Settings};
