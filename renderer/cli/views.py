"""Text views of results: tables for a terminal, plan text, GitHub annotations and Markdown summaries.

Everything printed from user, model or server data goes through `literal` (or is plain text
written to a stream), so markup-like text such as `[red]` is shown as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from renderer.cli.output import literal, money
from renderer.diagnostics import Diagnostic, Mark, _github_escape, format_path
from renderer.plan.against import (
    COST_NOTE,
    CREATE,
    GATEWAY,
    IMPACT_SUMMARY,
    MOVE,
    NONE,
    REBUILD,
    REMOVE,
    RESTART,
    UNCHANGED,
    UPDATE,
    DeploymentDiff,
    FleetDiff,
    against_text,
    change_line,
    change_text,
    cost_text,
    create_note,
    fleet_cost_text,
    members_text,
    priced_note,
    remove_note,
    share_text,
    show,
    totals_text,
)
from renderer.plan.cost import UNBOUNDED

# --- plan (offline) ---------------------------------------------------------------------------------------------


PLAN_COLUMNS = ("deployment", "model@revision", "GPU", "containers", "concurrency", "hash", "$/h min-max")


def usd_or_unbounded(value: float | None) -> str:
    """A ceiling: `$15.80`, or `unbounded` where no max_containers caps it."""
    return UNBOUNDED if value is None else money(value)


def _cost_range(r: Any) -> str:
    return f"{money(r.usd_per_hour_min)}-{usd_or_unbounded(r.usd_per_hour_max)}"


def _plan_cells(r: Any) -> tuple[str, ...]:
    return (r.name, r.model, r.gpu, r.containers, r.concurrency, r.content_hash, _cost_range(r))


def _priced_notes(plan: Any) -> list[str]:
    """`llama-3-3-70b-fp8 at H200`: rows priced at a fallback dearer than their `gpu.type`."""
    out = []
    for r in plan.rows:
        primary = r.gpu.split(" x ", 1)[0].rstrip("!")
        if r.priced_gpu and r.priced_gpu != primary:
            out.append(f"{r.name} at {r.priced_gpu}")
    return out


def plan_table(plan: Any) -> Any:
    from rich.table import Table

    title = "fleetform plan" + (f" (env: {plan.fleet_env})" if plan.fleet_env else "")
    table = Table(title=literal(title), title_justify="left", show_edge=False, pad_edge=False)
    for col in PLAN_COLUMNS:
        right = col in ("containers", "$/h min-max")
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    for r in plan.rows:
        table.add_row(*map(literal, _plan_cells(r)))
    return table


def print_stacked_plan(plan: Any, console: Any) -> None:
    """One block per deployment, a field a line: for a terminal too narrow for the table. Names and
    `model@revision` are printed whole (folded only where a line is longer than the terminal)."""
    from rich.text import Text

    title = "fleetform plan" + (f" (env: {plan.fleet_env})" if plan.fleet_env else "")
    console.print(literal(title))
    labels = ("model", "GPU", "containers", "concurrency", "$/h min-max")
    width = max(map(len, labels)) + 2
    for r in plan.rows:
        console.print(Text(f"{r.name}  {r.content_hash}", style="bold", overflow="fold"))
        for label, value in zip(labels, (r.model, r.gpu, r.containers, r.concurrency, _cost_range(r)), strict=True):
            console.print(Text(f"  {label:<{width}}{value}", overflow="fold"))


def print_plan(plan: Any, console: Any) -> None:
    """A table per the fleet (one block per deployment where the table is wider than the
    terminal), then totals and where prices come from."""
    from rich.measure import Measurement
    from rich.table import Table

    from renderer.gpus import PRICES_AS_OF, PRICES_SOURCE

    table = plan_table(plan)
    unlimited = console.options.update_width(10**6)  # its natural width, not squeezed to the terminal
    if Measurement.get(console, unlimited, table).maximum <= console.width:
        console.print(table)
    else:
        print_stacked_plan(plan, console)
    gpu_rows = sum(r.gpu != "CPU only" for r in plan.rows)
    extra = " and the gateway" if gpu_rows < len(plan.rows) else ""
    ceiling = plan.ceiling_usd_per_hour
    unbounded = [r.name for r in plan.rows if r.usd_per_hour_max is None]
    at_max = (
        f"ceiling {money(ceiling)}/hour at max containers"
        if ceiling is not None
        else f"ceiling {UNBOUNDED} ({', '.join(unbounded)}: no max_containers)"
    )
    console.print(literal(f"{gpu_rows} deployment(s){extra}. Idle floor {money(plan.idle_usd_per_day)}/day; {at_max}."))
    if plan.by_fleet_env:
        totals = Table(title="cost by environment", title_justify="left")
        for col in ("environment", "deployments", "idle floor $/day", "ceiling $/hour"):
            totals.add_column(col, justify="left" if col == "environment" else "right")
        for t in plan.by_fleet_env:
            totals.add_row(
                literal(t.fleet_env or "(no --env)"),
                str(t.deployments),
                money(t.idle_usd_per_day),
                usd_or_unbounded(t.ceiling_usd_per_hour),
            )
        console.print(totals)
    src = f"GPU list prices as of {PRICES_AS_OF}: {PRICES_SOURCE}"
    if plan.prices_overridden:
        src += f"; overridden in fleet.yaml: {', '.join(plan.prices_overridden)}"
    src += ". GPU time only: CPU, memory and region multipliers are not included."
    console.print(literal(src), style="dim")
    fallbacks = _priced_notes(plan)
    if fallbacks:
        note = f"With fallbacks, priced at the dearest GPU that may run it: {', '.join(fallbacks)}."
        console.print(literal(note), style="dim")


# --- test -----------------------------------------------------------------------------------------------------


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _styled(text: str, style: str) -> Any:
    from rich.text import Text

    return Text(text, style=style)


def render_smoke_report(report: Any, console: Any) -> None:
    """Print the smoke report: a table of steps, then each generated text (as the server sent it)."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    title = Text(f"Smoke test of {report.model} at {report.base_url}: ")
    title.append("passed" if report.ok else "FAILED", style="green" if report.ok else "red")
    table = Table(title=title)
    for col in ("Step", "Result", "HTTP", "Time (s)", "TTFT (ms)", "Tokens", "Tok/s", "Detail"):
        table.add_column(col, justify="right" if col not in ("Step", "Result", "Detail") else "left")
    for step in report.steps:
        result = _styled("ok", "green") if step.ok else _styled(step.failure.value if step.failure else "failed", "red")
        tokens = (
            f"{step.prompt_tokens or '-'} -> {step.completion_tokens}" if step.completion_tokens is not None else "-"
        )
        detail = step.error if not step.ok else (step.text if step.name == "models" else "")
        table.add_row(
            literal(step.name),
            result,
            str(step.status) if step.status is not None else "-",
            _fmt(step.seconds, digits=2),
            _fmt(step.ttft_s, 1000.0),
            tokens,
            _fmt(step.tokens_per_s),
            literal(detail or ""),
        )
    console.print(table)
    for step in report.steps:
        if step.ok and step.name != "models" and step.text:
            title = f"{step.name}" + (f" - system: {step.system_prompt}" if step.system_prompt else "")
            console.print(Panel(literal(step.text.strip()), title=literal(title), title_align="left"))


