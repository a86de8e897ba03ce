"""The recipes' work on a transformers classifier (text or images): data, calibration,
pruning with recovery, distillation (used by `model-server optimize build`,
model_server.optimize.build).

Text data: a UTF-8 file of text lines, or of ``label<TAB>text`` lines (a label is one of the
model's label names or an index); blank lines are skipped; labels are all or nothing. A
directory holding exactly one file is read as that file (a pulled data set). Image data:
model_server.optimize.images. An `Encoder` turns a batch of examples (texts, or encoded
images) into the model's keyword inputs: the tokenizer, or the image processor, the server's
backend uses.

Recovery and distillation train a student to match the teacher's (the source model's) logits:
KL divergence of the temperature-softened distributions, times T², plus cross-entropy when the
data has labels; AdamW; batches cycle through the shuffled training split. A distilled student
also matches the hidden states of the teacher layers it was initialised from (`Alignment`):
recipe.hidden_weight times the mean cosine distance over the non-padding tokens, on the
residual dimensions the student kept (more signal per example than the logits alone:
bench/results/pipeline_exploration.md). Both fine-tune a
model that starts from the teacher's weights (a pruned copy; a student whose layers are
teacher layers cut down to the student's width, `build_student`): dropout off, the learning
rate warmed up linearly over the first `WARMUP_FRACTION` of the steps, then decayed to zero
on a cosine (measured better than dropout and a constant rate:
bench/results/pipeline_exploration.md). Pruning ranks FFN neurons by their activations on (up to
calibrationSamples of) the training split, or by weights alone (``ranking: weight``, what
load-time pruning does). Progress lines
(msv_contract.pipeline.PROGRESS_PREFIX) go to stdout at most every `Progress.interval_s`.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from model_server.optimize.recipe import BuildError, Recipe, Student
from msv_contract import pipeline


@dataclass
class Examples:
    """The data: texts, or encoded images (PNG/JPEG bytes), with their labels, if any."""

    items: list[Any]
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def take(self, idx: Sequence[int]) -> Examples:
        labels = None if self.labels is None else [self.labels[i] for i in idx]
        return Examples([self.items[i] for i in idx], labels)


Encoder = Callable[[Sequence[Any]], dict[str, Any]]
"""A batch of examples -> the model's keyword inputs (torch tensors)."""


@dataclass(frozen=True)
class Alignment:
    """Which teacher hidden states a student's match: student layer i's output against
    teacher layer `layers[i]`'s, on the teacher's residual dimensions `residual` (all when
    None: the same width)."""

    layers: list[int]
    residual: Any = None


