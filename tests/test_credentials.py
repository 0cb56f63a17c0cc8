"""Literal credentials: every token shape, in every place a document can hold a string, reported once
where it was written; ordinary values are not flagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderer.config.credentials import secret_name, token_shape
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve

REV = "a" * 40

# (value, what the message says it looks like)
TOKENS = {
    "huggingface": ("hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", "a Hugging Face token"),
    "openai": ("sk-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6hIj9kLm2n", "an API key (sk-...)"),
    "openai-project": ("sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t_Uv1wXy4z-Ab3dEf6h", "an API key (sk-...)"),
    "stripe": ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "a Stripe key"),
    "aws-akia": ("AKIAIOSFODNN7EXAMPLE", "an AWS access key"),
    "aws-asia": ("ASIAY34FZKBOKMUTVV7A", "an AWS access key"),
    "github-classic": ("ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6", "a GitHub token"),
    "github-fine-grained": ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "a GitHub token"),
    "slack": ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "a Slack token"),
    # the shapes modal's own docs use for a token id and secret: `ak-`/`as-` and 22 letters and digits
    "modal-id": ("ak-0123456789abcdefghijkl", "a Modal token"),
    "modal-secret": ("as-mnopqrstuvwxyz01234567", "a Modal token"),
    "modal-proxy": ("wk-AbC123dEf456gHi789jKl0", "a Modal token"),
    "url-password": ("postgres://admin:s3cret@db.example.com/app", "a password in a URL"),
    "glued-bearer": ("Bearerhf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", "a Hugging Face token"),
    "glued-assignment": ("token=sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6hIj9k", "an API key (sk-...)"),
}


def layout(place: str, value: str) -> tuple[str, str, str]:
    """(fleet.yaml, a.yaml, the file and line the value is on) with `value` in `place`."""
    q = '"' + value.replace('"', '\\"') + '"'
    fleet = "environments:\n  dev:\n    modal_environment: ff-dev\n"
    deployment = f"name: a\nmodel: {{id: org/a, revision: {REV}}}\ngpu: {{type: L4}}\n"
    if place == "deployment":
        return fleet, deployment + f"description: {q}\n", "a.yaml:4"
    if place == "overlay":
        return (
            fleet,
            deployment + f"environments:\n  dev:\n    engine:\n      env:\n        EXTRA_HEADER: {q}\n",
            "a.yaml:8",
        )
    if place == "env-name":
        return fleet, deployment + f"engine:\n  env:\n    {q}: '1'\n", "a.yaml:6"
    if place == "fleet-defaults":
        return f"defaults:\n  engine:\n    env:\n      EXTRA_HEADER: {q}\n" + fleet, deployment, "fleet.yaml:4"
    if place == "fleet-overrides":
        return (
            fleet + f"    overrides:\n      engine:\n        env:\n          EXTRA_HEADER: {q}\n",
            deployment,
            "fleet.yaml:7",
        )
    if place == "gateway":
        return fleet + f"gateway:\n  enabled: true\n  api_key_secret: {q}\n", deployment, "fleet.yaml:6"
    raise AssertionError(place)


def credential_errors(tmp_path: Path, fleet: str, deployment: str) -> list:
    (tmp_path / "fleet.yaml").write_text(fleet)
    (tmp_path / "a.yaml").write_text(deployment)
    resolved = resolve(load_fleet([str(tmp_path)]))
    return [d for d in resolved.diagnostics if d.code == "literal-credential"]


PLACES = ["deployment", "overlay", "env-name", "fleet-defaults", "fleet-overrides", "gateway"]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("kind", list(TOKENS))
def test_each_token_shape_in_each_place_is_one_error_at_its_line(tmp_path, kind, place):
    value, what = TOKENS[kind]
    fleet, deployment, where = layout(place, value)
    found = credential_errors(tmp_path, fleet, deployment)
    assert len(found) == 1, found
    [d] = found
    assert f"{Path(d.mark.file).name}:{d.mark.line}" == where
    assert f"looks like {what}" in d.message and d.is_error
    assert value not in d.message and value not in str(d.path)  # a report never repeats the secret


def test_a_token_in_fleet_defaults_is_one_error_for_the_whole_fleet(tmp_path):
    fleet, deployment, _ = layout("fleet-defaults", TOKENS["huggingface"][0])
    (tmp_path / "b.yaml").write_text(deployment.replace("name: a", "name: b").replace("org/a", "org/b"))
    assert len(credential_errors(tmp_path, fleet, deployment)) == 1


@pytest.mark.parametrize(
    "name",
    [
        "HF_TOKEN",
        "MY_API_KEY",
        "DB_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "WANDB_APIKEY",
        "SERVICE_CREDENTIALS",
        "hf_token",
    ],
)
def test_credential_named_variables_with_literal_values(tmp_path, name):
    fleet, deployment, _ = layout("deployment", "x")
    found = credential_errors(
        tmp_path,
        fleet,
        deployment.replace('description: "x"\n', "") + f"engine:\n  env:\n    {name}: 'not-a-pattern-0'\n",
    )
    assert [d.message for d in found] == [f"{name} looks like a credential, set as a literal value"]
    assert secret_name(name)


@pytest.mark.parametrize("flag", ["--api-key=letmein", "--api_key=letmein", "--api-ke=x", "--hf-token=x", "--hf_token"])
@pytest.mark.parametrize("where", ["deployment", "overlay"])
def test_secret_flags_in_extra_args_are_refused_as_managed_flags(tmp_path, flag, where):
    """A secret on vLLM's command line is refused once, by the managed-flag rule, wherever it is set."""
    fleet, deployment, _ = layout("deployment", "x")
    extra = f"engine:\n  extra_args: [{flag!r}]\n"
    if where == "overlay":
        extra = "environments:\n  dev:\n" + "".join("    " + line + "\n" for line in extra.splitlines())
    (tmp_path / "fleet.yaml").write_text(fleet)
    (tmp_path / "a.yaml").write_text(deployment + extra)
    errors = [d for d in resolve(load_fleet([str(tmp_path)])).diagnostics if d.is_error]
    assert len(errors) == 1, errors
    assert errors[0].path[:2] == ("engine", "extra_args") and "manage" in errors[0].message
    assert "letmein" not in errors[0].message


