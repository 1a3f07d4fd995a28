"""What the training stages share: LoRA settings, device arguments, saving, health checks, rewards."""
