"""Option files: a TOML (or, with PyYAML, YAML) file of command options as one flat dict.

Keys are the long option names of a command (``n_train`` or ``n-train``); tables are flattened
(``[data] n_train = 100`` is ``n_train``), except ``[factor]``, kept as a table of a sweep's
factors (``width = [2, 4, 8]``). An option given twice (``seed`` in ``[data]`` and ``[train]``,
or ``n-train`` and ``n_train``) is an error naming both places. ``activation-hash --config
FILE`` reads its options with :func:`load_config`, and checks each value with
:func:`check_option` as its flag would be checked (:func:`int_option` / :func:`float_option`
are the argparse types of the numeric flags, which take text or values).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from activation_hash.validation import check_bool, check_float, check_int

__all__ = ["load_config", "flatten_config", "check_option", "int_option", "float_option",
           "OptionParser", "UsageError", "scan_argv", "number_list", "csv_list", "number_csv",
           "factor_option", "sweep_factors", "seed_list", "phase_options", "thresholds_of"]


class UsageError(ValueError):
    """A user error of the command line: one line on stderr, exit status 2."""


class OptionParser(argparse.ArgumentParser):
    """Errors as one line; records its options (``self.options``) for config checks."""

    def __init__(self, *a, **k):
        self.options: list = []
        super().__init__(*a, **k)

    def error(self, message):  # one line, no usage block
        raise UsageError(f"{message} (see {self.prog} --help)")

    def add_argument(self, *a, **k):
        act = super().add_argument(*a, **k)
        self.options.append(act)
        return act

    def add_argument_group(self, *a, **k):
        g = super().add_argument_group(*a, **k)
        add = g.add_argument

        def record(*args, **kw):
            act = add(*args, **kw)
            self.options.append(act)
            return act
        g.add_argument = record
        return g


def _number(part: str, text: str):
    if part.lower() in ("true", "false"):
        return part.lower() == "true"
    for kind in (int, float):
        try:
            return kind(part)
        except ValueError:
            pass
    raise UsageError(f"expected comma-separated numbers, got {text!r}")


def number_list(text: str) -> list:
    return [_number(part.strip(), text) for part in str(text).split(",") if part.strip()]


def csv_list(v) -> list:
    """A comma-separated option (or a config file's list) as a list of its items."""
    return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else list(v)


def number_csv(v) -> list:
    """A comma-separated option of numbers (or a config file's list), each checked."""
    return number_list(",".join(map(str, csv_list(v))))


def factor_option(text: str) -> tuple[str, list]:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise UsageError(f"a factor is NAME=V1,V2,... (e.g. width=2,4,8), got {text!r}")
    name, values = text.split("=", 1)
    vals = number_list(values)
    if not vals:
        raise UsageError(f"factor {name.strip()!r} has no values: NAME=V1,V2,..., got {text!r}")
    return name.strip(), vals


def scan_argv(argv: list[str]) -> tuple[str | None, str | None]:
    """(command, --config value) from the raw arguments, before any parsing."""
    cmd = cfg = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            cfg = argv[i + 1]
        elif a.startswith("--config="):
            cfg = a.split("=", 1)[1]
        elif cmd is None and not a.startswith("-") and (i == 0 or argv[i - 1] != "--config"):
            cmd = a
    return cmd, cfg




def int_option(lo=None, hi=None):
    """An argparse type (and config check): an integer within [lo, hi], from text or a value."""
    def conv(v):
        if isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
        try:
            return check_int(v, "value", min=lo, max=hi)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e).replace("value must be", "must be")) from None
    conv.__name__ = "integer"
    return conv


def float_option(lo=None, hi=None, lo_open=False, hi_open=False):
    def conv(v):
        if isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
        try:
            return check_float(v, "value", min=lo, max=hi, min_open=lo_open, max_open=hi_open)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e).replace("value must be", "must be")) from None
    conv.__name__ = "number"
    return conv


