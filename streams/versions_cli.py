"""`streams versions create | release | list | show`: prompt versions from the command line.

The same store as `app.create_version(...)` (`streams.sdk.versions`); `--format json`
prints one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import orjson

from streams.errors import StreamsError
from streams.sdk.versions import LATEST, Catalog, Version, VersionStore
from streams.settings import Settings


def add_parser(commands: Any) -> None:  # argparse's _SubParsersAction is private
    """Add `versions` and its subcommands to the `streams` parser."""
    versions = commands.add_parser("versions", help="prompt versions of LLM applications")
    actions = versions.add_subparsers(dest="versions_command", required=True)
    create = actions.add_parser("create", help="store a new prompt version; prints its number")
    prompt = create.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt template; {{name}} marks an input")
    prompt.add_argument("--prompt-file", type=Path, help="read the prompt template from a file")
    create.add_argument("--description", default="")
    create.add_argument("--model", required=True, help="e.g. gpt-4o-mini")
    create.add_argument(
        "--params", type=_json_object, default=None, help='JSON, e.g. {"temperature": 0.2}'
    )
    release = actions.add_parser("release", help="make an environment run a version")
    release.add_argument("--version", type=int, required=True, help="the version number")
    release.add_argument("--env", required=True, help="e.g. prod or test")
    actions.add_parser("list", help="every version, and which one each environment runs")
    show = actions.add_parser("show", help="one version: its prompt, model and params")
    show.add_argument(
        "--version", default=LATEST, help="a number, an environment (prod, test) or latest"
    )
    for action in (create, release, show, actions.choices["list"]):
        action.add_argument("--application", required=True)
        action.add_argument("--format", choices=["table", "json"], default="table")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('a JSON object is needed, e.g. {"temperature": 0.2}')
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one `streams versions ...` command; returns the exit status."""
    store = VersionStore(settings)
    application, command = args.application, args.versions_command
    if command == "create":
        template = args.prompt
        if args.prompt_file is not None:
            try:
                template = args.prompt_file.read_text(encoding="utf-8")
            except OSError as error:
                raise StreamsError(f"cannot read --prompt-file: {error}") from None
        version = store.create(application, template, args.description, args.model, args.params)
        return _print(
            args.format,
            version.to_json(),
            f"{application}: created version {version.version_number} ({version.version_id})",
        )
    if command == "release":
        version = store.release(application, args.version, args.env)
        document = {"application": application, "env": args.env, **version.to_json()}
        return _print(
            args.format,
            document,
            f"{application}: {args.env} runs version {version.version_number}",
        )
    catalog = store.catalog(application)
    if command == "list":
        return _print(args.format, _listing(catalog), _table(catalog))
    wanted = args.version
    found = _find(catalog, int(wanted) if wanted.isdigit() else wanted)
    if found is None:
        print(f"streams: {application} has no version {wanted!r}", file=sys.stderr)
        return 1
    document = {**found.to_json(), "environments": catalog.environments(found)}
    return _print(args.format, document, _details(document))


def _find(catalog: Catalog, wanted: str | int) -> Version | None:
    if isinstance(wanted, int):
        return catalog.number(wanted)
    if wanted == LATEST:
        return catalog.versions[-1] if catalog.versions else None
    return catalog.released(wanted)


def _listing(catalog: Catalog) -> dict[str, Any]:
    releases = {env: catalog.released(env) for env in sorted(catalog.releases)}
    return {
        "application": catalog.application,
        "versions": [
            {**v.to_json(), "environments": catalog.environments(v)} for v in catalog.versions
        ],
        "releases": {env: v.version_number for env, v in releases.items() if v is not None},
    }


def _table(catalog: Catalog) -> str:
    if not catalog.versions:
        return f"{catalog.application}: no versions yet"
    lines = [
        f"{'version':>7}  {'environments':<14}  {'model':<16}  {'created_at':<24}  description"
    ]
    for v in catalog.versions:
        envs = ",".join(catalog.environments(v)) or "-"
        model = str(v.config.get("model", ""))
        lines.append(
            f"{v.version_number:>7}  {envs:<14}  {model:<16}  {v.created_at:<24}  {v.description}"
        )
    return "\n".join(lines)


def _details(document: dict[str, Any]) -> str:
    config = document["config"]
    return "\n".join(
        [
            f"application     {document['application']}",
            f"version_number  {document['version_number']}",
            f"version_id      {document['version_id']}",
            f"environments    {', '.join(document['environments']) or '-'}",
            f"created_at      {document['created_at']}",
            f"description     {document['description']}",
            f"model           {config.get('model')}",
            f"params          {json.dumps(config.get('params', {}), sort_keys=True)}",
            f"prompt_inputs   {', '.join(config.get('prompt_inputs', []))}",
            "prompt",
            str(config.get("prompt", "")),
        ]
    )


def _print(form: str, document: dict[str, Any], text: str) -> int:
    if form == "json":
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        print(text)
    return 0
