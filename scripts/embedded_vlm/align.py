"""Alignment pretraining: the model learns to caption the pictures (image, then the caption as plain
text, no chat format), so the vision encoder and connector carry every fact a question can ask about."""
from __future__ import annotations

import math
import random
import time

import torch


def pixels(images, image_processor) -> torch.Tensor:
    """The processor's tiles (tiles + overview, each (x/255 - 0.5) / 0.5), turned back into uint8 so 8,000
    pictures stay small until a batch is drawn; the builder checks the round trip is exact."""
    out = []
    for i in range(0, len(images), 256):
        pv = image_processor([[im.convert("RGB")] for im in images[i:i + 256]], return_tensors="pt")["pixel_values"]
        out.append(((pv * 0.5 + 0.5) * 255).round().to(torch.uint8))
    return torch.cat(out)


def to_float(u8: torch.Tensor) -> torch.Tensor:
    return (u8.float() / 255.0 - 0.5) / 0.5


def encode_captions(proc, captions):
    """ids of '<image>' + caption + '</s>' as the processor expands them; labels only on the caption."""
    tok = proc.tokenizer
    prefix = proc(text=["<image>"], images=[[_blank()]], return_tensors="pt")["input_ids"][0].tolist()
    eos = tok.convert_tokens_to_ids("</s>")
    rows = []
    for c in captions:
        ids = tok(c, add_special_tokens=False)["input_ids"] + [eos]
        rows.append((prefix + ids, len(prefix)))
    return rows


def _blank():
    from PIL import Image
    return Image.new("RGB", (64, 64), (255, 255, 255))


def collate(rows, pad_id):
    n = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), n), pad_id)
    labels = torch.full((len(rows), n), -100)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, start:len(ids)] = torch.tensor(ids[start:])
        mask[i, :len(ids)] = 1
    return input_ids, labels, mask


def train(model, proc, images, captions, steps, batch_size, lr, lm_lr_scale, seed, log_every=50):
    """AdamW, warmup then cosine; the vision tower and connector at lr, the language model at
    lr * lm_lr_scale (it already reads text; it only has to learn to read the image tokens)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    px = pixels(images, proc.image_processor)
    rows = encode_captions(proc, captions)
    pad = proc.tokenizer.pad_token_id
    vis = [p for n, p in model.named_parameters() if "text_model" not in n and "lm_head" not in n]
    lm = [p for n, p in model.named_parameters() if "text_model" in n]  # lm_head is tied to embed_tokens
    opt = torch.optim.AdamW([{"params": vis, "lr": lr}, {"params": lm, "lr": lr * lm_lr_scale}],
                            betas=(0.9, 0.95), weight_decay=0.01)
    base = [g["lr"] for g in opt.param_groups]
    warm = max(1, steps // 20)
    model.train()
    curve, ema, t0 = [], None, time.time()
    order: list[int] = []
    for step in range(1, steps + 1):
        f = step / warm if step <= warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        if len(order) < batch_size:  # epochs over a shuffled order
            more = list(range(len(rows)))
            rng.shuffle(more)
            order += more
        idx, order = order[:batch_size], order[batch_size:]
        input_ids, labels, mask = collate([rows[i] for i in idx], pad)
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels,
                    pixel_values=to_float(px[idx]))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        if step % log_every == 0 or step == steps:
            curve.append({"step": step, "loss": round(loss, 4), "ema": round(ema, 4), "s": round(time.time() - t0, 1)})
            print(f"  align step {step}/{steps} loss {loss:.4f} ema {ema:.4f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "lm_lr_scale": lm_lr_scale,
            "final_loss_ema": round(ema, 4), "curve": curve, "seconds": round(time.time() - t0, 1),
            "captions": len(rows)}