def check_option(action, value, where: str):
    """A config file's value for ``action``, checked (and converted) as the flag would be."""
    def fail(msg):
        raise ValueError(f"{where}: option {action.dest!r} {msg}")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        try:
            return check_bool(value, action.dest)
        except TypeError:
            fail(f"must be true or false, got {type(value).__name__} {value!r}")
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        if action.dest == "factor" and isinstance(value, dict):
            return value
        items = value if isinstance(value, list) else [value]
        return [check_option(argparse.Action([], action.dest, type=action.type,
                                              choices=action.choices), v, where) for v in items]
    if action.type is not None:
        try:
            value = action.type(value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            fail(str(e))
    elif not isinstance(value, str) and action.dest not in ("seeds", "measures", "factor"):
        fail(f"must be a string, got {type(value).__name__} {value!r}")
    if action.choices is not None and value not in action.choices:
        fail(f"must be one of {', '.join(map(repr, action.choices))}, got {value!r}")
    return value




def load_config(path) -> dict:
    """Option name (``-`` -> ``_``) -> value from a TOML or YAML (``.yaml``/``.yml``) file.

    Raises ``FileNotFoundError`` (no such file), ``ImportError`` (YAML without PyYAML) or
    ``ValueError`` (bad TOML, an option given twice), each naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(f"{str(path)!r} is YAML but PyYAML is not installed; use a TOML "
                              f"file or `pip install pyyaml`") from None
        cfg = yaml.safe_load(p.read_text()) or {}
    else:
        import tomllib

        try:
            cfg = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: bad TOML: {e}") from None
    try:
        return flatten_config(cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def flatten_config(cfg: dict) -> dict:
    """Option name -> value from a nested config (tables flattened; ``factor`` kept as a
    table). A name given twice (e.g. ``seed`` in ``[data]`` and ``[train]``, or ``n-train`` and
    ``n_train``) raises ``ValueError`` naming it and both places."""
    flat: dict = {}
    where: dict = {}

    def walk(d, section):
        for k, v in d.items():
            key = str(k).replace("-", "_")
            if isinstance(v, dict) and key != "factor":
                walk(v, f"{section}.{k}" if section else str(k))
                continue
            here = f"[{section}]" if section else "the top level"
            if key in flat:
                raise ValueError(f"option {key!r} is set both in {where[key]} and in {here}; "
                                 f"tables are flattened into one set of options, so give it once")
            flat[key], where[key] = v, here
    walk(cfg, "")
    return flat


def sweep_factors(spec) -> dict:
    """A sweep's ``--factor`` items (``NAME=V1,V2`` strings or a config file's table) as
    ``{name: values}``; UsageError when there are none."""
    if isinstance(spec, dict):  # a config file's [factor] table
        return {k: list(v) for k, v in spec.items()}
    if not spec:
        raise UsageError("give at least one --factor NAME=V1,V2,... (e.g. --factor "
                         "width=2,4,8,16)")
    return dict(factor_option(item) if isinstance(item, str) else item for item in spec)


def seed_list(seeds) -> list[int]:
    """``--seeds`` (text ``"0,1"``, an int or a list) as a list of ints; UsageError otherwise."""
    if isinstance(seeds, str):
        seeds = number_list(seeds)
    elif isinstance(seeds, int):
        seeds = [seeds]
    try:
        if not seeds:
            raise ValueError("no seeds")
        return [check_int(s, "seed") for s in seeds]
    except (TypeError, ValueError):
        raise UsageError(f"--seeds must be comma-separated integers, got {seeds!r}") from None


def phase_options(p: argparse.ArgumentParser) -> None:
    """The phase-chart regime options of a command (``--r-hi``, ``--r-lo``, ...)."""
    g = p.add_argument_group("phase-chart regimes (see activation_hash.experiments.phase)")
    g.add_argument("--r-hi", type=float_option(), default=0.1,
                   help="under-expressive when redundancy R >= r_hi (default 0.1)")
    g.add_argument("--r-lo", type=float_option(), default=0.01,
                   help="sufficiently-expressive needs R <= r_lo (default 0.01) ...")
    g.add_argument("--acc-eps", type=float_option(), default=0.02,
                   help="... and accuracy >= saturated accuracy - acc_eps (default 0.02); "
                        "otherwise critically-expressive")
    g.add_argument("--saturation", choices=["global", "row", "column"], default="global",
                   help="saturated accuracy = max over the chart / the model-size row / the column")
    g.add_argument("--redundancy-col", default="redundancy_train", help="redundancy column")
    g.add_argument("--accuracy-col", default="knn_test", help="accuracy column (e.g. acc_test)")


def thresholds_of(args):
    """The :class:`~activation_hash.experiments.phase.Thresholds` of parsed phase options."""
    from activation_hash.experiments.phase import Thresholds

    return Thresholds(r_hi=args.r_hi, r_lo=args.r_lo, acc_eps=args.acc_eps,
                      saturation=args.saturation, redundancy=args.redundancy_col,
                      accuracy=args.accuracy_col)
