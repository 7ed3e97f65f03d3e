//! How a reward model that encodes the rollout text itself (`--retokenize`) made a rollout's
//! token ids: reported per column in the lineage, the run summary and the log.

/// How a reward model that encodes the rollout text itself (`--retokenize`) made a
/// rollout's token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TextInput {
    /// The prompt's chat messages plus the response as the assistant's turn, rendered with
    /// the reward model's chat template.
    ChatTemplate,
    /// The rollout's prompt text (rendered for the policy) and response text.
    PromptText,
}

impl TextInput {
    /// Its name in the lineage and the run summary.
    pub fn name(self) -> &'static str {
        match self {
            TextInput::ChatTemplate => "chat_template",
            TextInput::PromptText => "prompt_text",
        }
    }

    /// What it did, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            TextInput::ChatTemplate => "rendered with its chat template",
            TextInput::PromptText => "encoded as prompt text + response",
        }
    }
}
