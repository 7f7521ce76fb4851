"""Checks of the experiment notebook's parameters, before any data is read.

The defaults live in one place, the notebook's cell tagged ``parameters``;
this module knows what each parameter may hold. Unknown names are errors,
so that a typo (``lerning_rate``) never silently leaves the default in place.
"""
from __future__ import annotations

import ast
import difflib
import re
import types
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable, Mapping

from ..common.paths import EXPERIMENT_NOTEBOOK, resolve_path

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


class ParameterError(ValueError):
    """A parameter has a wrong type or value; the message names it."""


@dataclass(frozen=True)
class Rule:
    kind: str  # "int", "float", "bool", "str", "path", "weights"
    requirement: str  # what a valid value is, for the error message
    valid: Callable[[Any], bool] = lambda value: True
    optional: bool = False  # whether None is allowed


RULES: dict[str, Rule] = {
    "experiment": Rule("str", "a run name of letters, digits, '_', '-', '.'", lambda v: re.fullmatch(r"[\w.-]+", v) is not None),
    "data_dir": Rule("path", "None or the data set folder", optional=True),
    "results_dir": Rule("path", "a folder for the results"),
    "graph_dir": Rule("path", "a folder for the graphs"),
    "image_size": Rule("int", "an integer >= 32 (MobileNet's minimum)", lambda v: v >= 32),
    "batch_size": Rule("int", "an integer >= 1", lambda v: v >= 1),
    "epochs": Rule("int", "an integer >= 1", lambda v: v >= 1),
    "hidden_layers": Rule("int", "an integer >= 0", lambda v: v >= 0),
    "dense_units": Rule("int", "an integer >= 1", lambda v: v >= 1),
    "dropout": Rule("float", "a number in [0, 1)", lambda v: 0 <= v < 1),
    "learning_rate": Rule("float", "a number > 0", lambda v: v > 0),
    "weights": Rule("weights", "'imagenet', None, or the path of an existing weights file", optional=True),
    "train_base": Rule("bool", "True (fine-tune all of MobileNet) or False (frozen backbone)"),
    "seed": Rule("int", "an integer >= 0 (the training seed)", lambda v: v >= 0),
    "split_seed": Rule("int", "an integer >= 0 (the split's seed)", lambda v: v >= 0),
    "val_fraction": Rule("float", "a number in (0, 1)", lambda v: 0 < v < 1),
    "test_fraction": Rule("float", "a number in (0, 1)", lambda v: 0 < v < 1),
    "strict_data": Rule("bool", "True (unusable files are an error) or False (skipped and listed)"),
    "cache_dir": Rule("path", "None (cache decoded images in memory) or a folder for a disk cache", optional=True),
    "batchnorm_momentum": Rule("float", "None (Keras' 0.99) or a number in (0, 1)", lambda v: 0 < v < 1, optional=True),
    "deterministic": Rule("bool", "True (reproducible TensorFlow ops) or False"),
    "fast": Rule("bool", "False, or True to train the head on cached backbone features (needs train_base=False)"),
    "feature_dir": Rule("path", "a folder for cached backbone features (fast mode), image fingerprints and scans"),
    "precision": Rule("str", f"one of {', '.join(repr(p) for p in PRECISIONS)}", lambda v: v in PRECISIONS),
    "jit_compile": Rule("bool", "False, or True to compile training with XLA"),
    "input_region": Rule("str", "'full', 'lungs' (only the lungs kept) or 'no_lungs' (the lungs blacked out)",
                         lambda v: v in ("full", "lungs", "no_lungs")),
    "keep_label_conflicts": Rule("bool", "False (a near-duplicate group filed under two classes is left out) or True"),
    "unfamiliar_method": Rule("str", "'mahalanobis' or 'knn' (the unfamiliar-image guard's score, analysis/unfamiliar.py)",
                              lambda v: v in ("mahalanobis", "knn")),
    "holdout_source": Rule("str", "None or '<Class>=<source>' (a class's images from that source held out of training)",
                           lambda v: "=" in v and all(part.strip() for part in v.split("=", 1)), optional=True),
}

