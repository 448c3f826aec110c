"""The registry behind `slt-superposition reproduce NAME`, and what every experiment shares.

Each experiment is a module `experiments/<snake_name>.py` exposing

    run(out_dir: Path, *, size: str = "default", progress: bool = True, **options) -> xr.Dataset

which writes its dataset, figures and `report.md` under `out_dir`. `size` is one of `SIZES`:
"quick" (minutes on a laptop CPU; `reproduce --quick`), "default", or "full" (a larger grid,
sized for a GPU; `reproduce --full`) where the experiment lists it in `Experiment.sizes`.
`options` come only from the `reproduce` command: `only` (`--only CASE`: just these named cases of a
multi-case experiment) and the experiment's own keyword options (`--set NAME=VALUE`). An experiment
whose settings are one dataclass takes it as `config` and its fields as `**fields` (`config_type`,
`replace_fields`), so `--set FIELD=VALUE` reaches every field; a parameter that takes a
settings object (a dataclass) is set from Python only (`python_only`). Every report opens with `header`
(title, the command that made it, one paragraph of what it found). Modules are imported only
when run, so a broken one does not stop the others.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import xarray as xr

from slt_superposition import markdown
from slt_superposition.errors import InputError

SIZES = ("quick", "default", "full")
SIZE_FLAGS = {"quick": "--quick", "full": "--full"}  # reproduce's option for each size but the default


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: its `reproduce` name, one line of what it shows, the sizes it
    has, and whether it has named cases (`reproduce --only CASE`)."""

    name: str
    summary: str
    sizes: tuple[str, ...] = ("quick", "default")
    cases: bool = False
    runner: str = ""  # "module:function" when not experiments/<snake_name>.py's `run`

    @property
    def module(self) -> str:
        return self.runner.split(":")[0] if self.runner else "experiments." + self.name.replace("-", "_")

    @property
    def function(self) -> str:
        return self.runner.split(":")[1] if self.runner else "run"