# --- bench ----------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_bench_results(results: Sequence[Any], console: Any) -> None:
    """Print one table, one column per level, rows as in ``vllm bench serve``."""
    from rich.table import Table

    if not results:
        console.print("no benchmark results")
        return
    table = Table(title=literal(f"Serving benchmark: {results[0].model}"))
    table.add_column("Metric")
    for res in results:
        table.add_column(literal(res.label), justify="right")

    def row(name: str, values: Sequence[str]) -> None:
        table.add_row(name, *map(literal, values))

    row("Duration (s)", [f"{r.duration_s:.2f}" for r in results])
    row("Successful requests", [str(r.completed) for r in results])
    row("Failed requests", [_failed_cell(r) for r in results])
    row("Total input tokens", [str(r.total_input_tokens) for r in results])
    row("Total output tokens", [str(r.total_output_tokens) for r in results])
    row("Request throughput (req/s)", [f"{r.request_throughput:.2f}" for r in results])
    row("Output token throughput (tok/s)", [f"{r.output_throughput:.2f}" for r in results])
    row("Total token throughput (tok/s)", [f"{r.total_token_throughput:.2f}" for r in results])
    for title, attr in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E latency", "e2el_ms")):
        for stat in ("mean", "median", "p90", "p99"):
            row(f"{title} {stat} (ms)", [_ms(getattr(getattr(r, attr), stat)) for r in results])
        table.add_section()
    console.print(table)
    for res in results:
        if res.aborted:
            console.print(_styled(f"{res.label}: {res.aborted}", "red"))
        if res.missing_usage:
            console.print(
                _styled(
                    f"{res.label}: {res.missing_usage} responses carried no usage; their tokens are not counted",
                    "yellow",
                )
            )
        for kind, messages in res.error_samples.items():
            for message in messages:
                line = _styled(f"{res.label}: {kind}:", "red")
                line.append(f" {message}")
                console.print(line)


