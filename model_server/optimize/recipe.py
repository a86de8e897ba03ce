"""The recipe of `model-server optimize build`: parsed and checked before any work starts.

The recipe is JSON (msv_contract.pipeline: the operator hashes it as given into the artifact
key): ``{"recipe": one of pipeline.RECIPES, "framework", "task", ...}`` with per recipe

- ``static-int8``: ``calibrationSamples`` (default 128);
- ``prune-recover``: ``amount`` (fraction of FFN neurons, 0 < amount <=
  pipeline.MAX_PRUNE_AMOUNT), ``ranking`` (one of pipeline.RANKINGS, default ``activation``:
  neurons ranked on ``calibrationSamples`` of the data; ``weight``: by weights alone, as at
  load time), ``steps`` or ``epochs``, ``learningRate``;
- ``distill``: ``student`` (``layers``, optional ``hiddenSize``, ``intermediateSize``,
  ``heads``), ``steps`` or ``epochs``, ``learningRate``, ``hiddenWeight`` (default 1: the
  weight of the hidden-state term, model_server.optimize.train; 0 turns it off);

(``learningRate``'s and ``temperature``'s defaults are per recipe: DEFAULT_LEARNING_RATES,
DEFAULT_TEMPERATURES) and for all:
``budget.maxSeconds``, ``heldOut`` (fraction, default 0.2), ``seed``, and for the training
recipes ``batchSize``, ``temperature``, ``maxLength``; for TensorFlow models (tensor
inputs) ``inputRange`` ([low, high], default [0, 1]: what the image pixels 0..255 become).
The (recipe, framework, task) triples implemented are msv_contract.capabilities.RECIPES's.
Every error names the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from msv_contract import capabilities as caps
from msv_contract import pipeline
from msv_contract.pipeline import DEFAULT_RANKING, RANKINGS, Student

DEFAULT_HELD_OUT = 0.2
DEFAULT_CALIBRATION_SAMPLES = 128
DEFAULT_STEPS = 100
DEFAULT_LEARNING_RATES = {"prune-recover": 1e-4, "distill": 1e-3}
"""Per training recipe. Recovery starts next to the source and needs small steps; a student
starts far from it (agreement ~0.3 on bench/pipeline.py's source) and learns 1e-3's steps."""
DEFAULT_BATCH_SIZE = 16
DEFAULT_TEMPERATURES = {"prune-recover": 2.0, "distill": 1.0}
"""Per training recipe. A student is judged on its top-1 agreement, which T = 1 weights most;
distilling on bench/pipeline.py's task it agreed as well or better than at T = 2 (0.952 vs
0.939 on 6,000 lines, 0.956 vs 0.954 on 12,000: bench/results/pipeline_exploration.md)."""
DEFAULT_HIDDEN_WEIGHT = 1.0
DEFAULT_MAX_LENGTH = 128
DEFAULT_INPUT_RANGE = (0.0, 1.0)


class BuildError(Exception):
    """A build that cannot go on; the message is the one-line cause for the operator."""


@dataclass(frozen=True)
class Recipe:
    name: str
    framework: str
    task: str
    raw: dict[str, Any] = field(repr=False)
    held_out: float = DEFAULT_HELD_OUT
    seed: int = 0
    max_seconds: float | None = None
    steps: int | None = None
    epochs: float | None = None
    learning_rate: float = DEFAULT_LEARNING_RATES["prune-recover"]
    batch_size: int = DEFAULT_BATCH_SIZE
    temperature: float = DEFAULT_TEMPERATURES["prune-recover"]
    max_length: int = DEFAULT_MAX_LENGTH
    amount: float = 0.0
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    ranking: str = DEFAULT_RANKING
    student: Student | None = None
    hidden_weight: float = 0.0
    input_range: tuple[float, float] = DEFAULT_INPUT_RANGE

    @property
    def data_kind(self) -> str:
        """``images`` or ``text``: what the data holds (capabilities.DATA_KINDS)."""
        return caps.DATA_KINDS.get(self.task, "text")


def _number(raw: dict[str, Any], name: str, default: Any, *, integer: bool = False,
            low: float | None = None, high: float | None = None, low_open: bool = False,
            where: str = "recipe") -> Any:
    value = raw.get(name, default)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise BuildError(f"{where}.{name} must be {kind}, not {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise BuildError(f"{where}.{name} must be {'>' if low_open else '>='} {low}, not {value}")
    if high is not None and value > high:
        raise BuildError(f"{where}.{name} must be <= {high}, not {value}")
    return value


def parse_recipe(text: str) -> Recipe:
    """The recipe from its JSON text; BuildError naming the field on anything wrong."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise BuildError(f"recipe is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BuildError("recipe must be a JSON object")
    name = raw.get("recipe")
    if name not in pipeline.RECIPES:
        raise BuildError(f"recipe.recipe must be one of {', '.join(pipeline.RECIPES)}, "
                         f"not {name!r}")
    framework, task = raw.get("framework"), raw.get("task")
    if (framework, task) not in caps.RECIPES[name].targets:
        supported = ", ".join(f"{f}/{t}" for f, t in caps.RECIPES[name].targets)
        raise BuildError(f"recipe {name!r} is not implemented for framework {framework!r} "
                         f"task {task!r} (supported: {supported})")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict):
        raise BuildError("recipe.budget must be an object")
    common: dict[str, Any] = {
        "name": name, "framework": framework, "task": task, "raw": raw,
        "held_out": _number(raw, "heldOut", DEFAULT_HELD_OUT, low=0, high=0.9, low_open=True),
        "seed": _number(raw, "seed", 0, integer=True, low=0),
        "max_seconds": _number(budget, "maxSeconds", None, low=0, low_open=True,
                               where="recipe.budget"),
        "batch_size": _number(raw, "batchSize", DEFAULT_BATCH_SIZE, integer=True, low=1),
        "max_length": _number(raw, "maxLength", DEFAULT_MAX_LENGTH, integer=True, low=2),
    }
    if "inputRange" in raw:
        if framework != "tensorflow":
            raise BuildError("recipe.inputRange applies to framework tensorflow only (a "
                             "transformers model's image processor scales its pixels)")
        value = raw["inputRange"]
        if (not isinstance(value, list) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
                or not value[0] < value[1]):
            raise BuildError(f"recipe.inputRange must be [low, high] numbers with low < high, "
                             f"not {value!r}")
        common["input_range"] = (float(value[0]), float(value[1]))
    if name in ("static-int8", "prune-recover"):
        common["calibration_samples"] = _number(
            raw, "calibrationSamples", DEFAULT_CALIBRATION_SAMPLES, integer=True, low=1)
    if name == "static-int8":
        return Recipe(**common)
    steps = _number(raw, "steps", None, integer=True, low=1)
    epochs = _number(raw, "epochs", None, low=0, low_open=True)
    if steps is not None and epochs is not None:
        raise BuildError("recipe: give steps or epochs, not both")
    if steps is None and epochs is None:
        steps = DEFAULT_STEPS
    common.update(
        steps=steps, epochs=epochs,
        learning_rate=_number(raw, "learningRate", DEFAULT_LEARNING_RATES[name], low=0,
                              low_open=True, high=1),
        temperature=_number(raw, "temperature", DEFAULT_TEMPERATURES[name], low=0,
                            low_open=True),
    )
    if name == "prune-recover":
        if "amount" not in raw:
            raise BuildError("recipe.amount is required for prune-recover")
        common["amount"] = _number(raw, "amount", None, low=0, low_open=True,
                                   high=pipeline.MAX_PRUNE_AMOUNT)
        ranking = raw.get("ranking", DEFAULT_RANKING)
        if ranking not in RANKINGS:
            raise BuildError(f"recipe.ranking must be one of {', '.join(RANKINGS)}, "
                             f"not {ranking!r}")
        common["ranking"] = ranking
        return Recipe(**common)
    student = raw.get("student")
    if not isinstance(student, dict):
        raise BuildError("recipe.student (an object with layers) is required for distill")
    w = "recipe.student"
    common["hidden_weight"] = _number(raw, "hiddenWeight", DEFAULT_HIDDEN_WEIGHT, low=0)
    common["student"] = Student(
        layers=_number(student, "layers", None, integer=True, low=1, where=w)
        or _missing(f"{w}.layers"),
        hidden_size=_number(student, "hiddenSize", None, integer=True, low=1, where=w),
        intermediate_size=_number(student, "intermediateSize", None, integer=True, low=1,
                                  where=w),
        heads=_number(student, "heads", None, integer=True, low=1, where=w),
    )
    return Recipe(**common)


def _missing(name: str) -> Any:
    raise BuildError(f"{name} is required")
