//! score-rewards-rm: score-rewards with reward models. `score-rewards` scores rule rewards
//! itself, without libtorch, and hands a run with `--reward-model` to this binary (it takes
//! the process's place, with the same arguments); run directly, it is the same stage. Exit
//! codes as score-rewards': 0 ok, 1 failure, 2 usage, 3 bad input data.

mod reward_model;

use anyhow::Result;
use rlhf_core::cli;
use rlhf_nn::DtypeKind as _;
use score_rewards::run::{RewardModelBackend, RewardModels};
use score_rewards::{Cli, Settings};
use tch::{Device, Kind};

use reward_model::TorchRewardModels;

/// Reward models on libtorch, on one device in one kind.
struct Torch {
    device: Device,
    kind: Kind,
}

impl RewardModelBackend for Torch {
    fn load(
        &self,
        settings: &Settings,
        rollouts_name: &str,
        rollouts_tokenizer: Option<&str>,
    ) -> Result<Box<dyn RewardModels>> {
        Ok(Box::new(TorchRewardModels::load(
            settings,
            (self.device, self.kind),
            rollouts_name,
            rollouts_tokenizer,
        )?))
    }

    fn packs_prompts(&self) -> bool {
        self.device.is_cuda()
    }
}

/// Started by score-rewards' hand-over (arg0 `score-rewards`), the process takes that name
/// back: exec named it after this file, cut to 15 bytes (`score-rewards-r`), so `killall
/// score-rewards` and `pgrep -x score-rewards` missed a reward-model run. Linux only; where
/// /proc/self/comm cannot be written the name stays as it was.
fn keep_the_stage_name() {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&arg0).file_name() == Some("score-rewards".as_ref()) {
        let _ = std::fs::write("/proc/self/comm", "score-rewards");
    }
}

fn main() -> ! {
    keep_the_stage_name();
    let cli = rlhf_core::config::parse::<Cli>("score-rewards");
    cli.global.init();
    let result = (|| {
        // first: a device this machine cannot use is a usage error, before any input is read
        let device = rlhf_nn::args::parse_device(&cli.device)?;
        rlhf_nn::init_threads(cli.global.threads);
        let torch = Torch {
            device,
            kind: cli.dtype.kind(),
        };
        score_rewards::run(&cli, Some(&torch))
    })();
    cli::finish_with(result, &[rlhf_nn::is_bad_input], &[rlhf_nn::is_usage])
}