def text_encoder(tokenizer: Any, max_length: int) -> Encoder:
    def encode(texts: Sequence[Any]) -> dict[str, Any]:
        return dict(tokenizer(list(texts), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt"))
    return encode


def image_encoder(processor: Any) -> Encoder:
    from model_server.optimize.images import processor_inputs

    def encode(images: Sequence[Any]) -> dict[str, Any]:
        return processor_inputs(processor, images)
    return encode


def data_file(path: Path) -> Path:
    """The data file at `path` (a file, or a directory holding exactly one file)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if len(files) != 1:
            raise BuildError(f"data directory {path} must hold exactly one data file, "
                             f"found {len(files)}")
        return files[0]
    if not path.is_file():
        raise BuildError(f"data {path} does not exist")
    return path


def read_text_data(path: Path, label2id: dict[str, int], num_labels: int) -> Examples:
    """Text lines or ``label<TAB>text`` lines; BuildError naming the line on bad input."""
    file = data_file(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BuildError(f"data {file.name} is not UTF-8 text (text classification needs "
                         f"text lines): {exc}") from exc
    except OSError as exc:
        raise BuildError(f"cannot read data {file.name}: {exc}") from exc
    texts: list[str] = []
    labels: list[int] = []
    labelled: bool | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        has_label = "\t" in line
        if labelled is None:
            labelled = has_label
        elif has_label != labelled:
            raise BuildError(f"data line {number}: mixes labelled (label<TAB>text) and "
                             "unlabelled lines")
        if has_label:
            label, text = line.split("\t", 1)
            labels.append(label_id(label.strip(), label2id, num_labels, f"data line {number}"))
            texts.append(text)
        else:
            texts.append(line)
    if len(texts) < 2:
        raise BuildError(f"data {file.name} has {len(texts)} non-empty line(s); at least 2 "
                         "are needed (a training and a held-out split)")
    return Examples(texts, labels if labelled else None)


def label_id(label: str, label2id: dict[str, int], num_labels: int, where: str) -> int:
    """The class index of `label` (a label name or an index); BuildError naming `where`."""
    if label in label2id:
        return label2id[label]
    if label.isdigit() and int(label) < num_labels:
        return int(label)
    raise BuildError(f"{where}: label {label!r} is not one of the model's labels "
                     f"({', '.join(label2id) or 'none'}) nor an index below {num_labels}")


def split(data: Examples, held_out: float, seed: int) -> tuple[Examples, Examples]:
    """(training, held-out) splits of a seeded shuffle; each gets at least one example."""
    idx = list(range(len(data)))
    random.Random(seed).shuffle(idx)
    n_held = min(len(idx) - 1, max(1, round(len(idx) * held_out)))
    return data.take(idx[n_held:]), data.take(idx[:n_held])


class Progress:
    """Prints ``PROGRESS_PREFIX {phase, step, total, etaSeconds}`` lines."""

    interval_s = 2.0

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out
        self._last = -math.inf
        self._phase = ""
        self._started = time.monotonic()

    def __call__(self, phase: str, step: int = 0, total: int = 0, *, force: bool = False) -> None:
        now = time.monotonic()
        if phase != self._phase:
            self._phase, self._started, force = phase, now, True
        if not force and now - self._last < self.interval_s and step < total:
            return
        self._last = now
        eta = None
        if 0 < step < total:
            eta = round((now - self._started) / step * (total - step), 1)
        elif total and step >= total:
            eta = 0.0
        line = json.dumps({"phase": phase, "step": step, "total": total, "etaSeconds": eta},
                          separators=(",", ":"))
        print(pipeline.PROGRESS_PREFIX + line, file=self.out or sys.stdout, flush=True)


class Deadline:
    """The recipe's budget: `check` raises BuildError once maxSeconds have passed."""

    def __init__(self, max_seconds: float | None, started: float | None = None) -> None:
        self.max_seconds = max_seconds
        self.started = time.monotonic() if started is None else started

    def check(self, phase: str) -> None:
        if self.max_seconds is None:
            return
        elapsed = time.monotonic() - self.started
        if elapsed > self.max_seconds:
            raise BuildError(f"budget exceeded: {elapsed:.1f} s > budget.maxSeconds "
                             f"{self.max_seconds} while {phase}")


def batches(data: Examples, size: int, *, seed: int | None = None) -> Iterator[Examples]:
    """`data` in batches of `size` (shuffled with `seed`, in order without)."""
    idx = list(range(len(data)))
    if seed is not None:
        random.Random(seed).shuffle(idx)
    for start in range(0, len(idx), size):
        yield data.take(idx[start:start + size])


def logits(model: Any, encoder: Encoder, data: Examples, batch_size: int = 32) -> Any:
    """The model's logits over `data` (inference)."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for batch in batches(data, batch_size):
            out.append(model(**encoder(batch.items)).logits.float())
    return torch.cat(out)


def fidelity(model: Any, teacher_logits: Any, encoder: Encoder,
             data: Examples) -> tuple[float, float]:
    """(top-1 agreement, mean KL divergence from the teacher's distribution) over `data`."""
    import torch

    out = logits(model, encoder, data)
    agree = float((out.argmax(-1) == teacher_logits.argmax(-1)).float().mean())
    kl = torch.nn.functional.kl_div(torch.log_softmax(out, -1), torch.log_softmax(
        teacher_logits, -1), log_target=True, reduction="batchmean")
    return agree, float(kl)


WARMUP_FRACTION = 0.1
"""Share of the training steps over which the learning rate rises linearly to its value."""


def lr_factor(step: int, steps: int) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based) of `steps`: linear warmup
    over the first WARMUP_FRACTION, then cosine decay towards zero."""
    warmup = max(1, round(steps * WARMUP_FRACTION))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def total_steps(recipe: Recipe, n_train: int) -> int:
    if recipe.steps is not None:
        return recipe.steps
    per_epoch = math.ceil(n_train / recipe.batch_size)
    return max(1, math.ceil((recipe.epochs or 1) * per_epoch))


def hidden_distance(student_out: Any, teacher_out: Any, align: Alignment,
                    mask: Any) -> Any:
    """Mean over the aligned layers of the mean cosine distance between the student's and
    the teacher's hidden states at the tokens `mask` selects (None: all)."""
    import torch.nn.functional as F

    total: Any = 0.0
    for i, layer in enumerate(align.layers):
        theirs = teacher_out.hidden_states[layer + 1]
        if align.residual is not None:
            theirs = theirs[..., align.residual]
        ours = student_out.hidden_states[i + 1]
        if mask is not None:
            theirs, ours = theirs[mask], ours[mask]
        total = total + (1.0 - F.cosine_similarity(ours.float(), theirs.float(), dim=-1)).mean()
    return total / len(align.layers)


def match_teacher(student: Any, teacher: Any, encoder: Encoder, train: Examples, recipe: Recipe,
                  progress: Callable[..., None], deadline: Deadline, *,
                  fine_tune: bool = False, align: Alignment | None = None) -> dict[str, Any]:
    """Train `student` in place on the teacher's logits (and the labels, if any);
    `fine_tune`: dropout off and a warmup-cosine learning rate (recovery); `align`: also on
    those hidden states, weighted recipe.hidden_weight (distillation)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(recipe.seed)
    steps = total_steps(recipe, len(train))
    temp = recipe.temperature
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, steps) if fine_tune else 1.0)
    teacher.eval()
    # fine-tuning: the whole student in eval mode (gradients flow all the same), since
    # attention kernels read their module's training flag, not the Dropout module's
    student.train(not fine_tune)
    hidden_weight = recipe.hidden_weight if align is not None else 0.0
    epoch = 0
    stream = batches(train, recipe.batch_size, seed=recipe.seed)
    last_loss = math.nan
    progress("training", 0, steps, force=True)
    for step in range(1, steps + 1):
        batch = next(stream, None)
        if batch is None:
            epoch += 1
            stream = batches(train, recipe.batch_size, seed=recipe.seed + epoch)
            batch = next(stream)
        enc = encoder(batch.items)
        with torch.no_grad():
            teacher_out = teacher(**enc, output_hidden_states=hidden_weight > 0)
        student_out = student(**enc, output_hidden_states=hidden_weight > 0)
        target, out = teacher_out.logits.float(), student_out.logits.float()
        loss = F.kl_div(F.log_softmax(out / temp, -1), F.softmax(target / temp, -1),
                        reduction="batchmean") * temp * temp
        if hidden_weight > 0:
            mask = enc.get("attention_mask")
            loss = loss + hidden_weight * hidden_distance(
                student_out, teacher_out, align,  # type: ignore[arg-type]
                None if mask is None else mask.bool())
        if batch.labels is not None:
            loss = loss + F.cross_entropy(out, torch.tensor(batch.labels))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        last_loss = float(loss.detach())
        progress("training", step, steps)
        deadline.check("training")
    student.eval()
    return {"steps": steps, "finalLoss": round(last_loss, 6), "temperature": temp,
            "learningRate": recipe.learning_rate,
            "schedule": "warmup-cosine" if fine_tune else "constant", "dropout": not fine_tune,
            "batchSize": recipe.batch_size, "labels": train.labels is not None,
            "hiddenWeight": hidden_weight}


RECOVERY_CHECK_SAMPLES = 256
"""Training examples on which recovery is compared with the pruned model it started from."""


def recover(student: Any, teacher: Any, encoder: Encoder, train: Examples, recipe: Recipe,
            progress: Callable[..., None], deadline: Deadline) -> dict[str, Any]:
    """Recovery training of a pruned `student` (match_teacher, fine-tuning); when it ends
    farther from the teacher (KL on the first RECOVERY_CHECK_SAMPLES training examples) than
    it started, as happens once pruning alone is already very close, the pruned weights are
    kept (``kept``: ``recovered`` or ``pruned``)."""
    check = train.take(range(min(len(train), RECOVERY_CHECK_SAMPLES)))
    reference = logits(teacher, encoder, check)
    _, before = fidelity(student, reference, encoder, check)
    start = copy.deepcopy(student.state_dict())
    details = match_teacher(student, teacher, encoder, train, recipe, progress, deadline,
                            fine_tune=True)
    _, after = fidelity(student, reference, encoder, check)
    kept = "recovered"
    if after > before:
        student.load_state_dict(start)
        kept = "pruned"
    return {**details, "kept": kept, "checkKlBefore": round(before, 8),
            "checkKlAfter": round(after, 8)}


def _calibration_feed(encoder: Encoder, train: Examples, recipe: Recipe, stage: str,
                      progress: Callable[..., None], deadline: Deadline
                      ) -> tuple[Examples, Iterator[Any]]:
    """(the sample, its encoded batches): up to calibrationSamples training examples in
    batches of batchSize; each batch fed reports `stage` progress and checks the deadline."""
    sample = train.take(range(min(len(train), recipe.calibration_samples)))
    chunks = list(batches(sample, recipe.batch_size))

    def feed() -> Iterator[Any]:
        for i, batch in enumerate(chunks, 1):
            yield encoder(batch.items)
            progress(stage, i, len(chunks))
            deadline.check(stage)

    progress(stage, 0, len(chunks), force=True)
    return sample, feed()


def static_int8(teacher: Any, encoder: Encoder, train: Examples, recipe: Recipe,
                progress: Callable[..., None], deadline: Deadline) -> tuple[Any, dict[str, Any]]:
    """(the calibration, details): activation ranges of the Linear layers over up to
    calibrationSamples training examples."""
    from model_server.errors import ModelLoadError
    from model_server.optimize import static_int8 as s8

    sample, feed = _calibration_feed(encoder, train, recipe, "calibrating", progress, deadline)
    try:
        calibration = s8.calibrate(copy.deepcopy(teacher), feed)
    except ModelLoadError as exc:
        raise BuildError(str(exc)) from exc
    return calibration, {"calibrationSamples": len(sample),
                         "layers": len(calibration["layers"]), "engine": calibration["engine"]}


def activation_norms(teacher: Any, encoder: Encoder, train: Examples, recipe: Recipe,
                     progress: Callable[..., None], deadline: Deadline) -> dict[str, Any]:
    """The teacher's FFN activation norms (prune.ffn_activation_norms) over up to
    calibrationSamples training examples."""
    from model_server.errors import ModelLoadError
    from model_server.optimize.prune import ffn_activation_norms

    _, feed = _calibration_feed(encoder, train, recipe, "pruning", progress, deadline)
    try:
        return ffn_activation_norms(teacher, feed)
    except ModelLoadError as exc:
        raise BuildError(str(exc)) from exc


def activation_stats(teacher: Any, encoder: Encoder, train: Examples, recipe: Recipe,
                     progress: Callable[..., None], deadline: Deadline
                     ) -> tuple[dict[str, Any] | None, str | None]:
    """(the teacher's FFN activation statistics over up to calibrationSamples training
    examples (prune.ffn_activation_stats), None) or, when they would take more than
    prune.STATS_MAX_BYTES, (None, why)."""
    from model_server.errors import ModelLoadError
    from model_server.optimize import prune as p

    need = p.stats_bytes(teacher)
    if need > p.STATS_MAX_BYTES:
        return None, (f"the FFN activation statistics would take {need / 2**30:.1f} GiB, over "
                      f"the {p.STATS_MAX_BYTES / 2**30:.0f} GiB bound")
    _, feed = _calibration_feed(encoder, train, recipe, "pruning", progress, deadline)
    try:
        return p.ffn_activation_stats(teacher, feed), None
    except ModelLoadError as exc:
        raise BuildError(str(exc)) from exc


def prune(teacher: Any, amount: float, norms: dict[str, Any] | None = None,
          stats: dict[str, Any] | None = None) -> tuple[Any, int, dict[str, Any] | None]:
    """A copy of `teacher` with `amount` of every FFN's neurons removed, ranked by `norms`
    (activation_norms) or, without, by weights; with `stats` (activation_stats) each
    down-projection refitted on the kept neurons. (model, removed, the refit's summary or
    None: blocks, tokens, mean share of the blocks' output variance left unexplained
    before and after)."""
    from model_server.errors import ModelLoadError
    from model_server.optimize.prune import prune_structured_ffn

    student = copy.deepcopy(teacher)
    refits: dict[str, Any] = {}
    try:
        removed = prune_structured_ffn(student, amount, norms, stats=stats, refits=refits)
    except ModelLoadError as exc:
        raise BuildError(str(exc)) from exc
    summary = None
    if refits:
        summary = {
            "blocks": len(refits),
            "tokens": int(next(iter(stats.values())).tokens) if stats else 0,
            "unexplainedBefore": round(sum(r.unexplained_before for r in refits.values())
                                       / len(refits), 6),
            "unexplainedAfter": round(sum(r.unexplained_after for r in refits.values())
                                      / len(refits), 6)}
    return student, removed, summary


_LAYER = re.compile(r"\.layer\.(\d+)\.")


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer initialising each student layer: every k-th, ending at the last."""
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


_HEAD_DIM0 = re.compile(r"attention\.self\.(query|key|value)\.(weight|bias)$")
_HEAD_DIM1 = re.compile(r"attention\.output\.dense\.weight$")
_FFN_DIM0 = re.compile(r"intermediate\.dense\.(weight|bias)$")
_FFN_DIM1 = re.compile(r"(?<!attention\.)output\.dense\.weight$")


def _width_plan(teacher: Any, config: Any, mapping: list[int],
                ffn_norms: dict[str, Any] | None) -> dict[str, Any]:
    """Which teacher units a narrower student keeps: residual dimensions (ranked by the
    LayerNorm gains and shifts summed over the model), attention heads per layer (by the
    norms of their value and output weights) and FFN neurons per layer (as pruning ranks
    them: activation norms when given, else incoming weights, times outgoing weights)."""
    import torch

    from model_server.optimize.prune import top_sorted

    t = teacher.config
    state = teacher.state_dict()
    res_score = torch.zeros(t.hidden_size)
    for name, value in state.items():
        if "LayerNorm" in name and value.dim() == 1 and value.shape[0] == t.hidden_size:
            res_score += value.float().pow(2)
    residual = top_sorted(res_score, config.hidden_size)
    head_dim = t.hidden_size // t.num_attention_heads
    student_head_dim = config.hidden_size // config.num_attention_heads
    heads: dict[int, Any] = {}
    ffn: dict[int, Any] = {}
    for layer in sorted(set(mapping)):
        prefix = next(n for n in state if f".layer.{layer}." in n).split(f".layer.{layer}.")[0]
        base = f"{prefix}.layer.{layer}."
        if head_dim == student_head_dim and config.num_attention_heads <= t.num_attention_heads:
            value = state[base + "attention.self.value.weight"].float()
            out = state[base + "attention.output.dense.weight"].float()
            score = torch.stack([
                value[h * head_dim:(h + 1) * head_dim].norm()
                * out[:, h * head_dim:(h + 1) * head_dim].norm()
                for h in range(t.num_attention_heads)])
            kept = top_sorted(score, config.num_attention_heads)
            heads[layer] = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim)
                                      for h in kept.tolist()])
        else:
            heads[layer] = torch.arange(config.hidden_size)
        up = state[base + "intermediate.dense.weight"].float()
        down = state[base + "output.dense.weight"].float()
        norms = None if ffn_norms is None else ffn_norms.get(prefix + f".layer.{layer}")
        incoming = up.norm(dim=1) if norms is None else norms.float()
        ffn[layer] = top_sorted(incoming * down.norm(dim=0),
                                 min(config.intermediate_size, up.shape[0]))
    return {"residual": residual, "heads": heads, "ffn": ffn}


