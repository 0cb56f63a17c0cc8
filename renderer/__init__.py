"""fleetform: declare an LLM fleet in YAML, render it into Modal apps that run vLLM, deploy it.

The package is the pipeline, one folder per stage, data flowing one way (each stage imports only
from the ones above it; tests/test_layering.py checks):

    diagnostics.py, gpus.py   one diagnostic type; what fleetform knows of Modal's GPU types
    sizing/                   model shapes and the memory model: what fits which GPUs
    config/                   YAML text -> checked, typed, fully resolved deployments (`spec`)
    codegen/                  deployments -> Modal app module text, written atomically
    endpoint/                 talking to a served model: smoke test, load test, `serve --local`
    modal_api.py              the only module that talks to Modal
    plan/                     what a deploy would change and cost: offline, live, against a git revision
    deploy/                   deploy, status, rollback, destroy
    cli/                      the `fleetform` command: options in, one reporter out
    docs.py                   the generated schema reference (docs/schema.md)
"""

__version__ = "0.2.0"
