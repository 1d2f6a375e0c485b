"""``docs/control-api.md``, rendered from the control API's OpenAPI document.

One section per route (method, path, authentication, request fields, responses with their
body schema, a curl example), after a short part on client authentication and the error
shape. Pure: document in, Markdown out, so a test can regenerate the page and compare.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlencode

from lockgate.control.openapi import document

Schema = dict[str, Any]
BASE = "https://lockgate.example:8443"
HEADER = """\
# Control API reference

<!-- Generated from lockgate.control.openapi: python -m lockgate.control.openapi_markdown
     > docs/control-api.md (a test fails when this file and the document differ). -->

The control listener serves the routes below. The machine-readable OpenAPI 3.1 document is
served by the listener itself at `GET /openapi.json` (no authentication).

"""


def render(doc: dict[str, Any]) -> str:
    """The Markdown page of ``doc``."""
    out = [HEADER, doc["info"]["description"], "\n\n", _auth_section(doc), _error_section(doc)]
    out.append("## Routes\n\n| method | path | summary |\n| --- | --- | --- |\n")
    for path, method, op in _operations(doc):
        out.append(
            f"| {method.upper()} | [`{path}`](#{_anchor(method, path)}) | {op['summary']} |\n"
        )
    out.append("\n")
    for path, method, op in _operations(doc):
        out.append(_operation(doc, path, method, op))
    return "".join(out).rstrip("\n") + "\n"


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, Schema]]:
    return [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items()]


def _anchor(method: str, path: str) -> str:
    """GitHub's anchor of the section heading ``METHOD path``."""
    text = f"{method} {path}".lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def _auth_section(doc: dict[str, Any]) -> str:
    lines = [
        "## Client authentication\n\n",
        "Routes a deployment calls accept exactly one of these per request:\n\n",
    ]
    schemes = doc["components"]["securitySchemes"]
    basic = schemes["clientSecretBasic"]
    lines.append(f"- `clientSecretBasic` ({_scheme_kind(basic)}): {basic['description']}\n")
    for name, method in doc["x-body-authentication"].items():
        fields = ", ".join(f"`{f}`" for f in method["fields"])
        lines.append(f"- `{name}` (body fields {fields}): {method['description']}\n")
    task = schemes["identityHeader"]
    lines.append(
        f"\nThe managed identity endpoint is called by a task instead: `identityHeader` "
        f"({_scheme_kind(task)}): {task['description']}\n"
    )
    return "".join(lines) + "\n"


def _scheme_kind(scheme: Schema) -> str:
    if scheme["type"] == "http":
        return f"HTTP {scheme['scheme'].capitalize()}"
    return f"header `{scheme['name']}`"


def _error_section(doc: dict[str, Any]) -> str:
    schema = doc["components"]["schemas"]["OAuthError"]
    return (
        "## Errors\n\n"
        f"{schema['description']} Every refusal carries `Cache-Control: no-store` and is "
        "recorded in the audit trail with a reason slug.\n\n" + _fields_table(doc, schema) + "\n"
    )


def _operation(doc: dict[str, Any], path: str, method: str, op: Schema) -> str:
    out = [f"### {method.upper()} {path}\n\n", f"{op['summary']}. {op['description']}\n\n"]
    out.append(f"**Authentication:** {_security(op)}\n\n")
    for param in op.get("parameters", []):
        required = " (required)" if param.get("required") else ""
        values = param["schema"].get("enum") or param["schema"].get("examples") or []
        shown = ", ".join(f"`{v}`" for v in values)
        out.append(f"- {param['in']} `{param['name']}`{required}: {shown}\n")
    if op.get("parameters"):
        out.append("\n")
    body = op.get("requestBody")
    if body is not None:
        media = next(iter(body["content"].values()))
        kinds = " or ".join(f"`{t}`" for t in body["content"])
        schema = _resolve(doc, media["schema"])
        out.append(f"**Request body** ({kinds}):\n\n{_fields_table(doc, schema)}\n")
    out.append("**Responses:**\n\n| status | body | meaning |\n| --- | --- | --- |\n")
    for status, response in sorted(op["responses"].items()):
        out.append(f"| {status} | {_body_names(response)} | {response['description']} |\n")
    out.append("\n**Examples:**\n\n")
    for summary, curl in _curls(path, method, op):
        out.append(f"{summary}:\n\n```sh\n{curl}\n```\n\n")
    for status, response in sorted(op["responses"].items()):
        answer = response.get("content", {}).get("application/json", {})
        for example in answer.get("examples", {}).values():
            text = json.dumps(example["value"], indent=2)
            out.append(f"{status}, {example['summary']}:\n\n```json\n{text}\n```\n\n")
    return "".join(out)


def _security(op: Schema) -> str:
    requirements = op.get("security", [])
    if not requirements:
        return "none."
    names = [name for req in requirements for name in req]
    if {} in requirements:
        return "a deployment: " + ", ".join(f"`{n}`" for n in names) + " or a body-borne method."
    return ", ".join(f"`{n}`" for n in names) + "."


def _resolve(doc: dict[str, Any], schema: Schema) -> Schema:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: Schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def _fields_table(doc: dict[str, Any], schema: Schema) -> str:
    required = set(schema.get("required", []))
    rows = ["| field | type | required | description |\n| --- | --- | --- | --- |\n"]
    for name, field in schema.get("properties", {}).items():
        field = _resolve(doc, field)
        rows.append(
            f"| `{name}` | {_type(field)} | {'yes' if name in required else ''} "
            f"| {field.get('description', '')} |\n"
        )
    return "".join(rows)


def _type(field: Schema) -> str:
    if "oneOf" in field:
        return " or ".join(_type(f) for f in field["oneOf"])
    kind = str(field.get("type", "object"))
    if "enum" in field:
        return kind + ": " + ", ".join(f"`{v}`" for v in field["enum"])
    return kind


def _body_names(response: Schema) -> str:
    names = []
    for media, content in response.get("content", {}).items():
        ref = content["schema"].get("$ref")
        names.append(f"{media} `{ref.rsplit('/', 1)[1]}`" if ref else media)
    return "<br>".join(names) or "none"


def _curls(path: str, method: str, op: Schema) -> list[tuple[str, str]]:
    """(summary, curl command) per request example."""
    if method == "get":
        query = {p["name"]: _example_value(p) for p in op.get("parameters", [])}
        url = BASE + path + ("?" + urlencode(query) if query else "")
        if any("identityHeader" in req for req in op.get("security", [])):
            return [("A task asks", f"curl -H \"X-IDENTITY-HEADER: $LOCKGATE_TOKEN\" '{url}'")]
        return [("Request", f"curl '{url}'")]
    media = op["requestBody"]["content"]["application/x-www-form-urlencoded"]
    out = []
    for example in media["examples"].values():
        fields = example["value"]
        # The body authenticates a token exchange; otherwise the deployment's Basic secret.
        auth = [] if "subject_token" in fields else ['-u "prod:$DEPLOYMENT_SECRET"']
        data = [
            f'--data-urlencode "{k}={v}"' if v.startswith("$") else f"--data-urlencode '{k}={v}'"
            for k, v in fields.items()
        ]
        command = " \\\n  ".join(["curl " + " ".join(auth) if auth else "curl", *data, BASE + path])
        out.append((example["summary"], command))
    return out


def _example_value(param: Schema) -> str:
    schema = param["schema"]
    return str((schema.get("enum") or schema.get("examples") or [""])[0])


if __name__ == "__main__":
    sys.stdout.write(render(document()))
