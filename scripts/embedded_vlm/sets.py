"""Questions, captions, POPE probes and preference pairs over the synthetic scenes; writing the jsonl sets."""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field

from .draw import COLOURS, OBJECTS, POSITIONS, SHAPES, Scene, SceneSampler, content_hash, png_bytes, render

NUMBER_WORDS = {1: "one shape", 2: "two shapes", 3: "three shapes"}
WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "centre": "in the centre"}


def article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def caption(scene: Scene) -> str:
    """Plain description for the alignment stage: every fact a question can ask about, in words."""
    if scene.digit is not None:
        return f"the digit {scene.digit} in {scene.digit_colour}."
    parts = [f"{article(o.name)} {WHERE[o.position]}" for o in scene.objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{NUMBER_WORDS[len(parts)]}: {listed}."


def absent_objects(scene: Scene) -> list[str]:
    present = {o.name for o in scene.objects}
    return [o for o in OBJECTS if o not in present]


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """All (type, question, answer) a scene supports, one or two per type; yes/no comes in pairs."""
    if scene.digit is not None:
        return [("digit", rng.choice(["What digit is shown?", "Which digit is in the image?"]), str(scene.digit))]
    o = rng.choice(scene.objects)
    qs = [("color", f"What colour is the {o.shape}?", o.colour),
          ("shape", f"What shape is {WHERE[o.position]}?", o.shape),
          ("position", f"Where is the {o.name}?", o.position),
          ("count", "How many shapes are there?", str(len(scene.objects)))]
    absent = absent_objects(scene)
    # half the 'no' probes share a colour or a shape with a present object: the hard, hallucination-prone kind
    near = [a for a in absent if any(a.split()[0] == p.colour or a.split()[1] == p.shape for p in scene.objects)]
    neg = rng.choice(near if near and rng.random() < 0.5 else absent)
    qs += [("exist", f"Is there {article(rng.choice(scene.objects).name)} in the image?", "yes"),
           ("exist", f"Is there {article(neg)} in the image?", "no")]
    return qs


def wrong_answer(qtype: str, answer: str, rng: random.Random) -> str:
    pool = {"color": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS),
            "count": ["1", "2", "3"], "digit": [str(i) for i in range(10)], "exist": ["yes", "no"]}[qtype]
    return rng.choice([x for x in pool if x != answer])


