"""`fleetform status --detailed-exitcode`, the scheduled drift check of the shipped workflow: the real
CLI and modal client against the in-test control plane (fixtures of test_modal_e2e.py)."""

from __future__ import annotations

import json

from test_modal_e2e import LARGE, SMALL, cli, deploy, edit, endpoint, fleet, plane


def status(plane, fleet, *args: str):
    return cli(plane, fleet, "status", "--env", "dev", "--detailed-exitcode", *args)


def test_detailed_exitcode_is_0_in_sync_2_on_drift_1_on_error(plane, fleet, endpoint):
    assert deploy(plane, fleet)[0].returncode == 0
    result = status(plane, fleet, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert {r["state"] for r in json.loads(result.stdout)["deployments"]} == {"in_sync"}

    edit(
        fleet, SMALL, "scaledown_window: 10m", "scaledown_window: 20m"
    )  # the YAML moves on; Modal still runs the old tag
    result = status(plane, fleet, "--format", "json")
    assert result.returncode == 2, result.stderr
    states = {r["name"]: r["state"] for r in json.loads(result.stdout)["deployments"]}
    assert states == {SMALL: "drifted", LARGE: "in_sync"}
    assert cli(plane, fleet, "status", "--env", "dev").returncode == 0  # without the flag, drift is not an error

    result = status(plane, fleet, "--env", "staging")  # an unknown environment: an error, never "drift"
    assert result.returncode == 1 and "staging" in result.stderr
    assert cli(plane, fleet, "status", "--env", "staging").returncode == 2  # a usage error without the flag


def test_an_orphan_is_drift(plane, fleet, endpoint):
    assert deploy(plane, fleet)[0].returncode == 0
    (fleet / "deployments" / f"{LARGE}.yaml").unlink()
    result = status(plane, fleet)
    assert result.returncode == 2 and "orphan" in result.stdout
