"""Reference for the rlhf-bench case `rl_loop`: the same RL loop as sample-rollouts ->
score-rewards -> ppo-update --algo grpo, run by TRL's GRPOTrainer with a peft LoRA.

Usage:
  python scripts/bench/rl_loop.py --model DIR --prompts FILE --steps N --prompts-per-step P
      --samples K --max-new-tokens T --beta B --learning-rate LR --lora-rank R
      --lora-alpha A --lora-targets q_proj,v_proj --target-words W --threads T

Each step takes the next P prompts of FILE (a prompts Parquet file, its `prompt` text, in
order), samples K completions of each (temperature 1, no top-k/top-p, EOS stops), rewards
them with the rule score-rewards computes for `length:target=W,unit=words`
(-|words - W| / W), and takes one optimiser step (GRPO's loss, KL to the base with the adapter
off, weight B). Prints {"seconds_steps", "step_seconds" (each step's wall time),
"completion_tokens", "peak_rss_bytes", versions} on its last stdout line; the caller times the whole process (interpreter start, imports and model
loading included), as it does the Rust binaries. Float32, CPU.
"""

import argparse
import os
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from common import emit, peak_rss_bytes  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--prompts-per-step", type=int, required=True)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--beta", type=float, required=True)
    ap.add_argument("--learning-rate", type=float, required=True)
    ap.add_argument("--lora-rank", type=int, required=True)
    ap.add_argument("--lora-alpha", type=float, required=True)
    ap.add_argument("--lora-targets", required=True)
    ap.add_argument("--target-words", type=float, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="scratch folder for the trainer")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import datasets
    import peft
    import transformers
    import trl

    rows = pq.read_table(a.prompts, columns=["prompt"]).to_pylist()
    need = a.steps * a.prompts_per_step
    if len(rows) < need:
        raise SystemExit(f"{a.prompts} has {len(rows)} prompts, {need} needed")
    data = datasets.Dataset.from_list([{"prompt": r["prompt"]} for r in rows[:need]])

    tokens = {"completion": 0}

    def length_reward(completions, completion_ids=None, **_):
        # the rule of score-rewards' `length:target=W,unit=words`
        if completion_ids is not None:
            tokens["completion"] += sum(len(c) for c in completion_ids)
        return [-abs(len(c.split()) - a.target_words) / a.target_words for c in completions]

    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(a.model)
    tokenizer.padding_side = "left"
    cfg = trl.GRPOConfig(
        output_dir=a.out,
        per_device_train_batch_size=a.prompts_per_step * a.samples,
        gradient_accumulation_steps=1,
        num_generations=a.samples,
        max_completion_length=a.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=a.beta,
        num_iterations=1,
        loss_type="grpo",
        learning_rate=a.learning_rate,
        lr_scheduler_type="constant",
        max_steps=a.steps,
        shuffle_dataset=False,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        disable_dropout=True,
        seed=0,
    )
    lora = peft.LoraConfig(
        r=a.lora_rank,
        lora_alpha=a.lora_alpha,
        lora_dropout=0.0,
        target_modules=a.lora_targets.split(","),
        task_type="CAUSAL_LM",
    )
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=length_reward,
        args=cfg,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora,
    )
    step_seconds = []

    class StepTimes(transformers.TrainerCallback):
        """Wall time of each optimiser step (generation, reward, reference and update)."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_seconds.append(time.perf_counter() - self.t)

    trainer.add_callback(StepTimes())
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    emit(
        {
            "seconds_steps": seconds,
            "step_seconds": step_seconds,
            "steps": a.steps,
            "completion_tokens": tokens["completion"],
            "peak_rss_bytes": peak_rss_bytes(),
            "trl_version": trl.__version__,
            "torch_version": torch.__version__,
        }
    )


if __name__ == "__main__":
    main()
