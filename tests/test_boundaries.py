"""Limits exactly at their boundaries, with the numbers written out: a limit that moves by one, or a
`<` that becomes `<=`, changes what a user can load, so each is pinned from both sides here.

The numbers are literals on purpose: importing the constants would move the test with the code."""

from __future__ import annotations

import pytest

from renderer.config.load import LoadError, load_text


def load_errors(raw: bytes) -> list[str]:
    """Each diagnostic as `line:col: message`."""
    try:
        load_text("f.yaml", raw)
    except LoadError as exc:
        return [f"{d.mark.line}:{d.mark.col}: {d.message}" for d in exc.diagnostics]
    return []


def _sized(total: int) -> bytes:
    """A valid one-key document of exactly `total` bytes."""
    head, tail = b'a: "', b'"\n'
    return head + b"x" * (total - len(head) - len(tail)) + tail


def test_a_file_of_exactly_one_mebibyte_loads_one_byte_more_does_not():
    assert load_errors(_sized(1_048_576)) == []
    assert load_errors(_sized(1_048_577)) == ["1:1: file is 1048577 bytes, over the 1 MiB limit"]


def _nodes(total: int) -> bytes:
    """A document of exactly `total` nodes: the root mapping, one list and its items."""
    return b"a: [" + b",".join([b"x"] * (total - 2)) + b"]\n"


def test_a_document_of_exactly_100000_nodes_loads_one_more_does_not():
    assert load_errors(_nodes(100_000)) == []
    assert load_errors(_nodes(100_001)) == ["1:200001: document expands to more than 100000 nodes"]


def _nested(lists: int) -> bytes:
    return b"a: " + b"[" * lists + b"1" + b"]" * lists + b"\n"


def test_nesting_of_exactly_64_levels_loads_one_more_does_not():
    assert load_errors(_nested(63)) == []  # the root mapping and 63 lists: 64 levels
    assert load_errors(_nested(64)) == ["1:67: nested more than 64 levels deep"]


def test_an_integer_of_exactly_30_digits_loads_31_do_not():
    assert load_text("f.yaml", b"a: " + b"9" * 30 + b"\n").data == {"a": int("9" * 30)}
    assert load_text("f.yaml", b"a: 1_" + b"0" * 29 + b"\n").data == {"a": 10**29}  # underscores do not count
    assert load_errors(b"a: " + b"9" * 31 + b"\n") == ["1:4: integer of 31 digits is too large"]


def test_a_hex_integer_counts_its_digits_not_its_prefix():
    assert load_text("f.yaml", b"a: 0x" + b"f" * 30 + b"\n").data == {"a": 16**30 - 1}
    assert load_errors(b"a: -0x" + b"f" * 31 + b"\n") == ["1:4: integer of 31 digits is too large"]


@pytest.mark.parametrize(
    "length,shown",
    [(40, "'" + "x" * 40 + "'"), (41, "'" + "x" * 40 + "... (41 characters)'")],
)
def test_values_in_messages_are_cut_after_40_characters(length, shown):
    assert load_errors(b"x" * length + b"\n") == [f"1:1: expected a mapping of fields, got the str {shown}"]


# --- the semantic rules' limits, through the real CLI: one fleet at the limits, one just beyond ---------

REVISION = "a09a35458c702b33eeacc393d103063234e8bc28"

# name -> (fields at the limit: valid, fields one step beyond: refused, the message then)
RULE_LIMITS = {
    "window-low": ("scaling: {scaledown_window: 2}", "scaling: {scaledown_window: 1}", "between 2 s and 3600 s"),
    "window-high": ("scaling: {scaledown_window: 1h}", "scaling: {scaledown_window: 3601}", "between 2 s and 3600 s"),
    "startup-low": ("scaling: {startup_timeout: 1s}", "scaling: {startup_timeout: 0s}", "between 1 s and 86400 s"),
    "startup-high": (
        "scaling: {startup_timeout: 24h}",
        "scaling: {startup_timeout: 24h0m1s}",
        "between 1 s and 86400 s",
    ),
    "a10-count": ("gpu: {type: A10, count: 4}", "gpu: {type: A10, count: 5}", "A10 allows at most 4 GPUs"),
    "fallback-count": (
        "gpu: {type: H100, count: 4, fallbacks: [A10]}",
        "gpu: {type: H100, count: 5, fallbacks: [A10]}",
        "A10 allows at most 4 GPUs",
    ),
    "tensor-parallel": (
        "gpu: {type: H100, count: 2, tensor_parallel_size: 2}",
        "gpu: {type: H100, count: 2, tensor_parallel_size: 3}",
        "tensor_parallel_size 3 must divide the GPU count 2",
    ),
    "tp-one-gpu": (  # gpu.count unset: one GPU
        "gpu: {type: H100, tensor_parallel_size: 1}",
        "gpu: {type: H100, tensor_parallel_size: 2}",
        "tensor_parallel_size 2 must divide the GPU count 1",
    ),
    "containers": (
        "scaling: {min_containers: 3, max_containers: 3}",
        "scaling: {min_containers: 4, max_containers: 3}",
        "min_containers 4 is above max_containers 3",
    ),
    "concurrency": (
        "scaling: {target_concurrency: 8, max_concurrency: 8}",
        "scaling: {target_concurrency: 8.5, max_concurrency: 8}",
        "target_concurrency 8.5 is above max_concurrency 8",
    ),
}


