"""The distillation loss (alpha * CE + (1 - alpha) * T^2 * KL, chunked) and the SFTTrainer that
trains with it; the distill stage (pipeline/stages/train/distill.py) configures both."""
from __future__ import annotations

from pipeline.backends.perplexity import chunk_rows as default_rows
from pipeline.backends.perplexity import output_head


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float,
                      num_tokens=None, vocab: int | None = None, chunk_rows: int | None = None):
    """(loss, ce, kl) over aligned rows of logits (one row per completion token, labels its targets).

    CE and KL are summed over tokens and divided by `num_tokens` (default: the rows), so gradient
    accumulation sees a per-token mean as trl's SFT loss does. `vocab`: the tokenizer's size; logit
    columns beyond it are embedding padding and hold no token. The terms are computed `chunk_rows`
    rows at a time under activation checkpointing, so the fp32 copies and log-softmaxes of only one
    chunk exist at once (full-vocabulary logits of 8 x 512 tokens of a 152k vocabulary are ~2.5 GB
    per copy), in the forward and in the backward pass.
    """
    denominator = num_tokens if num_tokens is not None else max(labels.numel(), 1)
    ce, kl = chunked_sums(_chunk_terms, student_logits, teacher_logits, labels, vocab, chunk_rows, temperature)
    ce, kl = ce / denominator, kl / denominator
    return alpha * ce + (1 - alpha) * temperature ** 2 * kl, ce, kl


def teacher_answer_logits(teacher, head, forward: dict, mask):
    """The teacher's logits on the answer positions only (`mask` over the shifted positions): its decoder runs on
    the whole batch, its head only where a loss is taken, not on every token."""
    import torch

    with torch.no_grad():
        hidden = teacher.get_decoder()(input_ids=forward["input_ids"], attention_mask=forward.get("attention_mask"),
                                       position_ids=forward.get("position_ids"), use_cache=False).last_hidden_state
        return head(hidden[:, :-1][mask])


def jsd_loss(student_logits, teacher_logits, labels, beta: float, vocab: int | None = None,
             chunk_rows: int | None = None, temperature: float = 1.0):
    """(generalised JSD, CE) over aligned rows of logits, each a mean over the rows: GKD's divergence (trl's own
    formula, GKDTrainer.generalized_jsd_loss) computed as distillation_loss computes its terms, a chunk of rows
    at a time under activation checkpointing. trl's GKDTrainer computes it on every position of the batch at
    once: ~30 full-vocabulary fp32 copies (SmolLM2, batch 8: peak RSS 14.8 GB against 3.8 GB for SFT).
    `temperature` T softens both distributions and the divergence is scaled by T^2, as distillation_loss's KL
    (trl's GKD: T 1); CE is on the raw logits."""
    rows = max(labels.numel(), 1)
    jsd, ce = chunked_sums(_jsd_terms, student_logits, teacher_logits, labels, vocab, chunk_rows, beta, temperature)
    return jsd / rows, ce / rows


def chunked_sums(terms, student_logits, teacher_logits, labels, vocab: int | None, chunk_rows: int | None, *extra):
    """Each of terms(student, teacher, labels, *extra)'s sums over all rows, `chunk_rows` rows at a time; under
    activation checkpointing where the student needs gradients, so one chunk's fp32 copies live at once in the
    forward and in the backward pass. `vocab`: the tokenizer's size (logit columns beyond it hold no token)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    vocab = vocab or student_logits.shape[-1]
    step = chunk_rows or default_rows(vocab)
    sums = None
    for start in range(0, student_logits.shape[0], step):
        part = slice(start, start + step)
        args = (student_logits[part, :vocab], teacher_logits[part, :vocab], labels[part], *extra)
        chunk = checkpoint(terms, *args, use_reentrant=False) if student_logits.requires_grad else terms(*args)
        sums = chunk if sums is None else tuple(a + b for a, b in zip(sums, chunk))
    if sums is None:  # no rows: zeros that still carry the student's graph
        zero = student_logits.sum() * 0 if student_logits.requires_grad else torch.zeros((), dtype=torch.float32)
        sums = (zero, zero)
    return sums


def _jsd_terms(student, teacher, labels, beta: float, temperature: float):
    """Summed T^2 * generalised JSD (trl's, at temperature T) and CE(student, labels) over a chunk of rows."""
    import torch.nn.functional as F
    from trl.experimental.gkd import GKDTrainer

    student, teacher = student.float(), teacher.float()
    jsd = GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta, temperature=temperature, reduction="sum")
    jsd = jsd * temperature ** 2
    return jsd, F.cross_entropy(student, labels, reduction="sum")


def _chunk_terms(student, teacher, labels, temperature: float):
    """Summed CE(student, labels) and KL(p_teacher || p_student) at temperature T over a chunk of rows."""
    import torch.nn.functional as F

    student, teacher = student.float(), teacher.float()
    ce = F.cross_entropy(student, labels, reduction="sum")
    kl = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                  reduction="sum", log_target=True)
    return ce, kl


def trainer_class():
    """SFTTrainer with the distillation loss; built lazily so planning never imports trl."""
    import torch
    from trl import SFTTrainer

    class DistillationSFTTrainer(SFTTrainer):
        def __init__(self, *args, teacher, temperature: float, alpha: float, vocab: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher.eval().requires_grad_(False)
            self.teacher_head = output_head(self.teacher)
            self.temperature, self.alpha, self.vocab = temperature, alpha, vocab

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if model.training else "eval"
            forward = {k: v for k, v in inputs.items() if k != "labels"}
            forward["use_cache"] = False
            labels = inputs["labels"][:, 1:]
            mask = labels != -100  # completion tokens only (prompt and padding are -100)
            outputs = model(**forward)
            student = outputs.logits[:, :-1][mask]
            # position ids too: a padding-free row's sequences stay apart for the teacher as for the student
            teacher = teacher_answer_logits(self.teacher, self.teacher_head, forward, mask)
            if num_items_in_batch is not None:
                num_items_in_batch = torch.as_tensor(num_items_in_batch, device=student.device).clamp(min=1)
            loss, ce, kl = distillation_loss(student, teacher, labels[mask], self.temperature, self.alpha,
                                             num_items_in_batch, vocab=self.vocab)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as SFTTrainer: DDP averages the gradients
            # logged per micro-batch token, whatever the normalisation above
            scale = mask.sum().clamp(min=1) / num_items_in_batch if num_items_in_batch is not None else 1
            metrics = self._metrics[mode]
            metrics["distill_ce"].append(float(ce.detach() / scale))
            metrics["distill_kl"].append(float(kl.detach() / scale))
            if student.numel():
                metrics["mean_token_accuracy"].append(float((student.argmax(-1) == labels[mask]).float().mean()))
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs \
                    else int(inputs["input_ids"].numel())
                metrics["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return DistillationSFTTrainer
