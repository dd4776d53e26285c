"""Command-line options made from the config dataclasses, so that no default or help text is typed twice.

`config_options(...)` decorates a typer command: for each chosen field of a config section it adds an option
(`--batch-size` for `answer.batch_size`, help and bounds from the field, default "not given"), plus `--config FILE`
(a YAML file with the same sections as `laffi run`'s) and `--set section.key=value`. The command receives one checked
`RunConfig` as `cfg`: the dataclass defaults, then the file, then `--set`, then the options given on the command line
(and, if it has a `config_path` parameter, the `--config` file's path).
An error names what set the bad value (`--batch-size: answer.batch_size: must be >= 1`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from laffi import config as config_module

# section name -> its dataclass (the sections of a run config).
SECTIONS = config_module.STAGES


def config_options(fields: dict[str, list[str]], flags: dict[str, str] | None = None) -> Callable:
    """Add an option per `section.field` in `fields` ({"answer": ["shots", ...]}); `flags` renames an option
    ({"model.name": "model"})."""
    flags = flags or {}

    def decorate(command: Callable) -> Callable:
        generated: dict[str, tuple[str, str]] = {}  # parameter name -> (flag, "section.field")
        names = set(inspect.signature(command).parameters)
        params = [p for p in inspect.signature(command).parameters.values() if p.name not in ("cfg", "config_path")]
        for section, names in fields.items():
            cls = SECTIONS[section]
            by_name = {f.name: f for f in dataclasses.fields(cls)}
            hints = typing.get_type_hints(cls)
            for name in names:
                f, key = by_name[name], f"{section}.{name}"
                flag = "--" + flags.get(key, name.replace("_", "-"))
                default = f.default
                param = f"opt__{section}__{name}"
                generated[param] = (flag, key)
                params.append(_parameter(param, flag, hints[name], default, f.metadata))
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                                        default=typer.Option(None, "--config", help="YAML config with the same "
                                                             "sections as `laffi run`'s; options override it.")))
        params.append(inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, annotation=list[str],
                                        default=set_option("answer.batch_size=8")))

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from laffi.config import load_run_config

            given = []
            for param, (flag, key) in generated.items():
                value = kwargs.pop(param)
                if value is not None:
                    given.append((flag, f"{key}={json.dumps(value)}"))  # JSON is YAML: strings stay strings
            config = kwargs.pop("config")
            cfg = load_run_config(config, [*kwargs.pop("set_"), *given])
            if "config_path" in names:  # a command that checks its inputs against its outputs
                kwargs["config_path"] = config
            return command(*args, cfg=cfg, **kwargs)

        wrapper.__signature__ = inspect.Signature(params)  # what typer reads
        del wrapper.__wrapped__  # or inspect.signature would follow it back to the command's own parameters
        return wrapper

    return decorate


def _parameter(name: str, flag: str, hint: Any, default: Any, meta: Any) -> inspect.Parameter:
    shown = "''" if default == "" else default
    help_text = f"{meta['help']} [default: {str(shown).lower() if isinstance(default, bool) else shown}]"
    decls = [f"{flag}/--no-{flag[2:]}"] if hint is bool else [flag]
    option = typer.Option(None, *decls, help=help_text, show_default=False, min=meta.get("min"), max=meta.get("max"))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=hint | None, default=option)


def field_option(cls: type, name: str, *decls: str) -> Any:
    """A typer option for one field of a config dataclass, default "not given" (None), its help and bounds from the
    field: for a command that loads its config itself (`laffi experiment --workers` is `workers`)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    meta = f.metadata
    return typer.Option(None, *decls, help=f"{meta['help']} [default: {f.default}]", show_default=False,
                        min=meta.get("min"), max=meta.get("max"))  # fmt: skip


def set_option(example: str) -> Any:
    """`--set section.key=value`, repeatable: the one declaration of the option every config-reading command has."""
    return typer.Option([], "--set", help=f"Override a setting: --set {example} (repeatable).")
