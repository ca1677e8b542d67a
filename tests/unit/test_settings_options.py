"""CLI options built from a settings model: one definition of each option's type, default,
limits and help, and a value the model refuses is one line on stderr."""

from __future__ import annotations

from typing import Literal

import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from cluster.commands.common import user_errors
from cluster.settings_options import settings_options


class Knobs(BaseModel):
    epochs: int = Field(2, ge=1, description="passes over the data")
    mode: Literal["fast", "slow"] = "fast"
    rate: float | None = None
    use_gpu: bool = False
    hidden: str = "not an option"


def app_with(seen: list) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @user_errors
    @settings_options(knobs=(Knobs, {"hidden"}))
    def run(name: str = "x", *, knobs: Knobs) -> None:
        seen.append((name, knobs))

    @app.command()
    def other() -> None:  # a second command keeps `run` a subcommand
        pass

    return app


def test_defaults_and_values_come_from_the_model():
    seen: list = []
    runner = CliRunner()
    assert runner.invoke(app_with(seen), ["run"]).exit_code == 0
    assert seen[-1] == ("x", Knobs())
    args = ["run", "--name", "y", "--epochs", "5", "--mode", "slow", "--rate", "0.5", "--gpu"]
    assert runner.invoke(app_with(seen), args).exit_code == 0
    assert seen[-1] == ("y", Knobs(epochs=5, mode="slow", rate=0.5, use_gpu=True))


def test_help_shows_the_models_help_and_defaults_and_no_excluded_field():
    out = CliRunner().invoke(app_with([]), ["run", "--help"]).output
    assert "passes over the data" in out and "--epochs" in out and "--gpu" in out
    assert "--hidden" not in out


def test_a_value_the_model_refuses_is_one_user_error():
    result = CliRunner().invoke(app_with([]), ["run", "--epochs", "0"])
    assert result.exit_code == 2
    assert "invalid parameters: --epochs" in result.output and "Traceback" not in result.output