EXPERIMENTS = {
    e.name: e
    for e in (
        Experiment("tms-pentagon", "Elhage et al.: n=5, m=2, p=0.05 learns a regular pentagon (D_i = 2/5, 72 degrees)"),
        Experiment("tms-phase-diagram", "Elhage et al.: n=2, m=1 phase diagram against the analytic losses"),
        Experiment("tms-sticky-dimensions", "Elhage et al.: n=200, m=20 sparsity sweep, D_i sticks at 1, 3/4, 2/3, 1/2, 2/5, ..."),
        Experiment("tms-critical-points", "Chen et al. 2023: the k-gon critical-point classes of the 6-feature, "
                                          "2-neuron TMS, derived (Hessian rank, theory lambda, the n at which the "
                                          "leading free energy prefers each)",
                   sizes=("default",)),
        Experiment("dln-validation", "Furman & Lau / Aoyagi: LLC of deep linear networks against exact learning "
                                     "coefficients", cases=True),
        Experiment("kgon-llc", "Chen et al. 2023: LLC of the TMS 5-gon and 6-gon critical points (theory 7 and 8.5)",
                   cases=True),
        Experiment("kgon-bias-study", "how step size, batch, chain length and localization move the LLC estimate "
                                      "of the refined 6-gon", sizes=("default",), runner="experiments.kgon_llc:bias_study"),
        Experiment("llc-localization", "the k-gon LLC estimate against the localization gamma", cases=True),
        Experiment("step-check-coupling", "the step-size check with and without coupled chains, on the refined 6-gon",
                   sizes=("default",)),
        Experiment("normal-crossing", "devinterp's normal crossings w1^a w2^b x (and 3 parameters): calibrated LLC "
                                      "against the exact finite-n expectation by quadrature", cases=True),
        Experiment("normal-crossing-study", "normal crossings: the estimate at fixed step sizes, sampler times and "
                                            "batches against the quadrature (no calibration)", sizes=("default",),
                   cases=True, runner="experiments.normal_crossing:study"),
        Experiment("tms-llc-vs-n", "the LLC of trained TMS against the sample count n, next to the symmetry bound "
                                   "and the quadratic prediction", sizes=SIZES, cases=True),
        Experiment("per-feature-basis", "each feature's weight-refined LLC (its column) against its D_i, ||W_i|| "
                                        "and data-refined LLC, for n6_m2 and n20_m5"),
        Experiment("weights-vs-activations", "flagship: LLC (weight basis) against superposition (activation basis) "
                                             "on one grid", sizes=SIZES),
        Experiment("sae-recovery", "TopK SAEs on the flagship grid where recovery is well posed: ground-truth "
                                   "features recovered, counted per model and overall", sizes=SIZES),
        Experiment("sae-progressive-codes", "TopK, Multi-TopK and Matryoshka SAEs on TMS ground truth: codes at k' != k, "
                                            "latent order, information outside the TopK"),
        Experiment("meta-sae", "meta-SAEs on an idealized and a trained SAE of a TMS with rare features: what a "
                               "narrower meta-SAE loses first"),
    )
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment '{name}' (known: {', '.join(EXPERIMENTS)}); see `reproduce --list`")
    return EXPERIMENTS[name]


def load_runner(name: str):
    """The `run` function of experiment `name` (every registered module exists: the
    `experiments` package is installed with this one)."""
    experiment = get_experiment(name)
    module = importlib.import_module(experiment.module)
    run = getattr(module, experiment.function, None)
    if not callable(run):
        raise InputError(f"experiment module {experiment.module} has no {experiment.function}(out_dir, *, size, "
                         "progress) function")
    return run


def check_size(name: str, size: str) -> None:
    """`InputError` unless experiment `name` has `size`."""
    if size not in SIZES:
        raise InputError(f"size must be one of {', '.join(SIZES)}, got '{size}'")
    sizes = get_experiment(name).sizes
    if size not in sizes:
        flag = SIZE_FLAGS.get(size, "the default size")
        hint = f"; run it without {flag}" if "default" in sizes and size != "default" else ""
        raise InputError(f"experiment '{name}' has no {flag} (its sizes: {', '.join(sizes)}{hint})")


RESERVED = ("out_dir", "size", "progress", "only")  # set by `reproduce` itself


def parse_options(pairs: Sequence[str]) -> dict[str, object]:
    """`reproduce --set NAME=VALUE` pairs as keyword options: VALUE a Python literal (number,
    string, list, ...), else the text itself."""
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--set takes NAME=VALUE, got '{pair}'")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return options


def config_type(run: Callable) -> type | None:
    """The settings dataclass of `run`'s `config` parameter when `run` also takes its fields as
    keyword options (a `**fields` parameter: `reproduce --set FIELD=VALUE`); else None."""
    parameters = inspect.signature(run).parameters
    if "config" not in parameters or not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    hint = typing.get_type_hints(run).get("config")
    return next((t for t in typing.get_args(hint) or (hint,) if dataclasses.is_dataclass(t)), None)


def _tuples(value):
    """`value` with every list, at any depth, a tuple (settings dataclasses hold tuples)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def replace_fields(base, fields: dict):
    """`base` (a dataclass instance) with `fields` replaced; each value must be of its default's
    kind (lists become tuples; an int may replace a float), else `InputError` names the field."""
    names = {f.name for f in dataclasses.fields(base)}
    changes = {}
    for name, value in fields.items():
        if name not in names:
            raise InputError(f"{type(base).__name__} has no field {name}")
        default, value = getattr(base, name), _tuples(value)
        same_kind = (isinstance(value, bool) == isinstance(default, bool)
                     and (isinstance(value, type(default)) or isinstance(default, float) and isinstance(value, int)
                          or default is None or value is None))
        if not same_kind:
            raise InputError(f"--set {name}: expected {type(default).__name__} (like {default!r}), got {value!r}")
        changes[name] = float(value) if isinstance(default, float) and isinstance(value, int) else value
    return dataclasses.replace(base, **changes)


def changed_fields(config, base) -> dict:
    """The fields of dataclass `config` that differ from `base`'s, in field order (what a
    `reproduce` command line needs as `--set` to remake `config` from `base`)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(base, f.name)}