ORDINARY = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "org/ask-me-anything-v2",
    "org/task-specific-model-2024-instruct",
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8",
    "12fd6884d2585dd4d020373e7f39f74507b31866",
    "hf-token",
    "openai-api-key",
    "as-prod-keys",
    "sk-team-shared",
    "https://user@example.com/path",
    "https://example.com:8443/v1",
    "postgres://app:${DB_PASSWORD}@db/app",
    "Bearer",
    "hf_transfer",
    "xoxb-placeholder",
    "ak-demo-key",
    "task-sk-learn-pipeline-v1-final-release",
]


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_values_are_not_flagged(value):
    assert token_shape(value) is None


@pytest.mark.parametrize(
    "name",
    [
        "TOKENIZERS_PARALLELISM",
        "HF_HUB_ENABLE_HF_TRANSFER",
        "VLLM_USE_V1",
        "KEYBOARD_LAYOUT",
        "CUDA_VISIBLE_DEVICES",
        "VLLM_LOGGING_LEVEL",
    ],
)
def test_ordinary_variable_names_are_not_credentials(tmp_path, name):
    assert not secret_name(name)
    fleet, deployment, _ = layout("deployment", "x")
    assert (
        credential_errors(
            tmp_path,
            fleet,
            deployment.replace('description: "x"\n', "")
            + f"engine:\n  env:\n    {name}: 'true'\n  extra_args: ['--max-num-partial-prefills=2']\n"
            + "secrets: [hf-token, openai-api-key]\n",
        )
        == []
    )


def test_an_empty_value_for_a_credential_name_is_not_a_literal(tmp_path):
    fleet, deployment, _ = layout("deployment", "x")
    assert credential_errors(tmp_path, fleet, deployment + "engine:\n  env:\n    HF_TOKEN: ''\n") == []
