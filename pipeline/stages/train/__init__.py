"""Training stage kinds: one file each (sft, qlora, dpo, grpo, distill)."""
