"""Literal credentials in YAML: found in every string of every loaded document, keys included.

A deployment names Modal Secrets; it never holds a token. `find_credentials` walks one raw
document (a deployment file with its environment overlays, or fleet.yaml with its defaults,
environment overrides and gateway) and reports each string that looks like a credential once, at
the line where it was written. `resolve` calls it once per document, before anything is merged,
so a token in fleet.yaml `defaults` is one error, not one per deployment that inherits it.

What counts as a credential:

- a value (or a key) containing a known token shape, anywhere in the string, even glued to a
  prefix (`Bearerhf_...`, `token=sk-...`): Hugging Face, OpenAI/Anthropic style `sk-`, Stripe,
  AWS access key ids, GitHub, Slack and Modal tokens (Modal's are `ak-`/`as-` and, for proxy
  auth, `wk-`/`ws-`, each followed by 22 letters and digits);
- a URL with a password in it (`scheme://user:PASSWORD@host`);
- an environment variable whose name says it holds a secret (`HF_TOKEN`, `MY_API_KEY`,
  `DB_PASSWORD`...) set to a literal value.

A vLLM flag that takes a secret (`--api-key`, `--hf-token`, in any spelling or abbreviation) in
`engine.extra_args` is refused by the rules with every other flag fleetform manages
(`renderer.config.vllm_args`), in every environment.

Shapes that are only prefixes of ordinary words (`sk-`, `ak-`, `xoxb-`) also need a random-looking
body, so a model id such as `org/ask-me-anything-v2` or a Secret named `hf-token` is not flagged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from renderer.config.load import Document, Node
from renderer.diagnostics import Diagnostic
from renderer.diagnostics import Path as FieldPath

CODE = "literal-credential"
HINT = "put it in a Modal Secret (`modal secret create NAME VAR=...`) and list the Secret's name under `secrets`"


def _random(body: str) -> bool:
    """Whether a token body looks generated: a long run of letters and digits that has both."""
    run = re.search(r"[A-Za-z0-9]{16,}", body)
    return bool(run) and any(c.isdigit() for c in body) and any(c.isalpha() for c in body)


@dataclass(frozen=True)
class Shape:
    """One kind of token: a pattern searched anywhere in a string, and an optional check of the match."""

    what: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None

    def found(self, text: str) -> bool:
        for m in self.pattern.finditer(text):
            if self.check is None or self.check(m.group(0)):
                return True
        return False


# No leading \b: a token glued to a prefix (`Bearerhf_...`, `key=sk-...`) is still a token.
SHAPES: tuple[Shape, ...] = (
    Shape("a Hugging Face token", re.compile(r"hf_[A-Za-z0-9]{30,}")),
    Shape("an API key (sk-...)", re.compile(r"sk-(?:proj-|ant-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"), _random),
    Shape("a Stripe key", re.compile(r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}")),
    Shape("an AWS access key", re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])")),
    Shape("a GitHub token", re.compile(r"gh[pousr]_[A-Za-z0-9]{36,}")),
    Shape("a GitHub token", re.compile(r"github_pat_[A-Za-z0-9_]{22,}")),
    Shape("a Slack token", re.compile(r"xox[abposre]-[A-Za-z0-9-]{10,}"), lambda m: any(c.isdigit() for c in m)),
    Shape("a Modal token", re.compile(r"(?:ak|as|wk|ws)-[A-Za-z0-9]{20,}"), _random),
    Shape(
        "a password in a URL",
        re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:([^\s/@]+)@"),
        lambda m: not re.search(r":\$|:\{|:<", m),
    ),  # `${VAR}`, `{password}`, `<password>` are placeholders
)

# Words in an environment variable's name that say its value is a secret (`_`-separated parts).
_SECRET_WORDS = {
    "TOKEN",
    "SECRET",
    "KEY",
    "APIKEY",
    "PASSWORD",
    "PASSWD",
    "PWD",
    "PASS",
    "CREDENTIAL",
    "CREDENTIALS",
    "PRIVATE",
}


def secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret: `HF_TOKEN`, `MY_API_KEY`, `DB_PASSWORD`;
    not `TOKENIZERS_PARALLELISM` (a part must be one of the words, not start with it)."""
    return any(part.rstrip("0123456789") in _SECRET_WORDS for part in re.split(r"[_\W]+", name.upper()))


# Every shape's first characters: one search tells that a string holds none of them (most strings).
_ANY = re.compile(r"hf_|sk-|k_live_|k_test_|AKIA|ASIA|gh[pousr]_|github_pat_|xox|[aw][ks]-|://")


def token_shape(text: str) -> str | None:
    """What kind of credential `text` contains (None: none)."""
    if not _ANY.search(text):
        return None
    for shape in SHAPES:
        if shape.found(text):
            return shape.what
    return None


def _findings(root: Node) -> Iterator[tuple[FieldPath, Node, str]]:
    """(path, node, message) for every credential in the tree: one a string (a key and its value are two)."""
    for path, node in root.walk():
        v = node.value
        if isinstance(v, str):
            what = token_shape(v)
            if what:
                yield path, node, f"looks like {what}: credentials never belong in YAML"
        elif isinstance(v, dict):
            env = bool(path) and path[-1] == "env"
            for key, child in v.items():
                what = token_shape(key)
                mark_node = Node(key, (node.key_marks or {}).get(key, child.mark))
                if what:
                    # the key is the secret: its path would print it, so the finding is the mapping's
                    yield path, mark_node, f"a key here looks like {what}: credentials never belong in YAML"
                elif (
                    env
                    and secret_name(key)
                    and child.value not in ("", None)
                    and not (isinstance(child.value, str) and token_shape(child.value))
                ):
                    yield (*path, key), child, f"{key} looks like a credential, set as a literal value"


def find_credentials(doc: Document) -> list[Diagnostic]:
    """Every literal credential in one loaded document, each reported once where it was written."""
    return [Diagnostic(node.mark, path, message, CODE, hint=HINT) for path, node, message in _findings(doc.root)]
