"""The OpenAPI 3.0 document of the management API, served at `/api/v1/openapi.json`.

Hand-written next to the handlers (`mirror.web.api`) and checked against the running server by
schemathesis (tests/test_api_schema.py). Tier names are the configured ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mirror import __version__

JSON = "application/json"
SNAPSHOT_PATTERN = "^[0-9]{8}T[0-9]{6}Z$"
REPO_PATTERN = "^[a-z0-9][a-z0-9._-]*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json_response(description, _ref("Error"))


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "malformed request", 401: "no valid token (missing, malformed, unknown or expired)",
            403: "the token's scope or tiers do not cover this call",
            404: "unknown repo, tier or snapshot",
            409: "conflict (tier moved, nothing to roll back, sync running, snapshot in use)",
            413: "body too large", 414: "request target over 8190 bytes",
            431: "a header field over 8190 bytes, or more than 128 of them",
            415: "the body must be JSON (Content-Type: application/json)",
            422: "refused by the tier policy (force to override)", 429: "too many failed authentications",
            501: "not implemented yet"}
    return {str(s): _error(text[s]) for s in statuses}


_READ_ERRORS = (401, 429)
_WRITE_ERRORS = (400, 401, 403, 413, 415, 429)
_HEAD_ERRORS = (414, 431)


def _repo_schema(repos: Sequence[str]) -> dict[str, Any]:
    if repos:
        return {"type": "string", "enum": list(repos)}
    return {"type": "string", "pattern": REPO_PATTERN, "maxLength": 100}


def _at_param(what: str) -> dict[str, Any]:
    return {"name": "at", "in": "query", "required": False, "description": what,
            "schema": {"type": "string", "format": "date-time"}}


def _limit_param() -> dict[str, Any]:
    return {"name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}


def openapi_document(tiers: Sequence[str], repos: Sequence[str] = (), *,
                     read_auth: bool = False) -> dict[str, Any]:
    """The document for a server with these tiers and repos; reads need a token when `read_auth`."""
    repo_param = {"name": "repo", "in": "path", "required": True, "schema": _repo_schema(repos)}
    ref_schema = {"type": "string", "minLength": 1, "maxLength": 200}
    tier_schema = {"type": "string", "enum": list(tiers)}
    tier_state = {
        "type": "object", "required": ["snapshot", "since"], "additionalProperties": False,
        "properties": {"snapshot": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN}),
                       "since": _nullable({"type": "string", "format": "date-time"})},
    }
    tier_map = {"type": "object", "additionalProperties": _ref("TierState")}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": {
                "type": "object", "required": ["code", "message"], "additionalProperties": False,
                "properties": {"code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                               "message": {"type": "string"}}}},
        },
        "TierState": tier_state,
        "TierMap": tier_map,
        "Tiers": {"type": "object", "additionalProperties": _ref("TierMap")},
        "Repo": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "type", "url", "tiers", "snapshots", "latest_snapshot"],
            "properties": {"name": {"type": "string"}, "type": {"type": "string", "enum": ["deb", "rpm"]},
                           "url": {"type": "string"}, "tiers": _ref("TierMap"),
                           "snapshots": {"type": "integer", "minimum": 0},
                           "latest_snapshot": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN})},
        },
        "Snapshot": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "created", "packages", "bytes", "tiers", "signed_by"],
            "properties": {"id": {"type": "string", "pattern": SNAPSHOT_PATTERN},
                           "created": {"type": "string", "format": "date-time"},
                           "packages": {"type": "integer", "minimum": 0},
                           "bytes": {"type": "integer", "minimum": 0},
                           "tiers": {"type": "array", "items": {"type": "string"}},
                           "signed_by": {"type": "string", "enum": ["upstream", "mirror"]}},
        },
        "Move": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "repo", "tier", "at", "from", "to", "actor", "reason", "forced", "action"],
            "properties": {"id": {"type": "integer"}, "repo": {"type": "string"}, "tier": {"type": "string"},
                           "at": {"type": "string", "format": "date-time"},
                           "from": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN}),
                           "to": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN}),
                           "actor": {"type": "string"}, "reason": _nullable({"type": "string"}),
                           "forced": {"type": "boolean"},
                           "action": {"type": "string", "enum": ["sync", "promote", "rollback"]}},
        },
        "MoveResult": {
            "type": "object", "additionalProperties": False,
            "required": ["repo", "tier", "snapshot", "changed", "move"],
            "properties": {"repo": {"type": "string"}, "tier": {"type": "string"},
                           "snapshot": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN}),
                           "changed": {"type": "boolean"},
                           "move": {**_ref("Move"), "nullable": True}},
        },
        "History": {
            "type": "object", "additionalProperties": False,
            "required": ["repo", "tier", "at", "tiers", "moves", "deletions"],
            "properties": {"repo": {"type": "string"}, "tier": _nullable({"type": "string"}),
                           "at": _nullable({"type": "string", "format": "date-time"}),
                           "tiers": _ref("TierMap"),
                           "moves": {"type": "array", "items": _ref("Move")},
                           "deletions": {"type": "array", "items": _ref("SnapshotDeletion")}},
        },
        "SnapshotDeletion": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "repo", "snapshot", "at", "actor", "reason", "created", "packages", "bytes"],
            "properties": {"id": {"type": "integer"}, "repo": {"type": "string"},
                           "snapshot": {"type": "string", "pattern": SNAPSHOT_PATTERN},
                           "at": {"type": "string", "format": "date-time"}, "actor": {"type": "string"},
                           "reason": _nullable({"type": "string"}),
                           "created": {"type": "string", "format": "date-time"},
                           "packages": {"type": "integer", "minimum": 0},
                           "bytes": {"type": "integer", "minimum": 0}},
        },
        "DeleteSnapshotRequest": {
            "type": "object", "additionalProperties": False,
            "properties": {"reason": {"type": "string", "maxLength": 2000}},
        },
        "PromoteRequest": {
            "type": "object", "additionalProperties": False, "required": ["to"],
            "properties": {
                "to": tier_schema,
                "from": {**tier_schema, "description": "promote what this tier serves"},
                "snapshot": {"type": "string", "pattern": SNAPSHOT_PATTERN,
                             "description": "promote this snapshot (instead of from)"},
                "reason": {"type": "string", "maxLength": 2000},
                "force": {"type": "boolean", "description": "override the tier policy (recorded)"},
                "expected": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN,
                                       "description": "compare-and-swap: what `to` must serve now"}),
            },
        },
        "RollbackRequest": {
            "type": "object", "additionalProperties": False, "required": ["tier"],
            "properties": {"tier": tier_schema, "reason": {"type": "string", "maxLength": 2000},
                           "force": {"type": "boolean"},
                           "expected": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN})},
        },
        "SyncRequest": {
            "type": "object", "additionalProperties": False,
            "properties": {"allow_rollback": {"type": "boolean"}},
        },
        "SyncStarted": {
            "type": "object", "additionalProperties": False, "required": ["repo", "status"],
            "properties": {"repo": {"type": "string"}, "status": {"type": "string", "enum": ["started"]}},
        },
        "SyncRun": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "repo", "started", "finished", "outcome", "snapshot", "error_code", "message",
                         "files", "bytes", "actor"],
            "properties": {"id": {"type": "integer"}, "repo": {"type": "string"},
                           "started": {"type": "string", "format": "date-time"},
                           "finished": _nullable({"type": "string", "format": "date-time"}),
                           "outcome": {"type": "string",
                                       "enum": ["running", "snapshot", "unchanged", "failed"]},
                           "snapshot": _nullable({"type": "string"}),
                           "error_code": _nullable({"type": "string"}),
                           "message": _nullable({"type": "string"}),
                           "files": {"type": "integer"}, "bytes": {"type": "integer"},
                           "actor": _nullable({"type": "string"})},
        },
        "GcRequest": {
            "type": "object", "additionalProperties": False,
            "properties": {"repo": {**_repo_schema(repos), "description": "only this repo's snapshots"},
                           "dry_run": {"type": "boolean", "description": "count, remove nothing"}},
        },
        "GcReport": {
            "type": "object", "additionalProperties": False,
            "required": ["dry_run", "repos", "snapshots_removed", "releases_removed", "pool"],
            "properties": {
                "dry_run": {"type": "boolean"},
                "repos": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["repo", "removed", "kept"],
                    "properties": {"repo": {"type": "string"},
                                   "removed": {"type": "array",
                                               "items": {"type": "string", "pattern": SNAPSHOT_PATTERN}},
                                   "kept": {"type": "integer", "minimum": 0}}}},
                "snapshots_removed": {"type": "integer", "minimum": 0},
                "releases_removed": {"type": "integer", "minimum": 0},
                "pool": {
                    "type": "object", "additionalProperties": False,
                    "required": ["swept", "skipped", "files", "bytes", "unrecorded_files",
                                 "unrecorded_bytes"],
                    "properties": {"swept": {"type": "boolean"}, "skipped": _nullable({"type": "string"}),
                                   "files": {"type": "integer", "minimum": 0},
                                   "bytes": {"type": "integer", "minimum": 0},
                                   "unrecorded_files": {"type": "integer", "minimum": 0},
                                   "unrecorded_bytes": {"type": "integer", "minimum": 0}}},
            },
        },
        "SideRef": {
            "type": "object", "additionalProperties": False, "required": ["ref", "snapshot"],
            "properties": {"ref": {"type": "string"},
                           "snapshot": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN})},
        },
        "PackageVersion": {
            "type": "object", "additionalProperties": False, "required": ["name", "arch", "version"],
            "properties": {"name": {"type": "string"}, "arch": {"type": "string"},
                           "version": {"type": "string"}},
        },
        "VersionChange": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "arch", "from", "to", "from_kept", "to_was_present"],
            "properties": {"name": {"type": "string"}, "arch": {"type": "string"}, "from": {"type": "string"},
                           "to": {"type": "string"},
                           "from_kept": {"type": "boolean", "description": "the old version stays too"},
                           "to_was_present": {"type": "boolean",
                                              "description": "the new newest was there before"}},
        },
        "AdvisoryRef": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "type", "severity", "cves", "packages", "title", "issued"],
            "properties": {"id": {"type": "string"}, "type": {"type": "string"},
                           "severity": {"type": "string"},
                           "cves": {"type": "array", "items": {"type": "string"}},
                           "packages": {"type": "array", "items": {"type": "string"}},
                           "title": {"type": "string"},
                           "issued": _nullable({"type": "string", "format": "date-time"})},
        },
        "Diff": {
            "type": "object", "additionalProperties": False,
            "required": ["repo", "from", "to", "added", "removed", "upgraded", "downgraded", "advisories",
                         "summary", "page"],
            "properties": {
                "repo": {"type": "string"}, "from": _ref("SideRef"), "to": _ref("SideRef"),
                "added": {"type": "array", "items": _ref("PackageVersion")},
                "removed": {"type": "array", "items": _ref("PackageVersion")},
                "upgraded": {"type": "array", "items": _ref("VersionChange")},
                "downgraded": {"type": "array", "items": _ref("VersionChange")},
                "advisories": {"type": "array", "items": _ref("AdvisoryRef")},
                "summary": {"type": "object", "additionalProperties": False,
                            "description": "counts of the whole diff, not of this page",
                            "required": ["added", "removed", "upgraded", "downgraded", "advisories"],
                            "properties": {k: {"type": "integer", "minimum": 0} for k in
                                           ("added", "removed", "upgraded", "downgraded", "advisories")}},
                "page": {
                    "type": "object", "additionalProperties": False,
                    "description": "entries offset.. of the sequence added, removed, upgraded, downgraded, "
                                   "advisories; the lists above hold only this page's",
                    "required": ["offset", "limit", "total", "next_cursor", "next"],
                    "properties": {"offset": {"type": "integer", "minimum": 0},
                                   "limit": {"type": "integer", "minimum": 1},
                                   "total": {"type": "integer", "minimum": 0},
                                   "next_cursor": _nullable({"type": "string"}),
                                   "next": _nullable({"type": "string",
                                                      "description": "the next page's path and query"})}},
            },
        },
        "PendingAdvisories": {
            "type": "object", "additionalProperties": False,
            "required": ["repo", "in", "not_in", "type", "advisories"],
            "properties": {"repo": {"type": "string"}, "in": _ref("SideRef"),
                           "not_in": {**_ref("SideRef"), "nullable": True},
                           "type": _nullable({"type": "string"}),
                           "advisories": {"type": "array", "items": _ref("AdvisoryRef")}},
        },
        "CveReport": {
            "type": "object", "additionalProperties": False, "required": ["cve", "tiers"],
            "properties": {"cve": {"type": "string"}, "tiers": {"type": "array", "items": {
                "type": "object", "additionalProperties": False,
                "required": ["repo", "tier", "snapshot", "status", "first_fixed", "advisories", "packages"],
                "properties": {
                    "repo": {"type": "string"}, "tier": {"type": "string"},
                    "snapshot": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN}),
                    "status": {"type": "string", "enum": ["fixed", "vulnerable", "not_affected", "unknown"]},
                    "first_fixed": _nullable({"type": "string", "pattern": SNAPSHOT_PATTERN}),
                    "advisories": {"type": "array", "items": {"type": "string"}},
                    "packages": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["name", "arch", "carried", "fixed_in", "fixed"],
                        "properties": {"name": {"type": "string"}, "arch": {"type": "string"},
                                       "carried": {"type": "string"}, "fixed_in": {"type": "string"},
                                       "fixed": {"type": "boolean"}}}}}}}},
        },
        "Health": {
            "type": "object", "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok", "failing"]},
                           "version": {"type": "string"}, "schema_version": {"type": "integer"},
                           "problems": {"type": "array", "items": {"type": "string"}}},
        },
    }
    write_security: list[dict[str, list[str]]] = [{"bearer": []}]
    read_security: list[dict[str, list[str]]] = [{"bearer": []}] if read_auth else []
    paths: dict[str, Any] = {
        "/api/v1/repos": {"get": {
            "security": read_security,
            "operationId": "listRepos", "summary": "repos with their tiers' current snapshots",
            "responses": {"200": _json_response("repos", {"type": "array", "items": _ref("Repo")}),
                          **_errors(*_READ_ERRORS)}}},
        "/api/v1/repos/{repo}/snapshots": {"get": {
            "security": read_security,
            "operationId": "listSnapshots", "summary": "the repo's snapshots, newest first",
            "parameters": [repo_param],
            "responses": {"200": _json_response("snapshots", {"type": "array", "items": _ref("Snapshot")}),
                          **_errors(*_READ_ERRORS, 400, 404)}}},
        "/api/v1/tiers": {"get": {
            "security": read_security,
            "operationId": "listTiers", "summary": "which snapshot each tier serves (or served at `at`)",
            "parameters": [_at_param("what each tier served at this time (ISO 8601)")],
            "responses": {"200": _json_response("tiers per repo", _ref("Tiers")),
                          **_errors(*_READ_ERRORS, 400)}}},
        "/api/v1/repos/{repo}/promote": {"post": {
            "operationId": "promote", "summary": "point a tier at a tier's snapshot or a snapshot",
            "security": write_security, "parameters": [repo_param],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("PromoteRequest")}}},
            "responses": {"200": _json_response("the move (changed false: it served that already)",
                                                _ref("MoveResult")),
                          **_errors(*_WRITE_ERRORS, 404, 409, 422)}}},
        "/api/v1/repos/{repo}/rollback": {"post": {
            "operationId": "rollback", "summary": "point a tier back at what it served before its last move",
            "security": write_security, "parameters": [repo_param],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("RollbackRequest")}}},
            "responses": {"200": _json_response("the move", _ref("MoveResult")),
                          **_errors(*_WRITE_ERRORS, 404, 409, 422)}}},
        "/api/v1/repos/{repo}/snapshots/{snapshot}/delete": {"post": {
            "operationId": "deleteSnapshot",
            "summary": "delete a snapshot no tier serves, may roll back to or served within the grace "
                       "window, and that is not the repo's newest (409 with the reasons otherwise); "
                       "gc reclaims its files",
            "security": write_security,
            "parameters": [repo_param, {"name": "snapshot", "in": "path", "required": True,
                                        "schema": {"type": "string", "pattern": SNAPSHOT_PATTERN}}],
            "requestBody": {"required": False, "content": {JSON: {"schema": _ref("DeleteSnapshotRequest")}}},
            "responses": {"200": _json_response("the deletion, as recorded", _ref("SnapshotDeletion")),
                          **_errors(*_WRITE_ERRORS, 404, 409)}}},
        "/api/v1/repos/{repo}/history": {"get": {
            "security": read_security,
            "operationId": "history", "summary": "tier moves, newest first",
            "parameters": [repo_param,
                           {"name": "tier", "in": "query", "required": False, "schema": {"type": "string"}},
                           _at_param("only moves made at or before this time; `tiers` is what each "
                                     "tier served then"),
                           _limit_param()],
            "responses": {"200": _json_response("history", _ref("History")),
                          **_errors(*_READ_ERRORS, 400, 404)}}},
        "/api/v1/repos/{repo}/diff": {"get": {
            "security": read_security,
            "operationId": "diff", "summary": "what moving from FROM to TO changes: packages, advisories",
            "parameters": [repo_param,
                           {"name": "from", "in": "query", "required": True, "schema": ref_schema,
                            "description": "a tier, a snapshot id or TIER@TIME"},
                           {"name": "to", "in": "query", "required": True, "schema": ref_schema},
                           {"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["json", "csv"]}},
                           {**_limit_param(),
                            "description": "entries per page (no limit and no cursor: the whole diff; "
                                           "a cursor alone: 1000)"},
                           {"name": "cursor", "in": "query", "required": False,
                            "description": "the previous page's page.next_cursor",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200,
                                       "pattern": "^[A-Za-z0-9_-]+$"}}],
            "responses": {"200": {"description": "a page of the diff (as `mirror diff --json`, or CSV); "
                                                 "a Link rel=next header names the next page", "content": {
                JSON: {"schema": _ref("Diff")}, "text/csv": {"schema": {"type": "string"}}}},
                          **_errors(*_READ_ERRORS, 400, 404)}}},
        "/api/v1/repos/{repo}/advisories": {"get": {
            "security": read_security,
            "operationId": "advisories", "summary": "advisories IN lists and NOT_IN does not (waiting for "
                                                    "promotion)",
            "parameters": [repo_param,
                           {"name": "in", "in": "query", "required": True, "schema": ref_schema},
                           {"name": "not_in", "in": "query", "required": False, "schema": ref_schema},
                           {"name": "type", "in": "query", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
            "responses": {"200": _json_response("advisories", _ref("PendingAdvisories")),
                          **_errors(*_READ_ERRORS, 400, 404)}}},
        "/api/v1/cves/{cve}": {"get": {
            "security": read_security,
            "operationId": "cve", "summary": "per repo and tier: whether it carries the fix of a CVE",
            "parameters": [{"name": "cve", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^CVE-[0-9]{4}-[0-9]{4,19}$"}}],
            "responses": {"200": _json_response("fix status per repo and tier", _ref("CveReport")),
                          **_errors(*_READ_ERRORS, 400, 404)}}},
        "/api/v1/repos/{repo}/sync": {"post": {
            "operationId": "startSync", "summary": "start a sync of the repo in the server",
            "security": write_security, "parameters": [repo_param],
            "requestBody": {"required": False, "content": {JSON: {"schema": _ref("SyncRequest")}}},
            "responses": {"202": _json_response("started; see /api/v1/syncs", _ref("SyncStarted")),
                          **_errors(*_WRITE_ERRORS, 404, 409)}}},
        "/api/v1/syncs": {"get": {
            "security": read_security,
            "operationId": "listSyncs", "summary": "sync runs and their outcome, newest first",
            "parameters": [{"name": "repo", "in": "query", "required": False, "schema": _repo_schema(repos)},
                           _limit_param()],
            "responses": {"200": _json_response("sync runs", {"type": "array", "items": _ref("SyncRun")}),
                          **_errors(*_READ_ERRORS, 400, 404)}}},
        "/api/v1/gc": {"post": {
            "operationId": "gc", "summary": "remove snapshots nothing needs, then unreferenced pool files",
            "security": write_security,
            "requestBody": {"required": False, "content": {JSON: {"schema": _ref("GcRequest")}}},
            "responses": {"200": _json_response("what was (dry_run: would be) removed", _ref("GcReport")),
                          **_errors(*_WRITE_ERRORS, 404, 409)}}},
        "/api/v1/openapi.json": {"get": {
            "security": read_security,
            "operationId": "openapi", "summary": "this document",
            "responses": {"200": _json_response("OpenAPI 3.0 document", {"type": "object"}),
                          **_errors(*_READ_ERRORS)}}},
        "/metrics": {"get": {
            "security": read_security,
            "operationId": "metrics", "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors(*_READ_ERRORS)}}},
        "/healthz": {"get": {
            "operationId": "health", "summary": "liveness and state database health", "security": [],
            "responses": {"200": _json_response("healthy", _ref("Health")),
                          "503": _json_response("unhealthy", _ref("Health"))}}},
    }
    for operation in (op for item in paths.values() for op in item.values()):
        operation["responses"].update(_errors(*_HEAD_ERRORS))  # any request's head (mirror.web.guard)
    return {
        "openapi": "3.0.3",
        "info": {"title": "mirror management API", "version": __version__,
                 "description": "Tiers, snapshots, promotion, rollback, history, syncs, diffs and "
                                "advisories. Mutating calls "
                                "need `Authorization: Bearer TOKEN` and a JSON body; errors are "
                                "`{\"error\": {\"code\", \"message\"}}`."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
