#!/usr/bin/env python3
"""A STAND-IN for Coolify, for tests only. It is not Coolify and replaces it only where Coolify cannot run
(its images come from a registry this machine cannot reach).

It follows the behaviour of Coolify v4.3.10 (the release pinned as `coolify_version` in
roles/coolify/defaults/main.yml), as read from that release's OpenAPI document, API controllers and Docker
Compose parser, and does what Coolify does with this repository and no more:

- the API endpoints coolify/setup_coolify.py and the coolify role call, under /api/v1, with Sanctum's bearer
  auth (401 `Unauthenticated.`; 403 for a token without the write ability), the request checks every write
  makes (400 `Invalid request.` for a body that is not a JSON object), 422 `Validation failed.` with
  `errors` per field (unknown fields are "not allowed"), 404s and 409s where Coolify answers them;
- a project comes with its `production` environment; a Docker Compose application loads its compose file
  from the repository when it is created (Coolify's LoadComposeFile job), so domains can be patched later;
- a deployment is the Docker Compose build pack: every magic variable the file names (SERVICE_FQDN_*,
  SERVICE_URL_*, SERVICE_USER_*, SERVICE_PASSWORD_*, SERVICE_PASSWORD_64_*) is generated on the first
  deploy and kept as an application variable for every later one; SERVICE_NAME_* name the services; the
  compose project is the application's uuid; each service runs as `<service>-<uuid>` on the network
  `<uuid>`; named volumes become `<uuid>_<name>`; absolute bind sources are created when missing. A
  preview (pull request N) suffixes services, containers, named volumes and bind sources with `-pr-N`,
  uses the network `<uuid>-N` and its domain from the preview URL template, and its preview variables
  override production's.

Where a test machine differs from a Coolify server, and only there, it substitutes (each one a constructor
argument, none a Coolify feature): the git checkout is a local directory; images are built beforehand
(`build:` is replaced by `prebuilt_image`) and registry images are mapped to local ones (`images`); the
server's filesystem root for bind sources is `host_root`; and instead of Traefik routing a domain, the
service that has a domain gets its container port published on 127.0.0.1 (`docker compose port`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import string
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from aiohttp import web

COOLIFY_VERSION = "4.3.10"
BUILD_PACKS = {"nixpacks", "static", "dockerfile", "dockercompose"}
# The fields v4.3.10 accepts, per endpoint (ApplicationsController::create_application / update_by_uuid);
# only those this repository could send are listed, plus the required ones; anything else is "not allowed".
CREATE_FIELDS = {
    "project_uuid",
    "environment_name",
    "environment_uuid",
    "server_uuid",
    "destination_uuid",
    "name",
    "description",
    "git_repository",
    "git_branch",
    "git_commit_sha",
    "build_pack",
    "ports_exposes",
    "base_directory",
    "docker_compose_location",
    "docker_compose_domains",
    "domains",
    "instant_deploy",
    "is_auto_deploy_enabled",
    "is_preview_deployments_enabled",
    "preview_url_template",
    "github_app_uuid",
}
UPDATE_FIELDS = CREATE_FIELDS - {"project_uuid", "environment_name", "environment_uuid", "server_uuid"}
SETTINGS_FIELDS = {"is_auto_deploy_enabled", "is_preview_deployments_enabled"}
ENV_FIELDS = {"key", "value", "is_preview", "is_literal", "is_multiline", "is_shown_once", "comment"}
MAGIC = re.compile(r"SERVICE_(FQDN|URL|USER|PASSWORD_64|PASSWORD)_([A-Z0-9_]+?)(?:_(\d+))?(?![A-Z0-9_])")
ALNUM = string.ascii_letters + string.digits


def uuid() -> str:
    """Coolify's resource ids are cuid2-like: lower-case letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(24))


def generated(kind: str) -> str:
    """generateEnvValue: USER Str::random(16); PASSWORD Str::password(32, no symbols); PASSWORD_64 64."""
    length = {"USER": 16, "PASSWORD": 32, "PASSWORD_64": 64}[kind]
    return "".join(secrets.choice(ALNUM) for _ in range(length))


def failed(errors: dict[str, list[str]], status: int = 422) -> web.Response:
    return web.json_response({"message": "Validation failed.", "errors": errors}, status=status)