def user_turn(image_path: str, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": image_path}, {"type": "text", "text": text}]}


@dataclass
class Sizes:
    train_images: int = 1500      # saved, used by SFT and preference data
    align_images: int = 8000      # captions for pretraining (includes the saved training images)
    vqa_images: int = 300
    pope_images: int = 66
    sft_per_image: int = 3
    preference: int = 1000


@dataclass
class Built:
    records: dict = field(default_factory=dict)   # file stem -> list of records
    images: dict = field(default_factory=dict)    # relative path -> PIL image
    align: list = field(default_factory=list)     # (PIL image, caption)
    stats: dict = field(default_factory=dict)


def _unique_scenes(sampler, rng, n, seen: set, with_digits=True):
    out = []
    while len(out) < n:
        s = sampler.sample(rng)
        if not with_digits and s.digit is not None:
            continue
        img = render(s)
        h = content_hash(img)
        if h in seen:  # a picture already used elsewhere (held out or earlier): draw another
            continue
        seen.add(h)
        out.append((s, img, h))
    return out


def pope_probes(scene: Scene, freq: Counter, cooc: Counter, rng: random.Random) -> list[dict]:
    """POPE (Li et al. 2023): a yes probe per present object and as many no probes per setting:
    random absent objects, the most frequent absent objects, the absent objects that co-occur most
    with the present ones."""
    present = [o.name for o in scene.objects]
    absent = absent_objects(scene)
    k = len(present)
    ranked_pop = sorted(absent, key=lambda a: (-freq[a], a))
    ranked_adv = sorted(absent, key=lambda a: (-sum(cooc[tuple(sorted((a, p)))] for p in present), a))
    negatives = {"random": rng.sample(absent, k), "popular": ranked_pop[:k], "adversarial": ranked_adv[:k]}
    out = []
    for setting, negs in negatives.items():
        out += [(setting, p, "yes") for p in present] + [(setting, n, "no") for n in negs]
    return [{"setting": s, "object": o, "answer": a} for s, o, a in out]


def build(seed: int, sizes: Sizes) -> Built:
    sampler = SceneSampler(seed)
    b = Built()
    seen: set[str] = set()
    # held-out pictures first, so training never draws one of them (checked again after writing)
    vqa = _unique_scenes(sampler, random.Random(seed + 10), sizes.vqa_images, seen)
    pope = _unique_scenes(sampler, random.Random(seed + 11), sizes.pope_images, seen, with_digits=False)
    held = set(seen)
    train = _unique_scenes(sampler, random.Random(seed + 12), sizes.train_images, seen)
    extra = _unique_scenes(sampler, random.Random(seed + 13), max(0, sizes.align_images - len(train)), seen)

    rng = random.Random(seed + 20)
    sft, pref = [], []
    n_exist = 0
    for i, (s, img, _) in enumerate(train):
        path = f"images/train_{i:05d}.png"
        b.images[path] = img
        qs = questions(s, rng)
        exist = [q for q in qs if q[0] == "exist"]
        other = [q for q in qs if q[0] != "exist"]
        want = "yes" if n_exist % 2 else "no"  # alternate, so yes and no stay balanced
        n_exist += bool(exist)
        picked = rng.sample(other, min(len(other), sizes.sft_per_image - 1)) + [q for q in exist if q[2] == want]
        for qtype, q, a in picked:
            sft.append({"messages": [user_turn(path, q), {"role": "assistant", "content": a}], "type": qtype})
        for qtype, q, a in qs:
            pref.append({"prompt": [user_turn(path, q)], "chosen": [{"role": "assistant", "content": a}],
                         "rejected": [{"role": "assistant", "content": wrong_answer(qtype, a, rng)}], "type": qtype})
    rng.shuffle(sft)
    # keep the 'no'/'yes' hallucination pairs (chosen no, rejected yes) a third of the preference set
    hall = [p for p in pref if p["type"] == "exist" and p["chosen"][0]["content"] == "no"]
    rest = [p for p in pref if p not in hall]
    n_hall = min(len(hall), sizes.preference // 3)
    pref = rng.sample(hall, n_hall) + rng.sample(rest, min(len(rest), sizes.preference - n_hall))
    rng.shuffle(pref)

    test_vqa = []
    for i, (s, img, _) in enumerate(vqa):
        path = f"images/vqa_{i:05d}.png"
        b.images[path] = img
        qs = questions(s, rng)
        qtype = rng.choice(sorted({q[0] for q in qs}))  # each type about equally often
        cands = [q for q in qs if q[0] == qtype]
        _, q, ans = cands[i % len(cands)]  # exist: alternately the yes and the no probe
        test_vqa.append({"prompt": [user_turn(path, q)], "answer": ans, "type": qtype})

    # object statistics of the training pictures, for the popular and adversarial negatives
    freq, cooc = Counter(), Counter()
    for s, _, _ in train:
        names = [o.name for o in s.objects]
        freq.update(names)
        cooc.update(tuple(sorted((a, c))) for j, a in enumerate(names) for c in names[j + 1:])
    test_pope = []
    for i, (s, img, _) in enumerate(pope):
        path = f"images/pope_{i:05d}.png"
        b.images[path] = img
        for p in pope_probes(s, freq, cooc, rng):
            test_pope.append({"prompt": [user_turn(path, f"Is there {article(p['object'])} in the image?")],
                              "answer": p["answer"], "setting": p["setting"], "object": p["object"]})

    b.records = {"sft_train": sft, "test_vqa": test_vqa, "test_pope": test_pope, "preference_train": pref}
    b.align = [(img, caption(s)) for s, img, _ in train + extra]
    train_hashes = {h for _, _, h in train + extra}
    b.stats = {"heldout_in_training": len(held & train_hashes), "train_images": len(train),
               "align_images": len(b.align), "vqa_images": len(vqa), "pope_images": len(pope),
               "types": {k: dict(Counter(r.get("type") or r.get("setting") for r in v)) for k, v in b.records.items()},
               "top_objects": freq.most_common(5)}
    assert b.stats["heldout_in_training"] == 0
    return b


def write(b: Built, out: str) -> dict:
    """Writes the images and jsonl files; re-reads the PNGs to check, by pixel hash, that no
    held-out picture is also a training picture."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    for path, img in b.images.items():
        with open(os.path.join(out, path), "wb") as f:
            f.write(png_bytes(img))
    sizes = {}
    for name, rows in b.records.items():
        p = os.path.join(out, f"{name}.jsonl")
        with open(p, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        sizes[name] = (len(rows), os.path.getsize(p))
    sizes["images"] = (len(b.images), sum(os.path.getsize(os.path.join(out, p)) for p in b.images))
    check_no_leak(out)
    return sizes


def check_no_leak(data_dir: str) -> int:
    from PIL import Image

    def hashes(stems):
        hs = set()
        for stem in stems:
            with open(os.path.join(data_dir, f"{stem}.jsonl"), encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    turn = (r.get("messages") or r["prompt"])[0]
                    path = next(p["image"] for p in turn["content"] if p["type"] == "image")
                    hs.add(content_hash(Image.open(os.path.join(data_dir, path))))
        return hs

    leaked = len(hashes(["test_vqa", "test_pope"]) & hashes(["sft_train", "preference_train"]))
    assert leaked == 0, f"{leaked} held-out images are also training images"
    return leaked
