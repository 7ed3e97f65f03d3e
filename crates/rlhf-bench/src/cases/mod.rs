//! The benchmark cases, in the order they run. To add one: a file `<name>.rs` here with a
//! unit struct implementing `crate::Case`, then one `mod` line and one registry line below.
//! Cases that use another's figure (e.g. the matmul roof) must come after it.

mod matmul_fp32;
mod policy_step;
mod ppo_lora_vs_full;
mod rl_loop;
mod rm_lora_vs_full;
mod rm_step;
mod rollouts;
mod sampling;
mod scale;
mod support;

use crate::Case;

/// Every case, in run order.
static REGISTRY: &[&dyn Case] = &[
    &matmul_fp32::MatmulFp32,
    // add new cases below this line
    &rm_lora_vs_full::RmLoraVsFull,
    &rm_step::RmStep,
    &ppo_lora_vs_full::PpoLoraVsFull,
    &policy_step::PolicyStep,
    &rollouts::Rollouts,
    &sampling::Sampling,
    &rl_loop::RlLoop,
    &scale::Scale,
];

/// Every case, in run order.
pub fn registry() -> &'static [&'static dyn Case] {
    REGISTRY
}
