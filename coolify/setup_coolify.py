#!/usr/bin/env python3
"""Create (or bring up to date) the FlagMeter project and application in Coolify through its API, so the
setup is reproducible rather than clicked. Standard library only.

    COOLIFY_URL=https://coolify.example.com COOLIFY_TOKEN=... \\
      python3 coolify/setup_coolify.py --repo https://github.com/acme/flagmeter --domain https://meter.example.com

Idempotent: an existing project, environment or application of the same name is reused, and only settings
and variables that differ from the wanted ones are written; a second run writes nothing. Follows the API of
Coolify v4.3.10 (the release `coolify_version` pins in roles/coolify/defaults/main.yml); older releases
refuse the preview and auto-deploy fields. The token needs the read and write permissions (Keys & Tokens →
API tokens). Any error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

COMPOSE_LOCATION = "/coolify/docker-compose.yml"
API_PORT = 8080

# Production values, then what a preview (pull request) deployment gets instead. Secrets are not here:
# Coolify generates SERVICE_PASSWORD_* / SERVICE_USER_* once per application (see coolify/README.md).
VARIABLES = {
    "POSTGRES_DB": ("flagmeter", "flagmeter"),
    "FLAGMETER_LOG_LEVEL": ("INFO", "DEBUG"),
    "FLAGMETER_API_PROCESSES": ("2", "1"),
    "FLAGMETER_RATE_LIMIT": ("10000", "1000"),
}


class CoolifyError(Exception):
    """The API answered with an error; the message carries its status and body."""


class Coolify:
    def __init__(self, base_url: str, token: str, dry_run: bool) -> None:
        self.base_url = base_url.rstrip("/") + "/api/v1"
        self.token = token
        self.dry_run = dry_run
        # Whether this run wrote (or, with --dry-run, would write) anything.
        self.changed = False

    def request(self, method: str, path: str, body: Any = None, *, writes: bool | None = None) -> Any:
        """One API call; with --dry-run the writes (every method but GET, unless told) are only printed."""
        if self.dry_run and (method != "GET" if writes is None else writes):
            print(f"would {method} {path} {json.dumps(body, sort_keys=True)}")
            return {"uuid": f"<new {path.strip('/').split('/')[0]}>"}
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise CoolifyError(http_error(method, path, error.code, error.read())) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise CoolifyError(f"cannot reach {self.base_url}: {reason}") from None

    def report(self, done: str) -> None:
        """Say what a write did; with --dry-run the "would ..." line already said it."""
        self.changed = True
        if not self.dry_run:
            print(done)

    def find(self, path: str, name: str) -> dict[str, Any] | None:
        return next((item for item in self.request("GET", path) if item.get("name") == name), None)


def http_error(method: str, path: str, status: int, body: bytes) -> str:
    """One line: what was asked, Coolify's status and message, and its field errors."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"message": body.decode(errors="replace").strip()[:200]}
    text = f"{method} {path}: {status} {answer.get('message', '')}".rstrip()
    if errors := answer.get("errors"):
        text += " " + json.dumps(errors, sort_keys=True)
    if status == 401:
        text += " (is COOLIFY_TOKEN a valid API token of this instance?)"
    return text


def server_uuid(api: Coolify, wanted: str | None) -> str:
    servers = api.request("GET", "/servers")
    if wanted:
        match = [s for s in servers if wanted in (s.get("uuid"), s.get("name"))]
    else:
        match = servers if len(servers) == 1 else []
    if len(match) != 1:
        names = ", ".join(f"{s.get('name')} ({s.get('uuid')})" for s in servers)
        raise CoolifyError(f"name one server with --server; the instance has: {names}")
    return str(match[0]["uuid"])


def project_uuid(api: Coolify, name: str) -> str:
    project = api.find("/projects", name)
    if project:
        return str(project["uuid"])
    created = api.request("POST", "/projects", {"name": name, "description": "Per-tenant AI-token metering"})
    api.report(f"created project {name}")
    return str(created["uuid"])


def ensure_environment(api: Coolify, project: str, name: str) -> None:
    """Coolify creates `production` with every project; any other environment is created here."""
    if is_new(project):  # only with --dry-run: a project that would be created
        environments = [{"name": "production"}]
    else:
        environments = api.request("GET", f"/projects/{project}/environments")
    if not any(environment.get("name") == name for environment in environments):
        api.request("POST", f"/projects/{project}/environments", {"name": name})
        api.report(f"created environment {name}")


def is_new(uuid: str) -> bool:
    """The placeholder --dry-run answers for something it would have created."""
    return uuid.startswith("<new")


