"""`fleetform new ORG/MODEL`: size a model (renderer.sizing) and write its deployment file."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderer.cli.common import RAW, fraction, positive, schema_enum
from renderer.cli.output import CliError, ExitCode, TextReporter, literal, money, reporter

SCHEMA_FILE = "deployment.schema.json"


def schema_line(out: str | Path) -> str:
    """The editor's `$schema` comment for a deployment written into folder `out`: relative to the nearest
    `schema/deployment.schema.json` in `out` or a folder above it (what `fleetform init` and `fleetform
    schema` write), else `../schema/` (a repository laid out as `init` makes it, schemas not written yet)."""
    import os

    folder = Path(out).resolve()
    for above in (folder, *folder.parents):
        candidate = above / "schema" / SCHEMA_FILE
        if candidate.is_file():
            return f"# yaml-language-server: $schema={Path(os.path.relpath(candidate, folder)).as_posix()}"
    return f"# yaml-language-server: $schema=../schema/{SCHEMA_FILE}"


_REVISION = re.compile(r"^[0-9a-f]{40}\Z")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?\Z")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "new",
        help="size a model and write a deployment for it on the cheapest GPUs that fit",
        description="Read a model's config.json and weight sizes (from --from-dir, the local Hugging "
        "Face cache, or the Hub), weigh every GPU type and count for its weights plus the "
        "KV cache of --concurrency sequences of --max-model-len tokens, print the options, "
        "and write OUT/NAME.yaml on the cheapest that fits. GPU prices come from "
        "OUT/fleet.yaml's `prices` when it has them.",
        epilog="examples (need the Hugging Face Hub, or a checkpoint folder for --from-dir):\n"
        "  fleetform new meta-llama/Llama-3.1-8B-Instruct --revision 0e9e39f249a16976918f6564b8830bc894c89659\n"
        "  fleetform new ORG/MODEL --revision SHA --max-model-len 8192 --concurrency 16\n"
        "  fleetform new ORG/MODEL --revision SHA --from-dir ./checkpoint --quantization fp8\n"
        "\nexit codes: 0 written, 1 the model cannot be read or fit (or the file exists), "
        "2 usage error",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    p.add_argument("model_id", metavar="MODEL_ID", help="Hugging Face repository id, e.g. meta-llama/Llama-3.1-8B")
    p.add_argument("--revision", required=True, metavar="SHA", help="the full 40-character commit to pin")
    p.add_argument(
        "--max-model-len",
        type=positive(int),
        metavar="N",
        help="longest context to serve (default: the model's own limit)",
    )
    p.add_argument(
        "--concurrency",
        type=positive(int),
        metavar="C",
        help="sequences of that length to hold at once (default 1); also the autoscaler's target",
    )
    p.add_argument("--from-dir", metavar="DIR", help="read config.json and weights from this folder (offline)")
    p.add_argument("--name", help="deployment name (default: derived from the model id)")
    p.add_argument(
        "--quantization",
        choices=schema_enum("model", "quantization"),
        metavar="{none,fp8,awq,gptq,compressed-tensors,bitsandbytes}",
        help="the checkpoint's format, or fp8/bitsandbytes to quantize a 16-bit checkpoint on load",
    )
    p.add_argument(
        "--gpu-memory-utilization", type=fraction, metavar="U", help="share of GPU memory vLLM may use (default 0.9)"
    )
    p.add_argument(
        "--out", default="deployments", metavar="DIR", help="folder to write NAME.yaml into (default: deployments)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing NAME.yaml")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.set_defaults(func=run)


# --- the deployment file -------------------------------------------------------------------------------------


def _q(value: str) -> str:
    """A YAML scalar that stays a string whatever it looks like (JSON strings are YAML)."""
    return json.dumps(value)


# The `max_containers` a new deployment gets: bounded (unset is unbounded), and two rather than one
# so that a container can start while another serves. Its comment in the file says so.
NEW_MAX_CONTAINERS = 2


def deployment_yaml(
    s: Any, *, concurrency_given: bool, schema: str = f"# yaml-language-server: $schema=../schema/{SCHEMA_FILE}"
) -> str:
    """The deployment file for the chosen option, with comments that say how it was sized."""
    from renderer.sizing import DEFAULT_UTILIZATION, GIB, parameter_count

    o = s.chosen
    assert o is not None
    shape = s.metadata.shape
    weights_how = "estimated from config.json" if s.weights_estimated else s.metadata.weights_source
    lines = [
        schema,
        "#",
        f"# Sized by `fleetform new`: {shape.describe()}.",
        f"# Weights {s.weights_bytes / GIB:.1f} GiB ({weights_how}); KV cache {s.kv_bytes_per_token / 1024:g} KiB a "
        f"token, for {s.concurrency} x {s.max_model_len} tokens: {o.kv_gib:.1f} GiB.",
        f"# Cheapest fit at {s.utilization:g} GPU memory utilization: {o.label}, {o.headroom_gib:.1f} GiB headroom, "
        f"{money(o.usd_per_hour)}/hour a container.",
        "",
        f"name: {s.name}",
        "",
        "model:",
        f"  id: {_q(s.model_id)}",
        f"  revision: {_q(s.revision)}",
    ]
    if s.quantization != "none":
        lines.append(f"  quantization: {s.quantization}")
    if s.quantize_on_load:
        lines.append("  quantize_on_load: true")
    lines.append(f"  max_model_len: {s.max_model_len}")
    lines.append(f"  parameters_b: {max(round(parameter_count(shape) / 1e9, 1), 0.1):g}")
    lines += ["", "gpu:", f"  type: {o.gpu}", f"  count: {o.count}"]
    ceiling = money(o.usd_per_hour * NEW_MAX_CONTAINERS)
    lines += [
        "",
        "scaling:",
        f"  # A ceiling on cost and GPU quota: at most {NEW_MAX_CONTAINERS} containers, {ceiling}/hour. Unset, it is",
        "  # unbounded: a burst of traffic could start as many containers as Modal allows. Two let a new",
        "  # container start while another serves; raise it when `fleetform bench` shows the load needs more.",
        f"  max_containers: {NEW_MAX_CONTAINERS}",
    ]
    if concurrency_given:
        lines.append(f"  target_concurrency: {s.concurrency}")
    if s.utilization != DEFAULT_UTILIZATION:
        lines += ["", "engine:", f"  gpu_memory_utilization: {s.utilization:g}"]
    return "\n".join(lines) + "\n"


def _check_yaml(text: str, filename: str) -> None:
    """The written file must pass the deployment schema; anything else is a fleetform bug."""
    from renderer.config.load import load_text
    from renderer.config.validate import check_schema

    problems = check_schema(load_text(filename, text.encode("utf-8")))
    if problems:
        raise AssertionError(f"fleetform new produced an invalid deployment: {problems[0].message}")


def print_options(s: Any, console: Any) -> None:
    """The options weighed, as a rich table: per GPU type, its smallest count that fits."""
    from rich.table import Table

    from renderer.sizing import OVERHEAD_GIB, weighed

    chosen = s.chosen
    table = Table(
        title=literal(f"{s.model_id}: {s.concurrency} x {s.max_model_len} tokens at {s.utilization:g} utilization"),
        caption=f"GiB per container; headroom after {OVERHEAD_GIB:g} GiB a GPU of overhead; "
        "list prices (override in fleet.yaml `prices`)",
    )
    for col, justify in (
        ("GPU x count", "left"),
        ("weights GiB", "right"),
        ("KV GiB", "right"),
        ("headroom GiB", "right"),
        ("$/hour", "right"),
        ("", "left"),
    ):
        table.add_column(col, justify=justify)
    for o in weighed(s.options):
        verdict = "chosen" if o is chosen else ("fits" if o.fits else (o.excluded or "too small"))
        style = "bold green" if o is chosen else (None if o.fits else "dim")
        table.add_row(
            o.label,
            f"{o.weights_gib:.1f}",
            f"{o.kv_gib:.1f}",
            f"{o.headroom_gib:.1f}",
            f"{round(o.usd_per_hour, 2) + 0.0:.2f}",
            literal(verdict),
            style=style,
        )
    console.print(table)


# --- the command ------------------------------------------------------------------------------------------------


@dataclass
class Written:
    sizing: Any
    path: Path
    exit_code: int = ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        return {**self.sizing.to_dict(), "path": self.path.as_posix()}

    def render(self, console: Any) -> None:
        print_options(self.sizing, console)
        o, out = self.sizing.chosen, self.path.as_posix()
        console.print(
            literal(
                f"wrote {out}: {o.label} at {money(o.usd_per_hour)}/hour a container; "
                f"check it with `fleetform validate {out}`"
            )
        )


def fleet_prices(out: str, report: TextReporter) -> dict[str, float] | None:
    """GPU prices of the fleet that `new` writes into: OUT/fleet.yaml's `prices`, so the cheapest fit
    is judged as `plan` will price it. None without a fleet.yaml; CliError if it does not validate."""
    from renderer.config.load import FLEET_FILE, LoadError, load_file
    from renderer.config.schema import FLEET_SCHEMA
    from renderer.config.validate import check_schema

    path = Path(out) / FLEET_FILE
    if not path.is_file():
        return None
    try:
        doc = load_file(path)
        problems = [d for d in check_schema(doc, FLEET_SCHEMA) if d.is_error]
    except LoadError as exc:
        problems = list(exc.diagnostics)
    if problems:
        TextReporter(err=report.err).diagnostics(problems)
        raise CliError(f"{path} does not validate, so its GPU prices cannot be used; fix it first")
    return dict(doc.data.get("prices") or {}) or None


def new(options: Any, report: TextReporter) -> Written:
    """Size the model and write `OUT/NAME.yaml`. `options` carries model_id, revision, and optionally
    max_model_len, concurrency, from_dir, name, quantization, gpu_memory_utilization, out (folder,
    default `deployments`), force, prices (GPU name -> $/hour). Raises CliError: 1 for a model that
    cannot be read or fit, 2 for a bad request."""
    from renderer.sizing import DEFAULT_UTILIZATION, GIB, SizingError, derive_name, load_metadata, size_model

    def get(key: str, default: Any = None) -> Any:
        value = getattr(options, key, None)
        return default if value is None else value

    model_id, revision = get("model_id", ""), get("revision", "")
    if not _MODEL_ID.match(model_id):
        raise CliError(
            f"{model_id!r} is not a Hugging Face repository id such as meta-llama/Llama-3.1-8B-Instruct", ExitCode.USAGE
        )
    if not _REVISION.match(revision):
        raise CliError(
            f"--revision {revision!r}: pin a full 40-character commit hash (a branch or tag is not pinned)",
            ExitCode.USAGE,
        )
    name = get("name") or derive_name(model_id)
    if not _NAME.match(name):
        raise CliError(
            f"--name {name!r}: a lowercase DNS-safe name: letters, digits and dashes, starting with a "
            "letter, at most 40 characters",
            ExitCode.USAGE,
        )
    from renderer.config.load import FLEET_FILE

    if f"{name}.yaml" == FLEET_FILE:  # it would be read as the fleet's own file, not a deployment
        raise CliError(
            f"{name}.yaml is the fleet's own file (defaults, environments, prices), not a deployment: "
            "pass --name NAME to write the deployment under another name",
            ExitCode.USAGE,
        )
    utilization = float(get("gpu_memory_utilization", DEFAULT_UTILIZATION))
    if not 0 < utilization <= 1:
        raise CliError(f"--gpu-memory-utilization {utilization:g} must be above 0 and at most 1", ExitCode.USAGE)
    try:
        metadata = load_metadata(model_id, revision, from_dir=get("from_dir"))
        sizing = size_model(
            model_id,
            revision,
            metadata,
            max_model_len=get("max_model_len"),
            concurrency=int(get("concurrency", 1)),
            quantization=get("quantization"),
            name=name,
            utilization=utilization,
            prices=get("prices"),
        )
    except SizingError as exc:
        raise CliError(str(exc)) from None
    out = Path(get("out", "deployments")) / f"{name}.yaml"
    if sizing.chosen is None:
        if report.name == "text":
            from renderer.cli.output import console

            print_options(sizing, console())
        raise CliError(
            f"no GPU type and count holds {sizing.weights_bytes / GIB:.1f} GiB of weights plus "
            f"{sizing.tokens} tokens of KV cache; lower --max-model-len or --concurrency, or quantize"
        )
    if out.exists() and not get("force", False):
        raise CliError(f"{out} already exists: pass --force to replace it, or --name NAME")
    text = deployment_yaml(sizing, concurrency_given=get("concurrency") is not None, schema=schema_line(out.parent))
    _check_yaml(text, str(out))
    from renderer.codegen.write import write_file  # the one atomic writer; loaded only when writing

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_file(out, text, replace=bool(get("force", False)))
    except FileExistsError:  # appeared since the check above: never replaced without --force
        raise CliError(f"{out} already exists: pass --force to replace it, or --name NAME") from None
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    return Written(sizing, out)


def run(args: argparse.Namespace, report: TextReporter) -> Written:
    args.prices = fleet_prices(args.out, report)
    return new(args, report)


def run_new(options: Any, console: Any) -> int:
    """`new` for callers with their own console: prints as the CLI does; returns the exit code."""
    report = reporter(getattr(options, "format", None) or "text")
    try:
        result = new(options, report)
    except CliError as exc:
        report.error(exc)
        return exc.code
    if report.name == "text":
        result.render(console)
        return result.exit_code
    return report.result(result)