def message(text: str, status: int) -> web.Response:
    return web.json_response({"message": text}, status=status)


@dataclass
class Application:
    uuid: str
    fields: dict[str, Any]
    settings: dict[str, Any]
    environment_uuid: str
    compose_raw: str = ""
    envs: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            **self.fields,
            "docker_compose_raw": self.compose_raw,
            "settings": dict(self.settings),
        }

    def env(self, key: str, preview: bool) -> dict[str, Any] | None:
        return next((e for e in self.envs if e["key"] == key and e["is_preview"] == preview), None)

    def set_env(self, key: str, value: str, preview: bool, **flags: Any) -> None:
        if existing := self.env(key, preview):
            existing.update(value=value, **flags)
        else:
            self.envs.append(
                {
                    "uuid": uuid(),
                    "key": key,
                    "value": value,
                    "is_preview": preview,
                    "is_literal": False,
                    "is_multiline": False,
                    "is_shown_once": False,
                    **flags,
                }
            )


class Coolify:
    """The instance: one team, one server (`localhost`), the API's state and the deployments."""

    def __init__(
        self,
        *,
        tokens: dict[str, set[str]],
        repositories: dict[str, Path],
        state_dir: Path,
        host_root: Path = Path("/"),
        images: dict[str, str] | None = None,
        prebuilt_image: str | None = None,
    ) -> None:
        self.tokens = tokens
        self.repositories = repositories
        self.state_dir = state_dir
        self.host_root = host_root
        self.images = images or {}
        self.prebuilt_image = prebuilt_image
        self.server = {
            "uuid": uuid(),
            "name": "localhost",
            "ip": "host.docker.internal",
            "is_reachable": True,
        }
        self.projects: dict[str, dict[str, Any]] = {}
        self.applications: dict[str, Application] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        # Every write the API accepted, in order: what tests read to see what a client changed.
        self.writes: list[dict[str, Any]] = []

    # ---- the HTTP side --------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth])
        get, post, patch = web.get, web.post, web.patch
        app.add_routes(
            [
                get("/api/health", self.health),
                get("/api/v1/health", self.health),
                get("/api/v1/version", self.version),
                get("/api/v1/servers", self.list_servers),
                get("/api/v1/projects", self.list_projects),
                post("/api/v1/projects", self.create_project),
                get("/api/v1/projects/{uuid}/environments", self.list_environments),
                post("/api/v1/projects/{uuid}/environments", self.create_environment),
                get("/api/v1/applications", self.list_applications),
                post("/api/v1/applications/public", self.create_application),
                post("/api/v1/applications/private-github-app", self.create_application),
                get("/api/v1/applications/{uuid}", self.get_application),
                patch("/api/v1/applications/{uuid}", self.update_application),
                get("/api/v1/applications/{uuid}/envs", self.list_envs),
                patch("/api/v1/applications/{uuid}/envs/bulk", self.bulk_envs),
                get("/api/v1/deploy", self.deploy),
                get("/api/v1/deployments/{uuid}", self.get_deployment),
                get("/standin/writes", self.list_writes),
            ]
        )
        return app

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in ("/api/health", "/api/v1/health", "/standin/writes"):
            return await handler(request)  # type: ignore[no-any-return]
        header = request.headers.get("Authorization", "")
        abilities = self.tokens.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None
        if abilities is None:
            return message("Unauthenticated.", 401)
        # Reads need read (or root), writes and /deploy need write (or deploy for /deploy) — routes/api.php.
        needed = {"read"} if request.method == "GET" else {"write"}
        if request.path == "/api/v1/deploy":
            needed = {"write", "deploy"}
        if not abilities & (needed | {"root"}):
            return message("Invalid ability provided.", 403)
        response: web.StreamResponse = await handler(request)
        if request.method != "GET" or request.path == "/api/v1/deploy":
            if response.status < 300:
                self.writes.append({"method": request.method, "path": request.path_qs})
        return response

    @staticmethod
    async def body(request: web.Request) -> dict[str, Any] | web.Response:
        """validateIncomingRequest: a JSON content type, valid JSON, not empty."""
        if request.content_type != "application/json":
            return web.json_response(
                {"message": "Invalid request.", "error": "Content-Type must be application/json."}, status=400
            )
        try:
            data = json.loads(await request.text())
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return web.json_response({"message": "Invalid request.", "error": "Invalid JSON."}, status=400)
        if not data:
            return web.json_response({"message": "Invalid request.", "error": "Empty JSON."}, status=400)
        return data

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def version(self, request: web.Request) -> web.Response:
        return web.Response(text=COOLIFY_VERSION)

    async def list_writes(self, request: web.Request) -> web.Response:
        return web.json_response(self.writes)

    async def list_servers(self, request: web.Request) -> web.Response:
        return web.json_response([self.server])

    async def list_projects(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{k: p[k] for k in ("uuid", "name", "description")} for p in self.projects.values()]
        )

    async def create_project(self, request: web.Request) -> web.Response:
        data = await self.body(request)
        if isinstance(data, web.Response):
            return data
        if extra := set(data) - {"name", "description"}:
            return failed({name: ["This field is not allowed."] for name in sorted(extra)})
        if not isinstance(data.get("name"), str) or not data["name"].strip():
            return failed({"name": ["The name field is required."]})
        project = {
            "uuid": uuid(),
            "name": data["name"],
            "description": data.get("description"),
            "environments": [{"uuid": uuid(), "name": "production"}],
        }
        self.projects[project["uuid"]] = project
        return web.json_response({"uuid": project["uuid"]}, status=201)

    def project(self, request: web.Request) -> dict[str, Any] | None:
        return self.projects.get(request.match_info["uuid"])

    async def list_environments(self, request: web.Request) -> web.Response:
        if not (project := self.project(request)):
            return message("Project not found.", 404)
        return web.json_response(project["environments"])

    async def create_environment(self, request: web.Request) -> web.Response:
        data = await self.body(request)
        if isinstance(data, web.Response):
            return data
        if not (project := self.project(request)):
            return message("Project not found.", 404)
        if not isinstance(data.get("name"), str) or not data["name"].strip():
            return failed({"name": ["The name field is required."]})
        if any(e["name"] == data["name"] for e in project["environments"]):
            return message("Environment with this name already exists.", 409)
        environment = {"uuid": uuid(), "name": data["name"]}
        project["environments"].append(environment)
        return web.json_response({"uuid": environment["uuid"]}, status=201)

    async def list_applications(self, request: web.Request) -> web.Response:
        return web.json_response([a.view() for a in self.applications.values()])

    def find_application(self, request: web.Request) -> Application | None:
        return self.applications.get(request.match_info["uuid"])

    async def get_application(self, request: web.Request) -> web.Response:
        if not (application := self.find_application(request)):
            return message("Application not found.", 404)
        return web.json_response(application.view())

    def check_fields(self, data: dict[str, Any], allowed: set[str]) -> dict[str, list[str]]:
        errors = {name: ["This field is not allowed."] for name in sorted(set(data) - allowed)}
        for name in (
            "name",
            "description",
            "git_repository",
            "git_branch",
            "base_directory",
            "docker_compose_location",
            "preview_url_template",
            "ports_exposes",
        ):
            if name in data and not isinstance(data[name], str):
                errors[name] = [f"The {name} field must be a string."]
        for name in SETTINGS_FIELDS | {"instant_deploy"}:
            if name in data and not isinstance(data[name], bool):
                errors[name] = [f"The {name} field must be true or false."]
        if "build_pack" in data and data["build_pack"] not in BUILD_PACKS:
            errors["build_pack"] = ["The selected build pack is invalid."]
        if "docker_compose_domains" in data:
            domains = data["docker_compose_domains"]
            if not isinstance(domains, list):
                errors["docker_compose_domains"] = ["The docker compose domains field must be an array."]
            else:
                bad = [
                    f"Invalid URL: {d.get('domain')}"
                    for d in domains
                    if urlsplit(str(d.get("domain", ""))).scheme not in ("http", "https")
                    or not urlsplit(str(d.get("domain", ""))).hostname
                ]
                if bad:
                    errors["docker_compose_domains"] = bad
        return errors

    def store(self, application: Application, data: dict[str, Any]) -> None:
        for name, value in data.items():
            if name in SETTINGS_FIELDS:
                application.settings[name] = value
            elif name == "docker_compose_domains":
                application.fields[name] = json.dumps({d["name"]: {"domain": d["domain"]} for d in value})
            elif name != "instant_deploy":
                application.fields[name] = value

    async def create_application(self, request: web.Request) -> web.Response:
        data = await self.body(request)
        if isinstance(data, web.Response):
            return data
        private = request.path.endswith("private-github-app")
        errors = self.check_fields(data, CREATE_FIELDS if private else CREATE_FIELDS - {"github_app_uuid"})
        for name in ("project_uuid", "server_uuid", "git_repository", "git_branch", "build_pack"):
            if not data.get(name):
                errors.setdefault(name, [f"The {name} field is required."])
        if data.get("build_pack") != "dockercompose" and not data.get("ports_exposes"):
            errors.setdefault("ports_exposes", ["The ports exposes field is required."])
        if errors:
            return failed(errors)
        if not data.get("environment_name") and not data.get("environment_uuid"):
            return message("You need to provide at least one of environment_name or environment_uuid.", 422)
        if not (project := self.projects.get(data["project_uuid"])):
            return message("Project not found.", 404)
        environment = next(
            (
                e
                for e in project["environments"]
                if data.get("environment_name") == e["name"] or data.get("environment_uuid") == e["uuid"]
            ),
            None,
        )
        if not environment:
            return message("Environment not found.", 404)
        if data["server_uuid"] != self.server["uuid"]:
            return message("Server not found.", 404)
        if data["build_pack"] == "dockercompose" and "domains" in data:
            return failed(
                {
                    "domains": [
                        "The domains field cannot be used for dockercompose applications. "
                        "Use docker_compose_domains instead to set domains for individual services."
                    ]
                }
            )
        if data["git_repository"] not in self.repositories:
            return failed({"git_repository": ["The repository could not be read."]})
        application = Application(
            uuid(),
            {
                "name": data.get("name", "application"),
                "base_directory": "/",
                "preview_url_template": "{{pr_id}}.{{domain}}",
                "docker_compose_location": "/docker-compose.yaml",
                "ports_exposes": "80",
            },
            {"is_auto_deploy_enabled": True, "is_preview_deployments_enabled": False},
            environment["uuid"],
        )
        self.store(
            application,
            {
                k: v
                for k, v in data.items()
                if k not in ("project_uuid", "server_uuid", "environment_name", "environment_uuid")
            },
        )
        if application.fields["build_pack"] == "dockercompose":
            application.compose_raw = self.compose_file(application).read_text()  # LoadComposeFile
        self.applications[application.uuid] = application
        return web.json_response({"uuid": application.uuid, "domains": None}, status=201)

    async def update_application(self, request: web.Request) -> web.Response:
        data = await self.body(request)
        if isinstance(data, web.Response):
            return data
        if not (application := self.find_application(request)):
            return message("Application not found", 404)
        if errors := self.check_fields(data, UPDATE_FIELDS):
            return failed(errors)
        if "docker_compose_domains" in data and not application.compose_raw:
            return failed(
                {
                    "docker_compose_domains": [
                        "Cannot set docker_compose_domains without docker_compose_raw. "
                        "Reload the compose file from the git repository first."
                    ]
                }
            )
        if "docker_compose_domains" in data:
            services = yaml.safe_load(application.compose_raw).get("services", {})
            data["docker_compose_domains"] = [
                d for d in data["docker_compose_domains"] if d.get("name") in services
            ]
        self.store(application, data)
        return web.json_response({"uuid": application.uuid})

    async def list_envs(self, request: web.Request) -> web.Response:
        if not (application := self.find_application(request)):
            return message("Application not found.", 404)
        return web.json_response(application.envs)

    async def bulk_envs(self, request: web.Request) -> web.Response:
        data = await self.body(request)
        if isinstance(data, web.Response):
            return data
        if not (application := self.find_application(request)):
            return message("Application not found", 404)
        if not data.get("data"):
            return message("Bulk data is required.", 400)
        for item in data["data"]:
            item = {k: v for k, v in item.items() if k in ENV_FIELDS}
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", str(item.get("key", ""))):
                return failed({"key": ["The key field format is invalid."]})
            if "value" in item and not isinstance(item["value"], str | None):
                return failed({"value": ["The value field must be a string."]})
            flags = {k: item[k] for k in ("is_literal", "is_multiline", "is_shown_once") if k in item}
            application.set_env(item["key"], item.get("value") or "", bool(item.get("is_preview")), **flags)
        return web.json_response(application.envs, status=201)

    async def deploy(self, request: web.Request) -> web.Response:
        uuids = [u for u in request.query.get("uuid", "").split(",") if u]
        if not uuids:
            return message("You must provide uuid or tag.", 400)
        pr = int(request.query.get("pull_request_id", request.query.get("pr", "0")) or 0)
        answers = []
        for app_uuid in uuids:
            if not (application := self.applications.get(app_uuid)):
                return message("Resource not found.", 404)
            deployment = {
                "deployment_uuid": uuid(),
                "application_uuid": app_uuid,
                "pull_request_id": pr,
                "status": "in_progress",
                "logs": "",
            }
            self.deployments[deployment["deployment_uuid"]] = deployment
            asyncio.get_running_loop().run_in_executor(None, self.run_deployment, application, deployment)
            answers.append(
                {
                    "message": "Application deployment queued.",
                    "resource_uuid": app_uuid,
                    "deployment_uuid": deployment["deployment_uuid"],
                }
            )
        return web.json_response({"deployments": answers})

    async def get_deployment(self, request: web.Request) -> web.Response:
        if not (deployment := self.deployments.get(request.match_info["uuid"])):
            return message("Deployment not found.", 404)
        return web.json_response(deployment)

    # ---- the Docker Compose build pack ----------------------------------------------------------------

    def compose_file(self, application: Application) -> Path:
        checkout = self.repositories[application.fields["git_repository"]]
        base = application.fields.get("base_directory", "/").strip("/")
        return checkout / base / application.fields["docker_compose_location"].lstrip("/")

    def magic_variables(self, application: Application, pr: int) -> dict[str, str]:
        """Generate each SERVICE_* the file names once (kept as production variables), then resolve the URLs
        for this deployment: the service's domain, or its preview domain from the URL template."""
        domains = json.loads(application.fields.get("docker_compose_domains") or "{}")
        resolved = {}
        for kind, service, port in sorted(set(MAGIC.findall(application.compose_raw))):
            key = f"SERVICE_{kind}_{service}" + (f"_{port}" if port else "")
            if kind in ("USER", "PASSWORD", "PASSWORD_64"):
                if not application.env(key, False):
                    application.set_env(key, generated(kind), False)
                resolved[key] = application.env(key, False)["value"]  # type: ignore[index]
                continue
            domain = urlsplit(
                domains.get(service.lower(), {}).get("domain", "")
                or f"http://{service.lower()}-{application.uuid}.127.0.0.1.sslip.io"
            )
            host = domain.hostname or ""
            if pr:
                host = (
                    application.fields["preview_url_template"]
                    .replace("{{pr_id}}", str(pr))
                    .replace("{{domain}}", host)
                )
            resolved[key] = host if kind == "FQDN" else f"{domain.scheme}://{host}"
        return resolved

    def deployment_compose(self, application: Application, pr: int) -> tuple[dict[str, Any], str | None]:
        """The file as the parser hands it to `docker compose`, and the service the proxy routes to."""

        def suffix(name: str) -> str:
            return f"{name}-pr-{pr}" if pr else name

        compose = yaml.safe_load(application.compose_raw)
        network = f"{application.uuid}-{pr}" if pr else application.uuid
        domains = json.loads(application.fields.get("docker_compose_domains") or "{}")
        routed = None
        services = {}
        for name, service in compose["services"].items():
            service.pop("container_name", None)
            service["container_name"] = f"{name}-{application.uuid}" + (f"-pr-{pr}" if pr else "")
            if "build" in service and self.prebuilt_image:
                del service["build"]
                service["image"] = self.prebuilt_image
            service["image"] = self.images.get(service.get("image", ""), service.get("image"))
            depends = service.get("depends_on") or {}
            service["depends_on"] = (
                {suffix(k): v for k, v in depends.items()}
                if isinstance(depends, dict)
                else [suffix(d) for d in depends]
            )
            volumes = []
            for volume in service.get("volumes", []):
                source, _, rest = volume.partition(":")
                if source.startswith("/"):
                    host_path = self.host_root / suffix(source).lstrip("/")
                    host_path.mkdir(parents=True, exist_ok=True)  # LocalFileVolume, is_directory
                    volumes.append(f"{host_path}:{rest}")
                else:
                    volumes.append(f"{suffix(application.uuid + '_' + source)}:{rest}")
            if volumes:
                service["volumes"] = volumes
            service["networks"] = [network]
            service.setdefault("labels", {}).update(
                {
                    "coolify.managed": "true",
                    "coolify.applicationId": application.uuid,
                    "coolify.pullRequestId": str(pr),
                }
            )
            if name in domains:
                routed = suffix(name)
                port = urlsplit(domains[name]["domain"]).port or 80
                service["ports"] = [f"127.0.0.1::{port}"]  # the stand-in for Traefik's route
            services[suffix(name)] = service
        compose["services"] = services
        compose["networks"] = {network: {"name": network, "external": True}}
        compose["volumes"] = {
            suffix(f"{application.uuid}_{v}"): {"name": suffix(f"{application.uuid}_{v}")}
            for v in (compose.get("volumes") or {})
        }
        for key in [k for k in compose if k.startswith("x-")]:
            del compose[key]
        return compose, routed

    def run_deployment(self, application: Application, deployment: dict[str, Any]) -> None:
        pr = deployment["pull_request_id"]
        workdir = self.state_dir / "applications" / (application.uuid + (f"-pr-{pr}" if pr else ""))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            compose, routed = self.deployment_compose(application, pr)
            variables = {e["key"]: e["value"] for e in application.envs if not e["is_preview"]}
            if pr:
                variables |= {e["key"]: e["value"] for e in application.envs if e["is_preview"]}
            variables |= self.magic_variables(application, pr)
            variables |= {
                f"SERVICE_NAME_{s.upper().replace('-', '_')}": f"{s}-pr-{pr}" if pr else s
                for s in yaml.safe_load(application.compose_raw)["services"]
            }
            (workdir / "docker-compose.yaml").write_text(yaml.safe_dump(compose, sort_keys=False))
            env_file = workdir / ".env"
            env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(variables.items())))
            env_file.chmod(0o600)
            [name] = compose["networks"]
            subprocess.run(
                ["docker", "network", "create", "--attachable", name], capture_output=True, check=False
            )
            checkout = self.repositories[application.fields["git_repository"]]
            cmd = [
                "docker",
                "compose",
                "--project-name",
                application.uuid,
                "--project-directory",
                str(checkout),
                "--env-file",
                str(env_file),
                "-f",
                str(workdir / "docker-compose.yaml"),
            ]
            up = subprocess.run([*cmd, "up", "-d"], capture_output=True, text=True, timeout=600, check=False)
            deployment["logs"] = up.stdout + up.stderr
            deployment["routed_service"] = routed
            deployment["status"] = "finished" if up.returncode == 0 else "failed"
        except Exception as error:  # a deployment that fails is reported, as Coolify does, not raised
            deployment.update(status="failed", logs=f"{deployment['logs']}{error!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", action="append", default=[], help="TOKEN or TOKEN=read,write")
    parser.add_argument("--repository", action="append", default=[], help="GIT_URL=LOCAL_DIR")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host-root", type=Path, default=Path("/"))
    parser.add_argument("--image", action="append", default=[], help="REGISTRY_IMAGE=LOCAL_IMAGE")
    parser.add_argument("--prebuilt-image")
    args = parser.parse_args()
    tokens = {}
    for spec in args.token:
        token, _, abilities = spec.partition("=")
        tokens[token] = set((abilities or "root").split(","))
    coolify = Coolify(
        tokens=tokens,
        repositories={url: Path(path) for url, _, path in (r.rpartition("=") for r in args.repository)},
        state_dir=args.state_dir,
        host_root=args.host_root,
        images=dict(i.split("=", 1) for i in args.image),
        prebuilt_image=args.prebuilt_image,
    )
    print(f"coolify stand-in ({COOLIFY_VERSION}) on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    web.run_app(coolify.app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    os.umask(0o022)
    main()
