"""Option files: a TOML (or, with PyYAML, YAML) file of command options as one flat dict.

Keys are the long option names of a command (``n_train`` or ``n-train``); tables are flattened
(``[data] n_train = 100`` is ``n_train``), except ``[factor]``, kept as a table of a sweep's
factors (``width = [2, 4, 8]``). An option given twice (``seed`` in ``[data]`` and ``[train]``,
or ``n-train`` and ``n_train``) is an error naming both places. ``activation-hash --config
FILE`` reads its options with :func:`load_config`.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["load_config", "flatten_config"]


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
