"""A training recipe written as a small TOML file (``depthscape train --recipe FILE``).

The file sets the fields of :class:`~depthscape.core.recipes.Recipe`, no more (the format
is in ``docs/api.md``; an example is ``docs/examples/recipe.toml``)::

    name = "myresnet"            # the run's name (plug-in models; default: from the spec)
    optimizer = "sgd"            # "sgd" or "adam"
    lr = 0.1
    momentum = 0.9               # sgd only
    weight_decay = 1e-4
    batch_size = 128
    iterations = 64000           # or epochs = 50: exactly one
    log_every = 100              # iterations between CSV rows (iteration recipes)

    [schedule]
    kind = "step"                # "step" (lr / decay at each milestone) or "cosine"
    milestones = [32000, 48000]  # iterations
    decay = 10.0
    warmup_lr = 0.01             # the lr of the first warmup_iterations iterations
    warmup_iterations = 400
    # t_max = 50                 # cosine: its period in epochs (default: the epochs)

    [preprocess]
    pixel_scale = 255.0          # input = pixels (0..255) * pixel_scale / 255 - mean
    subtract_mean = true         # the dataset's per-channel mean (needs pixel_scale 255)
    augment = true               # RandomCrop(padding=4) + RandomHorizontalFlip

Every unknown key and every bad value is one line naming the file, the key and what it
may be, before any work.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from depthscape.core.atomic import refuse_special_file
from depthscape.core.errors import UserError
from depthscape.core.recipe import Recipe

_TOP = {"name", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "iterations",
        "epochs", "log_every", "schedule", "preprocess"}
_SCHEDULE = {"kind", "milestones", "decay", "warmup_lr", "warmup_iterations", "t_max"}
_PREPROCESS = {"pixel_scale", "subtract_mean", "augment"}
#: The largest recipe file read (a recipe is a dozen lines).
MAX_RECIPE_BYTES = 1 << 20
#: The largest batch a recipe may ask for: beyond any dataset's training split depthscape
#: reads, and a batch of 32x32 RGB float inputs this large alone takes 12 GiB.
MAX_BATCH_SIZE = 1 << 20


def toml_reader():
    """The TOML reader of this Python: tomllib from 3.11, tomli on 3.10 (a one-line
    UserError where it is not installed)."""
    if sys.version_info >= (3, 11):
        # deferred on purpose: tomllib exists from Python 3.11 only (3.10 reads with tomli)
        import tomllib

        return tomllib
    try:
        # deferred on purpose: the TOML reader of Python < 3.11 (tomllib from 3.11)
        import tomli
    except ModuleNotFoundError:
        raise UserError("reading a TOML recipe on Python 3.10 needs tomli: pip install tomli") \
            from None
    return tomli


class _Reader:
    """The values of one table of the file, each checked as it is read."""

    def __init__(self, path: Path, table: dict, where: str, known: set[str]):
        self.path, self.table, self.where = path, table, where
        unknown = sorted(set(table) - known)
        if unknown:
            raise self.error(unknown[0], f"is not a recipe setting (known: {', '.join(sorted(known))})")

    def error(self, key: str, text: str) -> UserError:
        return UserError(f"recipe {self.path}: {self.where}{key} {text}")

    def has(self, key: str) -> bool:
        return key in self.table

    def number(self, key: str, default: float | None, lo: float = 0.0, lo_open: bool = False,
               hi: float = math.inf, hi_open: bool = False) -> float | None:
        value = self.table.get(key, default)
        if key not in self.table:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            what = " (it overflows to infinity)" if isinstance(value, float) and math.isinf(value) \
                else ""
            raise self.error(key, f"must be a finite number, got {value!r}{what}")
        if value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise self.error(key, f"must be in {left}{lo:g}, {hi:g}{right}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int | None, lo: int = 1, hi: int = 2**31 - 1
                ) -> int | None:
        value = self.table.get(key, default)
        if key not in self.table:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {value!r}")
        if value < lo:
            raise self.error(key, f"must be at least {lo}, got {value}")
        if value > hi:
            raise self.error(key, f"must be at most {hi}, got {value}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.table.get(key, default)
        if value not in choices:
            raise self.error(key, f"must be {' or '.join(repr(c) for c in choices)}, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def table_of(self, key: str, known: set[str]) -> _Reader:
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, "must be a table ([" + key + "])")
        return _Reader(self.path, value, f"[{key}] ", known)


def read_recipe_file(path: str | os.PathLike, default_name: str = "recipe") -> Recipe:
    """The :class:`Recipe` a TOML file describes (see the module doc); its ``name`` is the
    file's ``name`` or ``default_name``."""
    path = Path(path).expanduser()
    toml = toml_reader()
    refuse_special_file(path, "recipe")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"recipe file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"recipe {path} is a directory, not a TOML file") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise UserError(f"recipe {path} is larger than {MAX_RECIPE_BYTES} bytes: not a recipe")
    try:
        data = toml.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"recipe {path} is not UTF-8 text (byte {error.start}): TOML files are "
                        "UTF-8; save it as such") from None
    except toml.TOMLDecodeError as error:
        raise UserError(f"recipe {path} is not valid TOML: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise UserError(f"recipe {path} is nested too deeply to read") from None
    top = _Reader(path, data, "", _TOP)
    return _recipe(top, path, data.get("name", default_name))


def _recipe(top: _Reader, path: Path, name: Any) -> Recipe:
    if not isinstance(name, str) or not name:
        raise top.error("name", f"must be a non-empty string, got {name!r}")
    optimizer = top.choice("optimizer", "sgd", ("sgd", "adam"))
    if optimizer == "adam" and top.has("momentum"):
        raise top.error("momentum", "applies to sgd only (Adam's betas are PyTorch's defaults)")
    if top.has("iterations") == top.has("epochs"):
        raise UserError(f"recipe {path}: give exactly one of iterations and epochs")
    unit = "iteration" if top.has("iterations") else "epoch"
    length = top.integer("iterations" if unit == "iteration" else "epochs", None)
    fields = dict(
        name=name, optimizer=optimizer, unit=unit, length=length,
        lr=top.number("lr", None, lo_open=True),
        batch_size=top.integer("batch_size", 128, hi=MAX_BATCH_SIZE),
        momentum=top.number("momentum", 0.0, hi=1.0, hi_open=True),
        weight_decay=top.number("weight_decay", 0.0),
        log_every=top.integer("log_every", 100))
    if fields["lr"] is None:
        raise UserError(f"recipe {path}: lr is missing (the base learning rate)")
    fields.update(_schedule(top.table_of("schedule", _SCHEDULE), unit, length))
    fields.update(_preprocess(top.table_of("preprocess", _PREPROCESS)))
    return Recipe(**fields)


def _schedule(table: _Reader, unit: str, length: int) -> dict:
    kind = table.choice("kind", "step", ("step", "cosine"))
    if kind == "cosine":
        for key in ("milestones", "decay", "warmup_lr", "warmup_iterations"):
            if table.has(key):
                raise table.error(key, "applies to the step schedule, not to cosine")
        t_max = table.integer("t_max", length if unit == "epoch" else None)
        if t_max is None:
            raise table.error("t_max", "is needed (epochs) for a cosine schedule over iterations")
        return {"schedule": "cosine", "cosine_t_max": t_max}
    if table.has("t_max"):
        raise table.error("t_max", "applies to the cosine schedule, not to step")
    milestones = table.table.get("milestones", [])
    if (not isinstance(milestones, list)
            or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones)
            or milestones != sorted(set(milestones))):
        raise table.error("milestones", f"must be increasing whole numbers of iterations, got "
                                        f"{milestones!r}")
    if table.has("warmup_lr") != table.has("warmup_iterations"):
        raise UserError(f"recipe {table.path}: [schedule] warmup_lr and warmup_iterations go "
                        "together")
    return {"schedule": "step", "milestones": tuple(milestones),
            "decay": table.number("decay", 10.0, lo_open=True),
            "warmup_lr": table.number("warmup_lr", None, lo_open=True),
            "warmup_length": table.integer("warmup_iterations", 0)}


def _preprocess(table: _Reader) -> dict:
    scale = table.number("pixel_scale", 1.0, lo_open=True, hi=1e6)
    subtract = table.flag("subtract_mean", False)
    if subtract and scale != 255.0:
        raise table.error("subtract_mean", "needs pixel_scale = 255 (the dataset's mean is "
                                           "on the 0..255 scale)")
    return {"pixel_scale": scale, "subtract_mean": subtract,
            "augment": table.flag("augment", False)}


def read_model_recipe(path: str | os.PathLike, model: str) -> Recipe:
    """A recipe file for one of depthscape's own models (``model``, canonical): its runs
    keep the model's name, so a ``name`` other than it is refused."""
    recipe = read_recipe_file(path, model)
    if recipe.name != model:
        raise UserError(f"recipe {Path(path).expanduser()}: name names a --model-from run; "
                        f"depthscape's {model} keeps its own name")
    return recipe
