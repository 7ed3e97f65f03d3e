//! The flags every trainer shares (train-sft, train-rm-lora, ppo-update), declared once and
//! flattened into each: the LoRA shape, the optimiser and schedule, and checkpoints. Each
//! group keeps its own `--help` heading, after the stage's own options.

use rlhf_nn::LoraArgs;

use crate::checkpoint::CheckpointArgs;
use crate::optim_args::OptimArgs;

/// The trainers' shared option groups.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainerArgs {
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
}