def _holds_dataclass(hint) -> bool:
    return dataclasses.is_dataclass(hint) or any(_holds_dataclass(arg) for arg in typing.get_args(hint))


def python_only(run: Callable) -> list[str]:
    """The parameters of `run` annotated as a settings object (a dataclass, alone or in a union:
    per-feature-basis's `settings: Settings | None`, weights-vs-activations' `config`): overrides
    from Python, as no `--set` literal makes one. A parameter of the same name holding names or
    numbers (sae-recovery's `settings: str | list[str] | None`) is an option like any other."""
    hints = typing.get_type_hints(run)
    return [name for name in inspect.signature(run).parameters if _holds_dataclass(hints.get(name))]


def option_names(run: Callable) -> list[str]:
    """The `--set` names `run` takes: its keyword parameters but those `reproduce` sets itself and
    the settings objects (`python_only`), then the fields of its `config` dataclass (`config_type`)."""
    parameters = inspect.signature(run).parameters
    skip = set(RESERVED) | set(python_only(run))
    names = [p for p, spec in parameters.items() if p not in skip and spec.kind is not spec.VAR_KEYWORD]
    settings = config_type(run)
    return names + ([f.name for f in dataclasses.fields(settings)] if settings is not None else [])


def check_request(name: str, size: str = "default", only: Sequence[str] | None = None,
                  options: dict | None = None):
    """`InputError` for an unknown experiment, size or option, or `only` on an experiment without
    named cases, before anything is created; returns the experiment's `run`."""
    check_size(name, size)
    if only and not get_experiment(name).cases:
        raise InputError(f"experiment '{name}' has no named cases; --only applies to "
                         + ", ".join(e.name for e in EXPERIMENTS.values() if e.cases))
    run = load_runner(name)
    known = option_names(run)
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        objects = [p for p in python_only(run) if p in unknown]
        hint = "".join(f"; {p} takes a settings object, from Python only" for p in objects)
        raise InputError(f"experiment '{name}' has no option {', '.join(unknown)} (its options: "
                         f"{', '.join(known) or 'none'}{hint})")
    settings = config_type(run)
    if settings is not None:
        fields = {f.name for f in dataclasses.fields(settings)}
        replace_fields(settings(), {k: v for k, v in (options or {}).items() if k in fields})  # kinds and ranges, now
    return run


def reproduce(name: str, out_dir: str | Path, *, size: str = "default", progress: bool = True,
              only: Sequence[str] | None = None, options: dict | None = None) -> xr.Dataset:
    """Run experiment `name` at `size`, writing everything under `out_dir`; returns its dataset.

    only: the named cases to run (experiments with cases only; `reproduce --only`); options: more
    keyword options of the experiment's `run` (`reproduce --set NAME=VALUE`)."""
    run = check_request(name, size, only, options)
    options = dict(options or {})
    out_dir = Path(out_dir)
    other, other_size = experiment_in(out_dir)
    if other is not None and other != name:
        raise InputError(f"{out_dir} holds the results of {other} (its report.md); {name} would replace them: "
                         f"choose another --out")
    if other == name and other_size != size:  # a rerun replaces its own size's results, never another size's
        raise InputError(f"{out_dir} holds a {other_size}-size run of {name} (its report.md); a {size}-size run "
                         f"would replace it: choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {out_dir}: {err.strerror}") from None
    if only:
        options["only"] = list(only)
    return run(out_dir, size=size, progress=progress, **options)


def experiment_in(out_dir: Path) -> tuple[str | None, str | None]:
    """(experiment, size) of the report.md in `out_dir`, from the `reproduce` command its opening
    names (size "quick", "full" or "default"), or (None, None) where there is none."""
    try:
        text = (Path(out_dir) / "report.md").read_text(errors="replace")
    except OSError:
        return None, None
    flags = "|".join(SIZE_FLAGS.values())
    found = re.search(rf"slt-superposition reproduce ([\w-]+)(?: ({flags}))?", text)
    if not found:
        return None, None
    return found.group(1), {flag: size for size, flag in SIZE_FLAGS.items()}.get(found.group(2), "default")


