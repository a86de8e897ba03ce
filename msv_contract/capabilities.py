"""What the model server can serve: framework x task x optimization, in one table.

Each `Framework` record says how the server loads it (the backend class), which runtime
carries it, which tasks and optimizations it serves (and on which devices, where a device
cannot run one), and the message a variant gets when it asks for an optimization the
framework cannot apply. Each `Runtime` is one model-server image (``model-server-<name>``):
the pip extra that installs its ML framework and the devices that extra's wheels run on.
Each `Quantization` says which devices run it and how many bytes a parameter takes.

Readers: the operator's spec validation (`msv_operator.spec`), the server's backend
registry (`model_server.backends`) and settings, `model-server optimize`'s choices, the
operator's image choice (`msv_operator.builders.serving_image`, by runtime and device), the
image recipes (`localcluster.images.recipes`: one image per runtime), the CRD's enums (held
equal by tests/unit/test_contract.py) and the table in docs/optimization.md
(`python -m msv_contract` prints it; the same test holds it equal).

Adding a framework: a record in `FRAMEWORKS` plus its backend module; the CRD's enum.
Adding a runtime: a record in `RUNTIMES` (its extra in pyproject.toml); the image recipe,
the operator's image settings and the chart's ``modelServer.images.<runtime>`` follow from it
(the chart's values and schema list it: a unit test says so).
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
class Runtime:
    name: str
    """The ML framework one model-server image carries (image ``model-server-<name>``)."""
    extra: str
    """The pip extra of this project that installs it (beside the server's own extras)."""
    devices: tuple[str, ...]
    """Devices the extra's wheels run on, so the devices its one image serves: torch's PyPI
    wheels bundle the CUDA libraries (the image is also the GPU image); the ``tensorflow``
    wheel brings none (that is ``tensorflow[and-cuda]``), so a GPU image for it is one the
    operator is configured with."""


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("torch", "torch", DEVICES),
    Runtime("tensorflow", "tensorflow", ("cpu",)),
)}
RUNTIME_NAMES = tuple(RUNTIMES)


def image_name(runtime: str) -> str:
    """The name of `runtime`'s model-server image (its repository without the registry):
    the local image builder, the operator's default image references and the chart use it."""
    return f"model-server-{runtime}"


@dataclass(frozen=True)
class Framework:
    name: str
    """The value of ``spec.model.framework`` and ``MODEL_SERVER_FRAMEWORK``."""
    backend: str
    """``module:Class`` of the server backend that loads it (imported lazily)."""
    runtime: str
    """The runtime (``RUNTIMES``) its server image must carry."""
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
    device_limits: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(quantization, the only devices it runs on for this framework), where narrower than
    the quantization's own devices."""
    device_limit_reason: str = ""
    """Why (the message names it when a variant asks for another device)."""
    @property
    def extra(self) -> str:
        """The pip extra that installs this framework's runtime."""
        return RUNTIMES[self.runtime].extra


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


@dataclass(frozen=True)
class Recipe:
    name: str
    """The value of ``variants[].build.recipe`` (``msv_contract.pipeline.RECIPES``)."""
    targets: tuple[tuple[str, str], ...]
    """The (framework, task) pairs ``model-server optimize build`` runs it for: exactly
    these (anything else is refused naming the recipe, framework and task)."""
    summary: str
    """One line for the docs' table."""

    @property
    def frameworks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for f, _ in self.targets))

    def tasks(self, framework: str) -> tuple[str, ...]:
        return tuple(t for f, t in self.targets if f == framework)


_TRANSFORMERS_CLASSIFIERS = (("transformers", "text-classification"),
                             ("transformers", "image-classification"))
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("static-int8", (*_TRANSFORMERS_CLASSIFIERS, ("tensorflow", "image-classification")),
           "int8 weights and activations, the activation ranges calibrated on the data "
           "(TensorFlow: a full-integer TFLite model)"),
    Recipe("prune-recover", _TRANSFORMERS_CLASSIFIERS,
           "structured pruning of FFN neurons, a least-squares refit of each FFN's remaining "
           "outgoing weights on the data, then training to match the source's outputs"),
    Recipe("distill", _TRANSFORMERS_CLASSIFIERS,
           "a smaller student (fewer layers, narrower) trained on the source's outputs and "
           "the hidden states of the layers it starts from"),
)}
RECIPE_NAMES = tuple(RECIPES)
DATA_KINDS = {"image-classification": "images"}
"""What a build's data holds per task (``text`` lines otherwise): the formats are in
``msv_contract.pipeline`` (``IMAGE_*``)."""

FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (
    Framework(
        name="transformers",
        backend="model_server.backends.transformers_backend:TransformersBackend",
        runtime="torch", platform="pytorch_transformers",
        tasks=TASKS,
        quantizations=tuple(QUANTIZATIONS),
        pruning=PRUNING_METHODS,
        unsupported_optimization="",
        model_files=("config.json",),
    ),
    Framework(
        name="torchscript",
        backend="model_server.backends.torchscript_backend:TorchScriptBackend",
        runtime="torch", platform="pytorch_libtorch",
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
        runtime="tensorflow", platform="tensorflow_savedmodel",
        tasks=(),
        quantizations=(NONE, "dynamic-int8", "float16"),
        pruning=("unstructured",),
        unsupported_optimization=(
            "TensorFlow variants support dynamic-int8, float16 and unstructured pruning"),
        model_files=("saved_model.pb", "*.keras"),
        device_limits=(("dynamic-int8", ("cpu",)), ("float16", ("cpu",))),
        device_limit_reason=(
            "TensorFlow's quantized variants are TFLite models, and the TFLite interpreter "
            "runs on the CPU only (a GPU pod would hold its GPU idle)"),
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


def recipe_problem(framework: str, task: str | None, recipe: str) -> str | None:
    """Why ``framework``/``task`` cannot run ``recipe`` (None: it can)."""
    r = RECIPES.get(recipe)
    if r is None:
        return f"{recipe!r} is not one of {', '.join(RECIPE_NAMES)}"
    if framework not in r.frameworks:
        return (f"{recipe} needs a model the pipeline can rebuild: framework "
                f"{' or '.join(r.frameworks)}, not {framework}")
    if task not in r.tasks(framework):
        return (f"{recipe} does not produce {framework} {task or 'task-less'} models (it does "
                f"{framework} {', '.join(r.tasks(framework))})")
    return None


def devices(framework: str, quantization: str = NONE) -> tuple[str, ...]:
    """The devices on which `framework` runs `quantization` (unknown: none)."""
    fw, q = FRAMEWORKS.get(framework), QUANTIZATIONS.get(quantization)
    if fw is None or q is None or quantization not in fw.quantizations:
        return ()
    limit = dict(fw.device_limits).get(quantization, DEVICES)
    return tuple(d for d in q.devices if d in limit)


def markdown_table() -> str:
    """The docs' capability table (docs/optimization.md holds exactly this)."""
    quants = [q for q in QUANTIZATION_NAMES if q != NONE]
    head = ["framework", "runtime (extra)", "tasks", *quants,
            *(f"{m} pruning" for m in PRUNING_METHODS)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fw in FRAMEWORKS.values():
        cells = [f"`{fw.name}`", f"{fw.runtime} (`{fw.extra}`)",
                 ", ".join(fw.tasks) or "any (tensor signature)"]
        cells += [_support(fw, q) for q in quants]
        cells += ["yes" if m in fw.pruning else "no" for m in PRUNING_METHODS]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("| runtime | image | pip extra | devices its wheels run on | frameworks |")
    rows.append("|---|---|---|---|---|")
    for rt in RUNTIMES.values():
        served = ", ".join(f"`{f.name}`" for f in FRAMEWORKS.values() if f.runtime == rt.name)
        rows.append(f"| {rt.name} | `{image_name(rt.name)}` | `{rt.extra}` "
                    f"| {', '.join(rt.devices)} | {served} |")
    rows.append("")
    rows.append("| quantization | devices | bytes per parameter | what it is |")
    rows.append("|---|---|---|---|")
    for q in QUANTIZATIONS.values():
        rows.append(f"| `{q.name}` | {', '.join(q.devices)} | {q.bytes_per_parameter:g} "
                    f"| {q.summary} |")
    rows.append("")
    rows.append("| recipe (`build.recipe`) | framework: tasks | what it does |")
    rows.append("|---|---|---|")
    for r in RECIPES.values():
        able = "; ".join(f"`{f}`: {', '.join(r.tasks(f))}" for f in r.frameworks)
        rows.append(f"| `{r.name}` | {able} | {r.summary} |")
    return "\n".join(rows) + "\n"


def _support(fw: Framework, quantization: str) -> str:
    """A framework row's cell: yes / no / yes on the devices it is limited to."""
    if quantization not in fw.quantizations:
        return "no"
    limited = devices(fw.name, quantization)
    return "yes" if limited == QUANTIZATIONS[quantization].devices else (
        f"yes ({', '.join(limited)} only)")