def _fleet(tmp_path, which: int):
    folder = tmp_path / ("at-limit" if which == 0 else "beyond")
    folder.mkdir()
    for name, cases in RULE_LIMITS.items():
        fields = cases[which]
        gpu = "" if fields.startswith("gpu:") else "gpu: {type: H100}\n"
        (folder / f"{name}.yaml").write_text(
            f"name: {name}\nmodel: {{id: org/{name}, revision: {REVISION}}}\n{gpu}{fields}\n"
        )
    return folder


def test_each_rule_allows_its_limit_and_refuses_one_step_beyond(tmp_path):
    import json

    from conftest import run_cli

    at = run_cli("validate", str(_fleet(tmp_path, 0)), "--format", "json")
    assert (at.returncode, json.loads(at.stdout)["diagnostics"]) == (0, [])
    beyond = run_cli("validate", str(_fleet(tmp_path, 1)), "--format", "json")
    assert beyond.returncode == 1
    found = {}
    for d in json.loads(beyond.stdout)["diagnostics"]:
        found.setdefault(d["file"].rsplit("/", 1)[-1].removesuffix(".yaml"), []).append(d["message"])
    assert set(found) == set(RULE_LIMITS)
    for name, (_, _, message) in RULE_LIMITS.items():
        assert len(found[name]) == 1 and message in found[name][0], (name, found[name])


def test_a_value_is_echoed_whole_up_to_80_characters_and_cut_after(tmp_path):
    """`shown`: a repr of exactly 80 characters is echoed whole; one more is cut to 79 and `…`, with the length."""
    import json

    from conftest import run_cli

    fits, cut = "T" * 78, "T" * 79  # their reprs: 80 and 81 characters
    for name, value in (("fits", fits), ("cut", cut)):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nmodel: {{id: org/{name}, revision: {REVISION}}}\ngpu: {{type: {value}}}\n"
        )
    result = run_cli("validate", str(tmp_path), "--format", "json")
    messages = {d["file"].rsplit("/", 1)[-1]: d["message"] for d in json.loads(result.stdout)["diagnostics"]}
    got = {k: v.split("; got ", 1)[1] for k, v in messages.items()}
    assert got == {"fits.yaml": f"string '{fits}'", "cut.yaml": "string '" + "T" * 78 + "… (79 characters)"}


def test_gateway_limits_are_allowed_exactly_and_refused_one_step_beyond(tmp_path):
    from conftest import run_cli

    deployment = f"name: a\nmodel: {{id: org/a, revision: {REVISION}}}\ngpu: {{type: H100}}\n"
    at = (
        "gateway: {enabled: true, upstream_timeout: 10m, request_timeout: 24h, min_containers: 2, "
        "max_containers: 2, target_concurrency: 5, max_concurrency: 5}\n"
    )
    beyond = (
        "gateway: {enabled: true, upstream_timeout: 24h0m1s, request_timeout: 24h0m1s, min_containers: 3, "
        "max_containers: 2, target_concurrency: 6, max_concurrency: 5}\n"
    )
    for which, fleet in (("at", at), ("beyond", beyond)):
        folder = tmp_path / which
        folder.mkdir()
        (folder / "a.yaml").write_text(deployment)
        (folder / "fleet.yaml").write_text(fleet)
    result = run_cli("validate", str(tmp_path / "at"))
    assert (result.returncode, result.stderr) == (0, "")
    result = run_cli("validate", str(tmp_path / "beyond"))
    errors = [line.split(": error: ", 1)[1] for line in result.stderr.splitlines() if ": error: " in line]
    assert errors == [
        "gateway.request_timeout: request_timeout (86401 s) must be longer than upstream_timeout (86401 s)",
        "gateway.request_timeout: request_timeout (86401 s) is over Modal's 24 h limit",
        "gateway.min_containers: min_containers 3 is above max_containers 2",
        "gateway.target_concurrency: target_concurrency 6 is above max_concurrency 5",
    ]
