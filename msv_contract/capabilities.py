"""What the model server can serve: framework x task x optimization, in one table.

Each `Framework` record says how the server loads it (the backend class), which runtime
image and pip extra carry it, which tasks and optimizations it serves, and the message a
variant gets when it asks for an optimization the framework cannot apply. Each
`Quantization` says which devices run it and how many bytes a parameter takes.

Readers: the operator's spec validation (`msv_operator.spec`), the server's backend
registry (`model_server.backends`) and settings, `model-server optimize`'s choices, the
CRD's enums (held equal by tests/unit/test_contract.py) and the table in
docs/optimization.md (`python -m msv_contract` prints it; the same test holds it equal).

Adding a framework: a record in `FRAMEWORKS` plus its backend module; the CRD's enum.
Adding a quantization: a record in `QUANTIZATIONS`, the frameworks that apply it, and the
code that applies it (model_server/optimize/); the CRD's enum.
"""

from __future__ import annotations

from dataclasses import dataclass

DEVICES = ("cpu", "cuda")
"""Devices a server can run on (`MODEL_SERVER_DEVICE`; `auto` picks cuda when present)."""


@dataclass(frozen=True)
class Quantization:
    name: str
    """The value of ``optimization.quantization`` and ``MODEL_SERVER_QUANTIZATION``."""
    devices: tuple[str, ...]
    """Devices it runs on."""
    bytes_per_parameter: float
    """Weight storage after it is applied (fp32 is 4)."""
    summary: str
    """One line for the docs' table."""


@dataclass(frozen=True)
class Framework:
    name: str
    """The value of ``spec.model.framework`` and ``MODEL_SERVER_FRAMEWORK``."""
    backend: str
    """``module:Class`` of the server backend that loads it (imported lazily)."""
    runtime: str
    """The runtime (ML framework) its server image must carry."""
    extra: str
    """The pip extra of this project that installs that runtime."""
    platform: str
    """OIP v2 model metadata ``platform``."""
    tasks: tuple[str, ...]
    """Tasks it serves by pipeline; empty: it serves tensors by its own signature."""
    quantizations: tuple[str, ...]
    pruning: tuple[str, ...]
    """Pruning methods it applies at load."""
    unsupported_optimization: str
    """Why a variant's optimization outside the above is refused (InvalidSpec message)."""
    model_files: tuple[str, ...]
    """Globs that mark a model directory of this framework (``MODEL_SERVER_FRAMEWORK=auto``);
    a single-file model is recognised by the suffix of a ``*.suffix`` glob."""


NONE = "none"
"""No quantization, no pruning: the value the spec and the server default to."""

QUANTIZATIONS: dict[str, Quantization] = {q.name: q for q in (
    Quantization(NONE, DEVICES, 4.0, "the model as saved (fp32)"),
    Quantization("dynamic-int8", DEVICES, 1.0,
                 "int8 weights: torch dynamic quantization on CPU, torchao int8 weight-only "
                 "on GPU; TFLite dynamic range for TensorFlow"),
    Quantization("float16", DEVICES, 2.0, "half precision; TFLite float16 for TensorFlow"),
    Quantization("bfloat16", DEVICES, 2.0, "bfloat16 (fast on AMX/AVX512-BF16 CPUs and GPUs)"),
)}

PRUNING_METHODS = ("unstructured", "structured")
"""``optimization.pruning.method``: unstructured zeroes weights; structured removes neurons."""

TASKS = ("text-classification", "text-generation", "image-classification")
"""Pipeline tasks the server serves (``spec.model.task``, ``MODEL_SERVER_TASK``)."""

GENERATION_TASKS = ("text-generation",)
"""Tasks served by /generate and the OpenAI-compatible API."""

FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (
    Framework(
        name="transformers",
        backend="model_server.backends.transformers_backend:TransformersBackend",
        runtime="torch", extra="torch", platform="pytorch_transformers",
        tasks=TASKS,
        quantizations=tuple(QUANTIZATIONS),
        pruning=PRUNING_METHODS,
        unsupported_optimization="",
        model_files=("config.json",),
    ),
    Framework(
        name="torchscript",
        backend="model_server.backends.torchscript_backend:TorchScriptBackend",
        runtime="torch", extra="torch", platform="pytorch_libtorch",
        tasks=(),
        quantizations=(NONE, "float16", "bfloat16"),
        pruning=("unstructured",),
        unsupported_optimization=(
            "TorchScript models have compiled layer shapes; "
            "dynamic-int8 and structured pruning need framework transformers"),
        model_files=("*.pt", "*.torchscript"),
    ),
    Framework(
        name="tensorflow",
        backend="model_server.backends.tensorflow_backend:TensorFlowBackend",
        runtime="tensorflow", extra="tensorflow", platform="tensorflow_savedmodel",
        tasks=(),
        quantizations=(NONE, "dynamic-int8", "float16"),
        pruning=("unstructured",),
        unsupported_optimization=(
            "TensorFlow variants support dynamic-int8, float16 and unstructured pruning"),
        model_files=("saved_model.pb", "*.keras"),
    ),
)}

FRAMEWORK_NAMES = tuple(FRAMEWORKS)
QUANTIZATION_NAMES = tuple(QUANTIZATIONS)


def supports(framework: str, quantization: str = NONE, pruning: str = NONE) -> bool:
    """Whether `framework` applies this quantization and pruning method (unknown: False)."""
    fw = FRAMEWORKS.get(framework)
    if fw is None:
        return False
    return quantization in fw.quantizations and (pruning == NONE or pruning in fw.pruning)


def markdown_table() -> str:
    """The docs' capability table (docs/optimization.md holds exactly this)."""
    quants = [q for q in QUANTIZATION_NAMES if q != NONE]
    head = ["framework", "runtime (extra)", "tasks", *quants,
            *(f"{m} pruning" for m in PRUNING_METHODS)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fw in FRAMEWORKS.values():
        cells = [f"`{fw.name}`", f"{fw.runtime} (`{fw.extra}`)",
                 ", ".join(fw.tasks) or "any (tensor signature)"]
        cells += ["yes" if q in fw.quantizations else "no" for q in quants]
        cells += ["yes" if m in fw.pruning else "no" for m in PRUNING_METHODS]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("| quantization | devices | bytes per parameter | what it is |")
    rows.append("|---|---|---|---|")
    for q in QUANTIZATIONS.values():
        rows.append(f"| `{q.name}` | {', '.join(q.devices)} | {q.bytes_per_parameter:g} "
                    f"| {q.summary} |")
    return "\n".join(rows) + "\n"
