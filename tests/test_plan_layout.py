"""`fleetform plan` in a terminal: the table fits the width it is given (COLUMNS when piped), and
below the table's width each deployment is a block of lines; names and `model@revision` are never
cut. An unset max_containers reads `unbounded` everywhere."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

MODELS = (
    "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic@f50dbad",
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8@12fd688",
    "Qwen/Qwen2.5-7B-Instruct-AWQ@b250375",
)
NAMES = ("llama-3-1-8b-fp8", "llama-3-3-70b-fp8", "qwen2-5-7b-awq", "qwen2-5-7b-instruct")


def plan_text(*args: str, columns: str | None) -> str:
    env = {"COLUMNS": columns} if columns else None
    result = run_cli("plan", *args, env=env, unset=() if columns else ("COLUMNS",))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("columns, width, table", [("80", 80, False), ("200", 200, True), (None, 160, True)])
def test_the_plan_fits_the_width_and_keeps_names_whole(columns, width, table):
    out = plan_text("--env", "prod", columns=columns)
    assert max(len(line.rstrip()) for line in out.splitlines()) <= width
    assert ("┃ model@revision" in out) is table  # the table where it fits, else a block per deployment
    for text in (*MODELS, *NAMES):
        assert text in out, f"{text} is cut"
    if not table:
        assert "\n  model        RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic@f50dbad\n" in out


def test_an_unset_max_containers_reads_unbounded_in_text_and_json():
    out = plan_text(columns="200")
    assert " 0-unbounded " in out and "$0.00-unbounded" in out
    assert "ceiling unbounded (llama-3-1-8b-fp8: no max_containers)" in out
    assert "no limit" not in out and "-any" not in out
    rows = {r["name"]: r for r in json.loads(run_cli("plan", "--format", "json").stdout)["deployments"]}
    assert rows["llama-3-1-8b-fp8"]["containers"] == "0-unbounded"
    assert rows["llama-3-1-8b-fp8"]["usd_per_hour_max"] is None


def test_the_plan_says_which_fallback_it_prices():
    out = plan_text(columns="200")
    note = "With fallbacks, priced at the dearest GPU that may run it: "
    note += "llama-3-3-70b-fp8 at H200, qwen2-5-7b-awq at A10."
    assert f"\n{note}\n" in out