def _slice_like(name: str, value: Any, shape: Any, plan: dict[str, Any],
                teacher_layer: int | None, hidden: int) -> Any:
    """`value` (a teacher tensor) cut down to `shape` along the plan's kept units, or None
    when a dimension has no plan."""
    out = value
    for dim, size in enumerate(shape):
        if out.shape[dim] == size:
            continue
        if teacher_layer is not None and (
                (dim == 0 and _HEAD_DIM0.search(name)) or (dim == 1 and _HEAD_DIM1.search(name))):
            keep = plan["heads"][teacher_layer]
        elif teacher_layer is not None and (
                (dim == 0 and _FFN_DIM0.search(name)) or (dim == 1 and _FFN_DIM1.search(name))):
            keep = plan["ffn"][teacher_layer]
        elif out.shape[dim] == hidden:
            keep = plan["residual"]
        else:
            return None
        if len(keep) != size:
            return None
        out = out.index_select(dim, keep)
    return out


def build_student(teacher: Any, spec: Student, ffn_norms: dict[str, Any] | None = None
                  ) -> tuple[Any, dict[str, Any], Alignment]:
    """A smaller model of the teacher's architecture: `spec.layers` layers initialised from
    every k-th teacher layer; a narrower width keeps the teacher's highest-ranked residual
    dimensions, heads and FFN neurons (`ffn_norms`: activation_norms for the FFN ranking;
    weights without), and a tensor that cannot be cut down starts fresh. Returns the student,
    the report's details and how its hidden states align with the teacher's."""
    import torch

    config = copy.deepcopy(teacher.config)
    for attr in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        if not isinstance(getattr(config, attr, None), int):
            raise BuildError(f"distill needs a BERT-style config ({attr}); "
                             f"{type(config).__name__} has none")
    n_teacher = config.num_hidden_layers
    teacher_hidden = config.hidden_size
    if spec.layers > n_teacher:
        raise BuildError(f"recipe.student.layers {spec.layers} exceeds the source model's "
                         f"{n_teacher} layers")
    hidden = spec.hidden_size or config.hidden_size
    heads = spec.heads or config.num_attention_heads
    if hidden % heads:
        raise BuildError(f"recipe.student: hiddenSize {hidden} is not divisible by heads "
                         f"{heads}; the student cannot be built")
    config.num_hidden_layers = spec.layers
    config.hidden_size = hidden
    config.num_attention_heads = heads
    config.intermediate_size = spec.intermediate_size or config.intermediate_size
    torch.manual_seed(0)
    try:
        student = type(teacher)(config)
    except Exception as exc:
        raise BuildError(f"recipe.student: the student cannot be built: {exc}") from exc
    mapping = layer_map(n_teacher, spec.layers)
    source = teacher.state_dict()
    target = student.state_dict()
    plan = None
    copied = sliced = fresh = 0
    with torch.no_grad():
        for name, tensor in target.items():
            match = _LAYER.search(name)
            from_name = name
            teacher_layer = None
            if match:
                teacher_layer = mapping[int(match.group(1))]
                from_name = name[:match.start()] + f".layer.{teacher_layer}." + name[match.end():]
            value = source.get(from_name)
            if value is not None and value.shape == tensor.shape:
                tensor.copy_(value)
                copied += 1
                continue
            if value is not None and value.dim() == tensor.dim() and all(
                    a >= b for a, b in zip(value.shape, tensor.shape, strict=True)):
                if plan is None:
                    plan = _width_plan(teacher, config, mapping, ffn_norms)
                cut = _slice_like(name, value, tensor.shape, plan, teacher_layer,
                                  teacher_hidden)
                if cut is not None:
                    tensor.copy_(cut)
                    sliced += 1
                    continue
            fresh += 1
    student.load_state_dict(target)
    residual = None
    if hidden != teacher_hidden:
        plan = plan or _width_plan(teacher, config, mapping, ffn_norms)
        residual = plan["residual"]
    align = Alignment(layers=mapping, residual=residual)
    return student.eval(), {"layers": spec.layers, "hiddenSize": hidden, "heads": heads,
                            "intermediateSize": config.intermediate_size,
                            "initialisedFrom": mapping, "tensorsCopied": copied,
                            "tensorsNarrowed": sliced, "tensorsFresh": fresh,
                            "ffnRanking": "weight" if ffn_norms is None else "activation"
                            }, align


def save(model: Any, preprocessor: Any, out_dir: Path) -> Path:
    """A normal transformers model directory (safetensors + the tokenizer or image
    processor) the server loads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    preprocessor.save_pretrained(out_dir)
    return out_dir
