"""Config files for the ``unseg`` commands: a TOML or YAML file whose keys are the command's
flags (``batch-size = 16`` or ``batch_size: 16``) supplies defaults, and flags given on the
command line win. The resolved config of every run is saved beside it (YAML, flag names),
and can be passed back with ``--config`` to repeat the run.

Example:
    >>> args = parse_with_config(parser, ["train", "--config", "run.toml", "--steps", "10"])
    >>> save_config(args, run_dir / "config.yaml")
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")
NOT_CONFIG = ("config", "command", "help")  # never read from or written to a config file


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a flat TOML or YAML mapping; keys are returned with underscores."""
    path = Path(path)
    if path.suffix not in CONFIG_SUFFIXES:
        raise ValueError(f"config file {path} must end in one of {CONFIG_SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:  # each parser has its own error type; all mean "bad syntax"
        raise ValueError(f"cannot parse config file {path}: {e}") from e
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {path} must hold a mapping of flag = value")
    nested = [k for k, v in data.items() if isinstance(v, Mapping)]
    if nested:
        raise ValueError(f"config file {path}: keys must be flags, got tables/sections {nested}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _subparser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The subcommand parser ``argv`` selects, or ``parser`` itself without subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for arg in argv:
                if arg in action.choices:
                    return action.choices[arg]
    return parser


def _convert(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    flag = action.option_strings[0] if action.option_strings else key
    where = f"config file {path}: {key}"
    if value is None:  # "unset": allowed where the flag's own default is None
        if action.default is not None:
            raise ValueError(f"{where} needs a value (flag {flag})")
        return None
    if isinstance(
        action,
        argparse._StoreTrueAction | argparse._StoreFalseAction | argparse.BooleanOptionalAction,
    ):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false (flag {flag}), got {value!r}")
        return value
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
    if many or isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [value]
        return [_convert_one(action, where, v) for v in values]
    if isinstance(value, list):
        raise ValueError(f"{where} takes one value (flag {flag}), got a list")
    return _convert_one(action, where, value)


def _convert_one(action: argparse.Action, where: str, value: Any) -> Any:
    if action.type is not None and not isinstance(value, bool):
        try:
            value = action.type(value) if isinstance(value, str) else action.type(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"{where}: {e}") from e
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} must be one of {list(action.choices)}, got {value!r}")
    return value


def parse_with_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the defaults of the (sub)command taken from the file
    its ``--config`` names. Unknown keys and ill-typed values are errors naming the key."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(argv)
    if path is not None:
        target = _subparser(parser, argv)
        actions = {a.dest: a for a in target._actions if a.dest not in NOT_CONFIG}
        try:
            values = load_config_file(path)
            unknown = sorted(set(values) - set(actions))
            if unknown:
                valid = ", ".join(sorted(k.replace("_", "-") for k in actions))
                raise ValueError(
                    f"config file {path}: unknown keys {[k.replace('_', '-') for k in unknown]}; "
                    f"valid keys: {valid}"
                )
            defaults = {k: _convert(actions[k], k, v, path) for k, v in values.items()}
        except (ValueError, FileNotFoundError) as e:
            target.error(str(e))
        for key in defaults:
            actions[key].required = False  # supplied by the file
        target.set_defaults(**defaults)
    return parser.parse_args(argv)


def resolved_config(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The run's settings keyed by flag name (dashes), paths as strings."""
    items = vars(args).items() if isinstance(args, argparse.Namespace) else args.items()
    out = {}
    for key, value in items:
        if key in NOT_CONFIG or callable(value):
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple | list):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[key.replace("_", "-")] = value
    return out


def save_config(args: argparse.Namespace | Mapping[str, Any], path: str | Path) -> Path:
    """Writes :func:`resolved_config` as YAML (atomically) and returns the path."""
    import yaml

    from unseg_kernels.train.checkpoint import atomic_write_bytes

    text = yaml.safe_dump(resolved_config(args), sort_keys=False, default_flow_style=False)
    return atomic_write_bytes(text.encode(), path)