def _failed_cell(result: Any) -> str:
    if not result.failed:
        return "0"
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.failures.items()))
    return f"{result.failed} ({kinds})"


# --- text ---------------------------------------------------------------------------------------------------------


def format_text_plan(diff: FleetDiff, ref: str, commit: str, fleet_env: str | None, notes: Sequence[str] = ()) -> str:
    """The human plan: one block per deployment that changes, then totals."""
    lines = [f"fleetform plan: the working tree against {against_text(ref, commit, fleet_env)}"]
    lines += [f"note: {n}" for n in notes]
    lines.append("")
    quiet = []
    for d in diff.deployments:
        where = f"gateway, {d.source}" if d.kind == GATEWAY else d.source
        if d.action == CREATE:
            lines += [f"+ {d.name} ({where})", f"    create: {create_note(d)}"]
        elif d.action == REMOVE:
            lines += [f"- {d.name} ({where} at {ref})", f"    remove: no longer in the fleet; {remove_note(d.name)}"]
        elif d.action == UPDATE:
            assert d.before and d.after and d.impact
            lines.append(f"~ {d.name} ({where})  {d.before.short_hash} -> {d.after.short_hash}")
            lines.append(f"    {d.impact}: {IMPACT_SUMMARY[d.impact]}")
            lines += [f"    {change_line(c)}" for c in d.changes]
        elif d.changes:
            lines += [f"= {d.name} ({where})", f"    {IMPACT_SUMMARY[NONE]}"]
            lines += [f"    {change_text(c)}" for c in d.changes]
        else:
            quiet.append(d.name)
            continue
        if d.cost is not None and (d.cost.changed or d.action in (CREATE, REMOVE)):
            note = priced_note(d)
            lines.append(f"    cost: {cost_text(d.cost)}" + (f"; {note}" if note else ""))
    if quiet:
        lines.append(f"  {len(quiet)} unchanged: {', '.join(quiet)}")
    lines.append("")
    if diff.pending:
        lines.append(f"Plan: {totals_text(diff)}.")
    else:
        lines.append(f"No changes: {members_text(diff)} render the same as at {ref}.")
    lines.append(f"Cost: {fleet_cost_text(diff)}.")
    lines.append(f"  {COST_NOTE}.")
    return "\n".join(lines) + "\n"


# --- GitHub annotations -----------------------------------------------------------------------------------------


def _annotation(level: str, message: str, mark: Mark | None, title: str = "fleetform plan") -> str:
    props = []
    if mark is not None:
        props.append(f"file={_github_escape(mark.file, prop=True)},line={mark.line},col={mark.col}")
    props.append(f"title={_github_escape(title, prop=True)}")
    return f"::{level} {','.join(props)}::{_github_escape(message)}"


def _where(origins: Mapping[str, Mapping[tuple, Any]], d: DeploymentDiff, path: tuple[str, ...]) -> Mark:
    """Where a working-tree value was written (maybe fleet.yaml); else the deployment's `name:`."""
    written = origins.get(d.name, {})
    for key in (path, ("name",)):
        if key in written:
            return written[key][1]
    return Mark(d.source, 1, 1)


def github_annotations(
    diff: FleetDiff, ref: str, origins: Mapping[str, Mapping[tuple, Any]] | None = None
) -> list[str]:
    """Workflow commands that mark each change on the line of the pull request that made it.

    Changes that start new containers are warnings, the rest notices. One change written once in
    fleet.yaml and inherited by several deployments is one annotation, not one per deployment
    (GitHub shows only the first few annotations of each kind per step).
    """
    origins = origins or {}
    # (level, mark, text) -> deployment names, in order of first appearance
    grouped: dict[tuple[str, Mark | None, str], list[str]] = {}
    for d in diff.deployments:
        if d.action == CREATE:
            grouped[("notice", _where(origins, d, ("name",)), f"create: {create_note(d)}")] = [d.name]
        elif d.action == REMOVE:
            grouped[("warning", None, f"removed from the fleet ({d.source} at {ref}): {remove_note(d.name)}")] = [
                d.name
            ]
        elif d.action == UPDATE:
            for c in d.changes:
                level = "warning" if c.impact in (RESTART, REBUILD, MOVE) else "notice"
                share = share_text(c.cost) if c.cost is not None else ""
                text = f"{change_text(c)}: {c.impact}: {IMPACT_SUMMARY[c.impact]}" + (f"; {share}" if share else "")
                key = (level, _where(origins, d, c.path), text)
                grouped.setdefault(key, []).append(d.name)
    return [_annotation(level, f"{', '.join(names)}: {text}", mark) for (level, mark, text), names in grouped.items()]


