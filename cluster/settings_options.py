"""CLI options built from the settings models, so a setting is declared once (its type,
default, limits and help live on the pydantic field) and every stage reads the same
definition: `llmrec train --epochs 2` is `TrainSettings.epochs`.

    @app.command()
    @user_errors
    @settings_options(settings=TrainSettings, model=(RerankerConfig, {"template"}))
    def train(dataset: ..., settings: TrainSettings, model: RerankerConfig) -> None: ...

The decorated command takes the models' fields as options (`--lr-lora`, `--history-items`)
beside its own, and receives validated model instances; a value the model refuses is a
one-line CLI error."""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pipelines.errors import LlmrecError

#: Flags that keep a name of their own (the field's name would read worse on a command line).
FLAGS = {"use_gpu": "--gpu"}

Spec = type[BaseModel] | tuple[type[BaseModel], set[str]]


def _cli_type(annotation: Any) -> Any:
    """The type typer parses for a field: Literal choices become an Enum, `X | None`
    stays optional."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = typing.get_args(annotation)
        return enum.Enum("Choice", {str(v): str(v) for v in values}, type=str)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _cli_type(args[0]) | None
    return annotation


def _help(field: FieldInfo) -> str | None:
    return " ".join(field.description.split()) if field.description else None


def _fields(model: type[BaseModel], exclude: set[str]) -> dict[str, FieldInfo]:
    """The scalar fields of `model` and of its nested models (prompt template inside the
    re-ranker config), by option name."""
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # nested models are given as their own spec
        out[name] = field
    return out


def _parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    decls = [flag] if field.annotation is not bool else [f"{flag}/--no-{flag[2:]}"]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, enum.Enum):
        default = default.value
    option = typer.Option(*decls, help=_help(field), show_default=True)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[_cli_type(field.annotation), option],
        default=default,
    )


def settings_options(**specs: Spec) -> Callable[[Callable], Callable]:
    """Replace the command's parameters named in `specs` by one option per field of the
    model each names (minus the excluded fields); the command receives the instances."""
    models = {k: (v if isinstance(v, tuple) else (v, set())) for k, v in specs.items()}

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        # The command's own options, with their string annotations evaluated: typer reads
        # the Annotated metadata (flags, help) from the signature set below.
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(n, p.annotation))
            for n, p in sig.parameters.items()
            if n not in models
        ]
        taken = set(sig.parameters)
        by_model: dict[str, list[str]] = {}
        extra: list[inspect.Parameter] = []
        for arg, (model, exclude) in models.items():
            names = []
            for name, field in _fields(model, exclude).items():
                if name in taken:
                    raise TypeError(f"option --{name} is declared twice in {fn.__name__}")
                taken.add(name)
                names.append(name)
                extra.append(_parameter(name, field))
            by_model[arg] = names

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            built = {}
            for arg, (model, _) in models.items():
                values = {}
                for n in by_model[arg]:
                    if n in kwargs:
                        v = kwargs.pop(n)
                        values[n] = v.value if isinstance(v, enum.Enum) else v
                try:
                    built[arg] = model.model_validate(values)
                except ValidationError as e:
                    err = e.errors()[0]
                    where = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else arg
                    raise LlmrecError(f"invalid parameters: {where}: {err['msg']}") from e
            return fn(*args, **kwargs, **built)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
        command.__signature__ = sig.replace(parameters=params)  # what typer reads
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return wrap
