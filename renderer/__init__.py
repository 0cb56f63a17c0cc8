"""fleetform: declare an LLM fleet in YAML, render it into Modal apps that run vLLM, deploy it.

The package is a pipeline, one module per stage, data flowing one way:

    load      YAML text -> tree of nodes that remember file:line:column
    validate  tree -> diagnostics (JSON Schema, then semantic rules)
    resolve   fleet defaults + environment overlays + deployment -> frozen, typed Deployment
    render    Deployment -> Modal app module text (Jinja2), deterministic
    plan      rendered fleet -> table of what would run and what it costs
    deploy    rendered fleet -> live Modal apps (through `modal_api`, the network boundary)
    client    OpenAI-compatible HTTP client: smoke tests and load tests

`runtime` is the start-up logic shared by the rendered apps and `fleetform serve --local`.
"""

__version__ = "0.1.0"