def command_line(name: str, out_dir: str | Path, size: str = "default", only: Sequence[str] | None = None,
                 **options) -> str:
    """The CLI command that reproduces `name` at `size` into `out_dir` (for report.md); `only` and
    `options` as given to `reproduce`."""
    flag = f" {SIZE_FLAGS[size]}" if size in SIZE_FLAGS else ""
    cases = "".join(f" --only {shlex.quote(case)}" for case in only or ())
    sets = "".join(f" --set {shlex.quote(f'{key}={value!r}')}" for key, value in options.items())
    return f"slt-superposition reproduce {name}{flag}{cases}{sets} --out {shlex.quote(str(out_dir))}"


def header(title: str, name: str, out_dir: str | Path, size: str, finding: str,
           only: Sequence[str] | None = None, **options) -> str:
    """The opening of every report.md: '# title', the `reproduce` command that made it, one
    paragraph of what it found (`markdown.opening`)."""
    return markdown.opening(title, command_line(name, out_dir, size, only, **options), finding)


def row_variables(rows: list[dict], variables: dict[str, tuple[str, str]], dim: str) -> dict[str, xr.Variable]:
    """One `dim`-long variable per entry of `variables` (name -> (long_name, units)) from a
    list of result rows (dicts), for an experiment's results table."""
    return {name: xr.Variable(dim, np.array([row[name] for row in rows]), {"long_name": long_name, "units": units})
            for name, (long_name, units) in variables.items()}


def select_cases(name: str, cases: Sequence, names: Sequence[str], only: Sequence[str] | None) -> list:
    """The cases whose name is in `only` (all when `only` is empty), in their order; an
    `InputError` names the unknown ones."""
    if not only:
        return list(cases)
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise InputError(f"{name} has no case {', '.join(unknown)} (known: {', '.join(names)})")
    return [case for case, case_name in zip(cases, names) if case_name in set(only)]


def run_cases(name: str, out_dir: Path, settings: dict, cases: Sequence, names: Sequence[str],
              compute: Callable[[object], xr.Dataset], *, only: Sequence[str] | None = None, dim: str = "case",
              progress: bool = True) -> xr.Dataset:
    """A multi-case experiment as a resumable sweep (`sweep.run_sweep`, one chunk per case, under
    `out_dir / "cases"`): a killed run resumes at the first unfinished case when rerun.

    settings: JSON-able, with `cases`/`names` everything that decides the numbers; compute(case)
    returns the case's dataset along `dim`; only: compute just the cases of these names (an
    `InputError` names unknown ones); the result then holds every case finished so far, in the
    order of `cases`."""
    from slt_superposition.sweep import run_sweep

    names = list(names)
    if only:
        select_cases(name, cases, names, only)  # unknown names fail before anything runs
    by_name = dict(zip(names, cases))
    chunks = [{dim: case_name} for case_name in names]
    picked = None if not only else [i for i, case_name in enumerate(names) if case_name in set(only)]
    return run_sweep(name, settings, chunks, lambda chunk: compute(by_name[chunk[dim]]), Path(out_dir) / "cases",
                     combine=lambda parts: concat_cases(parts, dim), progress=progress, only=picked)


def concat_cases(parts: Sequence[xr.Dataset], dim: str = "case") -> xr.Dataset:
    """The cases' datasets one after the other along `dim`; text variables become object arrays
    first, so a longer string of a later case is not cut to the first case's width."""
    def text_as_object(ds: xr.Dataset) -> xr.Dataset:
        return ds.assign({name: ds[name].astype(object) for name in ds.data_vars if ds[name].dtype.kind == "U"}) \
            .assign_coords({name: ds[name].astype(object) for name in ds.coords if ds[name].dtype.kind == "U"})

    return xr.concat([text_as_object(part) for part in parts], dim, combine_attrs="override")