# --- Markdown -----------------------------------------------------------------------------------------------------


def md_code(text: str) -> str:
    """Inline code that survives a Markdown table cell."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_prose(text: str) -> str:
    """Our own notes use `code` spans; keep them, escape table pipes."""
    return text.replace("|", "\\|")


def _md_change(c: Any) -> str:
    """`gpu.type`: `L40S` → `H100` (+$7.99/h at max)"""
    text = f"{md_code(c.field)}: {md_code(show(c.before, c.field))} → {md_code(show(c.after, c.field))}"
    share = share_text(c.cost) if c.cost is not None else ""
    return text + (f" ({md_text(share)})" if share else "")


def format_markdown_plan(
    diff: FleetDiff, ref: str, commit: str, fleet_env: str | None, notes: Sequence[str] = ()
) -> str:
    """The pull request's summary: a table of what changes and what it does to running containers."""
    lines = ["## fleetform plan", ""]
    where = f"Against {md_code(ref)} ({md_code(commit[:7])})"
    if fleet_env:
        where += f", environment {md_code(fleet_env)}"
    if not diff.pending:
        lines.append(f"{where}: **no changes**; {members_text(diff)} render the same.")
    else:
        lines.append(f"{where}: **{totals_text(diff)}**.")
    lines.append(f"**Cost**: {md_text(fleet_cost_text(diff))}.")
    lines += [f"> {md_text(n)}" for n in notes]
    rows = [d for d in diff.deployments if d.action != UNCHANGED or d.changes]
    if rows:
        lines += ["", "| Deployment | Action | Effect | Changes | Cost |", "| --- | --- | --- | --- | --- |"]
        for d in rows:
            if d.action == CREATE:
                effect, changes = create_note(d), ""
            elif d.action == REMOVE:
                effect, changes = f"no longer in the fleet; {remove_note(d.name)}", ""
            else:
                impact = d.impact or NONE
                effect = f"**{impact}**: {IMPACT_SUMMARY[impact]}"
                changes = "<br>".join(_md_change(c) for c in d.changes)
            cost = ""
            if d.cost is not None and (d.cost.changed or d.action in (CREATE, REMOVE)):
                note = priced_note(d)
                cost = md_text(cost_text(d.cost) + (f"; {note}" if note else ""))
            name = md_code(d.name) + (" (gateway)" if d.kind == GATEWAY else "")
            lines.append(f"| {name} | {d.action} | {_md_prose(effect)} | {changes} | {cost} |")
    quiet = [d.name for d in diff.deployments if d.action == UNCHANGED and not d.changes]
    if quiet:
        lines += ["", f"Unchanged: {', '.join(md_code(n) for n in quiet)}."]
    lines += [
        "",
        "<sub>scaling: redeploy, no image build · restart: new containers · rebuild: new image and "
        f"containers · move: new Modal environment. The rule: docs/ci.md. Cost: {COST_NOTE}.</sub>",
    ]
    return "\n".join(lines) + "\n"


def format_markdown_validation(diagnostics: Sequence[Diagnostic], deployments: int) -> str:
    """`validate --format github`'s summary: every problem as a table row."""
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    lines = ["## fleetform validate", ""]
    if errors:
        lines.append(
            f"**{errors} error(s)**"
            + (f", {warnings} warning(s)" if warnings else "")
            + "; nothing can be rendered or deployed until they are fixed."
        )
    else:
        lines.append(f"**{deployments} deployment(s) valid**" + (f", {warnings} warning(s)" if warnings else "") + ".")
    if diagnostics:
        lines += ["", "| Where | Field | Problem |", "| --- | --- | --- |"]
        for d in diagnostics:
            problem = f"{d.severity.value}: {d.message}" + (f" (hint: {d.hint})" if d.hint else "")
            lines.append(f"| {md_code(str(d.mark))} | {md_code(format_path(d.path))} | {md_text(problem)} |")
    return "\n".join(lines) + "\n"


def write_step_summary(markdown: str, out: TextIO, err: TextIO, environ: Mapping[str, str]) -> bool:
    """Append to the file GitHub names in GITHUB_STEP_SUMMARY; without it, print. True if written to the file."""
    path = environ.get("GITHUB_STEP_SUMMARY")
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(markdown + "\n")
            return True
        except OSError as exc:
            print(f"warning: cannot write the step summary to {path}: {exc.strerror or exc}; printing it", file=err)
    out.write(markdown)
    return False