def application_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Settings sent on creation and again on every run."""
    settings: dict[str, Any] = {
        "name": args.name,
        "description": "FlagMeter api, worker, migrate, postgres, valkey",
        "git_branch": args.branch,
        "build_pack": "dockercompose",
        "base_directory": "/",
        "docker_compose_location": args.compose_location,
        "is_auto_deploy_enabled": True,
        "is_preview_deployments_enabled": True,
        "preview_url_template": args.preview_template,
    }
    if args.domain:
        # For a compose service the port after the domain is the container port the proxy targets.
        settings["docker_compose_domains"] = [{"name": "api", "domain": f"{args.domain}:{API_PORT}"}]
    return settings


def ensure_application(api: Coolify, args: argparse.Namespace, project: str, server: str) -> str:
    settings = application_settings(args)
    existing = api.find("/applications", args.name)
    if existing:
        uuid = str(existing["uuid"])
        current = api.request("GET", f"/applications/{uuid}")
        changes = {k: v for k, v in settings.items() if k != "name" and current_value(current, k) != v}
        if changes:
            api.request("PATCH", f"/applications/{uuid}", changes)
            api.report(f"updated application {args.name} ({uuid}): {', '.join(sorted(changes))}")
        else:
            print(f"application {args.name} ({uuid}) is up to date")
        return uuid
    body = {
        **settings,
        "project_uuid": project,
        "server_uuid": server,
        "environment_name": args.environment,
        "git_repository": args.repo,
        "instant_deploy": False,
    }
    if args.github_app:
        body["github_app_uuid"] = args.github_app
        created = api.request("POST", "/applications/private-github-app", body)
    else:
        created = api.request("POST", "/applications/public", body)
    api.report(f"created application {args.name} ({created['uuid']})")
    return str(created["uuid"])


def current_value(application: dict[str, Any], key: str) -> Any:
    """A setting as GET /applications/{uuid} shows it: flags under `settings`, domains as a JSON string."""
    if key in application.get("settings", {}):
        return application["settings"][key]
    value = application.get(key)
    if key == "docker_compose_domains":
        shown = json.loads(value or "{}")
        return [{"name": name, "domain": entry.get("domain")} for name, entry in shown.items()]
    return value


def set_variables(api: Coolify, uuid: str) -> None:
    envs = [] if is_new(uuid) else api.request("GET", f"/applications/{uuid}/envs")
    current = {(env["key"], bool(env["is_preview"])): env.get("value") for env in envs}
    data = [
        {"key": key, "value": value, "is_preview": preview}
        for key, values in VARIABLES.items()
        for preview, value in zip((False, True), values, strict=True)
        if current.get((key, preview)) != value
    ]
    if data:
        api.request("PATCH", f"/applications/{uuid}/envs/bulk", {"data": data})
        api.report(f"set {len(data)} variables ({len(VARIABLES)} for production and previews)")
    else:
        print("variables are up to date")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="git URL of the FlagMeter repository")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--project", default="flagmeter", help="Coolify project name (created if missing)")
    parser.add_argument("--environment", default="production")
    parser.add_argument("--name", default="flagmeter", help="application name")
    parser.add_argument("--server", help="server name or uuid (needed when the instance has several)")
    parser.add_argument(
        "--compose-location",
        default=COMPOSE_LOCATION,
        help="the compose file Coolify deploys, from the repository root",
    )
    parser.add_argument("--domain", help="public URL of the API, e.g. https://meter.example.com")
    parser.add_argument(
        "--preview-template", default="{{pr_id}}.{{domain}}", help="preview URL template (Coolify syntax)"
    )
    parser.add_argument("--github-app", help="uuid of a GitHub App in Coolify, for a private repository")
    parser.add_argument("--deploy", action="store_true", help="start a deployment at the end")
    parser.add_argument(
        "--deploy-if-changed",
        action="store_true",
        help="start a deployment at the end only when this run created or changed something",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="read, but print the writes instead of sending"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url, token = os.environ.get("COOLIFY_URL"), os.environ.get("COOLIFY_TOKEN")
    if not url or not token:
        print("set COOLIFY_URL and COOLIFY_TOKEN", file=sys.stderr)
        return 2
    api = Coolify(url, token, args.dry_run)
    try:
        server = server_uuid(api, args.server)
        project = project_uuid(api, args.project)
        ensure_environment(api, project, args.environment)
        uuid = ensure_application(api, args, project, server)
        set_variables(api, uuid)
        if args.deploy or (args.deploy_if_changed and api.changed):
            api.request("GET", f"/deploy?uuid={uuid}", writes=True)
            api.report("deployment queued")
    except CoolifyError as error:
        print(f"coolify: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
