"""Training-health warnings from the trainer's logs: values that say a run is going wrong.

Each rule fires once per stage, is printed while training and is stored with the stage's
metrics (`health_warnings`), so a run that "finished" but learned nothing says so.
"""
from __future__ import annotations

from typing import Any, Callable

PATIENCE = 5            # consecutive logs before a grad_norm condition counts as "for long"
EARLY_FRACTION = 0.1    # "early" = the first 10% of the steps (at least the first 10 steps)
SETTLING_FRACTION = 0.2  # big, clipped gradients are normal while the loss falls fast in the first 20%
MIN_TOKENS_PER_STEP = 100


class HealthMonitor:
    def __init__(self, max_steps: int, max_grad_norm: float | None, lr_scheduler_type: str,
                 warmup_steps: float = 0.0, report: Callable[[str], None] = print):
        self.max_steps = max(int(max_steps), 1)
        self.max_grad_norm = max_grad_norm
        self.scheduled = lr_scheduler_type not in ("constant", "constant_with_warmup")
        self.warmup_steps = warmup_steps * self.max_steps if warmup_steps < 1 else warmup_steps
        self.report = report
        self.warnings: list[str] = []
        self._fired: set[str] = set()
        self._streaks = {"pinned": 0, "tiny": 0, "huge": 0}
        self._learning_rates: list[float] = []
        self._last_tokens: tuple[int, float] | None = None

    # One log row (a dict the trainer logs at `step`).
    def observe(self, step: int, logs: dict[str, Any]) -> None:
        early = step <= max(10, EARLY_FRACTION * self.max_steps)
        grad_norm = logs.get("grad_norm")
        if grad_norm is not None and step > SETTLING_FRACTION * self.max_steps:
            self._streak("pinned", self.max_grad_norm is not None and grad_norm >= self.max_grad_norm, step,
                         f"grad_norm has been at or above max_grad_norm={self.max_grad_norm} for {PATIENCE} logs: "
                         "every step is clipped; lower the learning rate or check the data")
            self._streak("tiny", grad_norm < 0.1, step,
                         f"grad_norm below 0.1 for {PATIENCE} logs: the model is barely learning (vanishing gradients, "
                         "too low a learning rate, or masked labels)")
            self._streak("huge", grad_norm > 10, step,
                         f"grad_norm above 10 for {PATIENCE} logs: training is unstable; lower the learning rate")
        tokens = logs.get("num_tokens")
        if tokens is not None:
            if self._last_tokens and step > self._last_tokens[0]:
                per_step = (tokens - self._last_tokens[1]) / (step - self._last_tokens[0])
                if per_step < MIN_TOKENS_PER_STEP:
                    self._fire("tokens", step, f"only {per_step:.0f} tokens per step: batches are nearly empty "
                                               "(too short max_length, or most tokens masked)")
            self._last_tokens = (step, tokens)
        if "learning_rate" in logs and step > self.warmup_steps:
            self._learning_rates.append(float(logs["learning_rate"]))
        entropy = logs.get("entropy")
        if early and entropy is not None and entropy < 0.05:
            self._fire("entropy", step, f"entropy {entropy:.3f} this early: the model collapsed to near-certain "
                                        "outputs (learning rate too high, or duplicated data)")
        accuracy = logs.get("mean_token_accuracy")
        if early and accuracy is not None and accuracy > 0.99:
            self._fire("accuracy", step, f"token accuracy {accuracy:.1%} this early: the task is trivial or the "
                                         "labels leak into the inputs")

    def finish(self, step: int) -> list[str]:
        rates = self._learning_rates
        if self.scheduled and len(rates) >= 3 and max(rates) == min(rates):
            self._fire("flat_lr", step, f"the learning rate stayed at {rates[0]:g} although a schedule was asked for "
                                        "(check lr_scheduler_type, warmup and max_steps)")
        return self.warnings

    def _streak(self, name: str, condition: bool, step: int, message: str) -> None:
        self._streaks[name] = self._streaks[name] + 1 if condition else 0
        if self._streaks[name] >= PATIENCE:
            self._fire(name, step, message)

    def _fire(self, name: str, step: int, message: str) -> None:
        if name not in self._fired:
            self._fired.add(name)
            self.warnings.append(f"step {step}: {message}")
            self.report(f"health warning at step {step}: {message}")

    def callback(self):
        """A transformers TrainerCallback feeding this monitor."""
        from transformers import TrainerCallback

        monitor = self

        class _Health(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    monitor.observe(state.global_step, logs)

            def on_train_end(self, args, state, control, **kwargs):
                monitor.finish(state.global_step)

        return _Health()