# Names every IPython kernel defines; they are not parameters.
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def notebook_variables(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The plain variables of a notebook's namespace: no modules, functions, classes or _private names."""
    return {
        name: value
        for name, value in namespace.items()
        if not name.startswith("_")
        and name not in _KERNEL_NAMES
        and not isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type))
    }


def check_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter, checked and normalised (ints given for floats become floats).

    ``namespace`` is the notebook's ``globals()`` or any mapping of parameter
    names to values; a name that is not a parameter is an error.
    """
    given = notebook_variables(namespace)
    unknown = sorted(set(given) - set(RULES))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, RULES, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ParameterError(f"Unknown parameter {', '.join(hints)}. Known parameters: {', '.join(RULES)}.")
    missing = [name for name in RULES if name not in given]
    if missing:
        raise ParameterError(f"Parameter(s) {', '.join(missing)} not set; the notebook's parameters cell defines them all.")
    params = {name: check_value(name, given[name]) for name in RULES}
    if params["val_fraction"] + params["test_fraction"] >= 1:
        raise ParameterError(
            f"val_fraction + test_fraction must be below 1, got {params['val_fraction']} + {params['test_fraction']}."
        )
    folder = resolve_path(params["results_dir"]) / params["experiment"]
    if folder.resolve().parent != resolve_path(params["results_dir"]).resolve():
        raise ParameterError(
            f"Parameter experiment is {params['experiment']!r}: its run folder {folder} would not sit inside "
            f"results_dir ({params['results_dir']}). Name the run with letters, digits, '_', '-' and '.', not '.' or '..'."
        )
    if params["fast"] and params["train_base"]:
        raise ParameterError(
            "fast=True trains only the head on cached backbone features, which needs a frozen backbone: "
            "set train_base=False, or fast=False to fine-tune all of MobileNet."
        )
    return params


def check_value(name: str, value: Any) -> Any:
    """One parameter's value, checked against its rule; raises ParameterError naming it."""
    rule = RULES[name]
    if value is None:
        if rule.optional:
            return None
        raise ParameterError(f"Parameter {name} must be {rule.requirement}, got None.")
    if rule.kind == "weights":
        return _check_weights(value)
    converted = _convert(rule.kind, value)
    if converted is _WRONG_TYPE:
        raise ParameterError(f"Parameter {name} must be {rule.requirement}, got {value!r} ({type(value).__name__}).")
    if not rule.valid(converted):
        raise ParameterError(f"Parameter {name} must be {rule.requirement}, got {value!r}.")
    return converted


_WRONG_TYPE = object()


def _convert(kind: str, value: Any) -> Any:
    if kind == "bool":
        return value if isinstance(value, bool) else _WRONG_TYPE
    if isinstance(value, bool):  # bool is an int subclass, never a number here
        return _WRONG_TYPE
    if kind == "int":
        return int(value) if isinstance(value, Integral) else _WRONG_TYPE
    if kind == "float":
        return float(value) if isinstance(value, Real) else _WRONG_TYPE
    if kind in ("str", "path"):
        return str(value) if isinstance(value, (str, Path)) and str(value) else _WRONG_TYPE
    raise AssertionError(kind)


def _check_weights(value: Any) -> str:
    if value == "imagenet":
        return value
    if not isinstance(value, (str, Path)):
        raise ParameterError(f"Parameter weights must be {RULES['weights'].requirement}, got {value!r} ({type(value).__name__}).")
    path = resolve_path(value)
    if path.is_file():
        return str(path)
    looks_like_path = "/" in str(value) or "\\" in str(value) or str(value).endswith(".h5")
    if looks_like_path:
        raise ParameterError(f"Parameter weights names the file {path}, which does not exist.")
    raise ParameterError(f"Parameter weights is {value!r}: unknown; use 'imagenet', None, or the path of a weights file.")


def notebook_defaults(notebook: str | Path = EXPERIMENT_NOTEBOOK) -> dict[str, Any]:
    """The values of the notebook's ``parameters`` cell: the one place the defaults live."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    return {name: ast.literal_eval(entry["default"]) for name, entry in declared.items()}
