"""Loki and Grafana Alloy configurations, validated structurally: neither can be installed here.

The checks tie each file to the others and to the app: Alloy must parse the JSON lines that
flagmeter.logs really writes, push to the Loki service on the port Loki listens on, and keep
tenant and request_id out of the labels.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

from alloy_syntax import Block, parse, references
from observability_files import COMPOSE_FILE, DASHBOARDS, OBS, dashboard, load_yaml, panels

from flagmeter import logs

LOKI_TOP_LEVEL = {
    "target", "auth_enabled", "server", "common", "schema_config", "storage_config", "limits_config",
    "compactor", "ingester", "ingester_client", "querier", "query_range", "query_scheduler", "frontend",
    "frontend_worker", "ruler", "distributor", "memberlist", "table_manager", "runtime_config",
    "tracing", "analytics", "chunk_store_config", "pattern_ingester", "bloom_build", "bloom_gateway",
    "index_gateway", "operational_config", "tenant_limits", "kafka_config", "ui",
}  # fmt: skip
# Components config.alloy may use, and the exports other components may reference.
ALLOY_EXPORTS = {
    "discovery.docker": {"targets"},
    "discovery.relabel": {"output", "rules"},
    "loki.source.docker": set(),
    "loki.process": {"receiver"},
    "loki.write": {"receiver"},
}
DURATION = re.compile(r"(\d+)([hms])")


def _hours(duration: str) -> float:
    parts = DURATION.findall(duration)
    assert "".join(n + u for n, u in parts) == duration, f"unsupported duration {duration}"
    return sum(int(n) * {"h": 1, "m": 1 / 60, "s": 1 / 3600}[u] for n, u in parts)


def _loki() -> dict[str, Any]:
    loki: dict[str, Any] = load_yaml(OBS / "loki.yml")
    return loki


def _alloy() -> dict[str, Block]:
    return {f"{b.name}.{b.label}": b for b in parse((OBS / "config.alloy").read_text())}


def _stages(name: str) -> list[Block]:
    (process,) = [b for b in _alloy().values() if b.name == "loki.process"]
    return process.children(name)


def _app_log_line(**context: str) -> dict[str, Any]:
    """One log line exactly as the app writes it in a container (JSON formatter)."""
    tokens = [getattr(logs, key).set(value) for key, value in context.items()]
    try:
        record = logging.LogRecord("flagmeter.api", logging.WARNING, __file__, 1, "slow request", None, None)
        line: dict[str, Any] = json.loads(logs.JsonFormatter().format(record))
        return line
    finally:
        for key, token in zip(context, tokens, strict=True):
            getattr(logs, key).reset(token)


def test_loki_config_uses_only_known_blocks() -> None:
    assert set(_loki()) <= LOKI_TOP_LEVEL


def test_loki_retention_is_enforced_by_the_compactor() -> None:
    loki = _loki()
    compactor = loki["compactor"]
    assert compactor["retention_enabled"] is True
    assert compactor["delete_request_store"] == "filesystem", "retention needs a delete request store"
    retention = _hours(loki["limits_config"]["retention_period"])
    assert retention >= 24 * 7
    for period in loki["schema_config"]["configs"]:
        assert retention % _hours(period["index"]["period"]) == 0, (
            "retention must be a multiple of the index period"
        )


def test_loki_schema_supports_structured_metadata() -> None:
    loki = _loki()
    latest = loki["schema_config"]["configs"][-1]
    assert (latest["store"], latest["schema"]) == ("tsdb", "v13")
    assert loki["limits_config"]["allow_structured_metadata"] is True


def test_loki_keeps_its_data_on_the_compose_volume() -> None:
    loki = _loki()
    service = load_yaml(COMPOSE_FILE)["services"]["loki"]
    volume_mount = next(v.split(":")[1] for v in service["volumes"] if v.startswith("loki-data:"))
    paths = [
        loki["common"]["path_prefix"],
        *loki["common"]["storage"]["filesystem"].values(),
        loki["compactor"]["working_directory"],
    ]
    assert all(p == volume_mount or p.startswith(volume_mount + "/") for p in paths), paths
    port = str(loki["server"]["http_listen_port"])
    assert any(p.endswith(":" + port) for p in service["ports"])


def test_alloy_config_parses_and_every_reference_resolves() -> None:
    components = _alloy()
    assert components
    for key, block in components.items():
        assert block.name in ALLOY_EXPORTS and block.label, f"unexpected component {key}"
        for value in list(block.attributes.values()):
            for ref in references(value):
                component, export = ref.path.rsplit(".", 1)
                assert component in components, f"{key} refers to undefined {component}"
                assert export in ALLOY_EXPORTS[components[component].name], f"{key}: no export {ref.path}"


def test_alloy_reads_the_docker_socket_compose_mounts() -> None:
    sockets = {b.attributes["host"] for b in _alloy().values() if "host" in b.attributes}
    service = load_yaml(COMPOSE_FILE)["services"]["alloy"]
    mounted = {v.split(":")[1] for v in service["volumes"] if v.split(":")[0] == "/var/run/docker.sock"}
    assert sockets and {s.removeprefix("unix://") for s in sockets} <= mounted
    assert any(v.endswith(":ro") for v in service["volumes"] if v.startswith("/var/run/docker.sock"))


def test_alloy_pushes_to_the_loki_service() -> None:
    (write,) = [b for b in _alloy().values() if b.name == "loki.write"]
    (endpoint,) = write.children("endpoint")
    port = _loki()["server"]["http_listen_port"]
    assert endpoint.attributes["url"] == f"http://loki:{port}/loki/api/v1/push"
    assert "loki" in load_yaml(COMPOSE_FILE)["services"]


def test_level_is_the_only_label_taken_from_the_log_line() -> None:
    labels = {key for stage in _stages("stage.labels") for key in stage.attributes["values"]}
    assert labels == {"level"}


def test_tenant_and_request_id_are_structured_metadata_not_labels() -> None:
    (metadata,) = _stages("stage.structured_metadata")
    assert set(metadata.attributes["values"]) == {"tenant", "request_id"}
    relabelled = {
        rule.attributes.get("target_label") for b in _alloy().values() for rule in b.children("rule")
    }
    assert not relabelled & {"tenant", "request_id"}


def test_alloy_extracts_the_fields_the_app_writes() -> None:
    line = _app_log_line(tenant="acme", request_id="req-123")
    (json_stage,) = _stages("stage.json")
    extracted = {name: line.get(source) for name, source in json_stage.attributes["expressions"].items()}
    assert extracted["tenant"] == "acme" and extracted["request_id"] == "req-123"
    assert extracted["level"] == "warning"
    (timestamp,) = _stages("stage.timestamp")
    assert timestamp.attributes["format"] == "RFC3339"
    when = str(extracted[timestamp.attributes["source"]])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", when), when
    assert datetime.fromisoformat(when).utcoffset() is not None


def test_the_dashboard_log_panel_filters_on_labels_alloy_sets() -> None:
    loki_queries = [
        t["expr"]
        for path in DASHBOARDS
        for p in panels(dashboard(path))
        if p.get("datasource", {}).get("type") == "loki"
        for t in p["targets"]
    ]
    assert loki_queries
    relabelled = {
        rule.attributes.get("target_label") for b in _alloy().values() for rule in b.children("rule")
    }
    for query in loki_queries:
        selector = re.match(r"\{([^}]*)\}", query)
        assert selector, query
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector.group(1)):
            assert label in relabelled | {"level"}, f"{label} is not a label Alloy sets"
