"""Stage 6: the verbs that change or read what Modal runs, one module each (as Helm's pkg/action).

- `run`: `fleetform deploy`: deploy what changed, smoke test, roll back what fails.
- `smoke`: the smoke test run on each freshly deployed app.
- `progress`: per-deployment progress while deploys run.
- `status`: `fleetform status`: what Modal runs against the YAML.
- `rollback`: `fleetform rollback`: put an earlier version back.
- `destroy`: `fleetform destroy`: stop an app.
- `common`: what they share (report base, yes/no question, one-line errors).

What `deploy` would do (the live plan) is `renderer.plan.live`; everything that reaches Modal goes
through `renderer.modal_api`.
"""
