"""The OpenAPI document matches the running server: schemathesis generates requests for every
operation of `/api/v1/openapi.json` against a live `mirror serve`; no 500s, every status is
documented, every response matches its schema and content type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fixtures.keys import SigningKey
from mirror.pool import Pool
from tests.helpers import Served, seed_snapshot, serve_both, write_config, write_tokens

TOKEN = "schema-token-0123456789abcdef"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, archive_key: SigningKey) -> Iterator[Served]:
    root: Path = tmp_path_factory.mktemp("schema")
    keyring = archive_key.write_public(root / "keys" / "archive.asc")
    tokens = write_tokens(root / "mirror" / "tokens", {"schemathesis": TOKEN})
    # the upstream URL leads nowhere: a sync started by a generated request fails fast
    mirror = write_config(root / "mirror", f"file://{root}/nowhere/", keyring, retries=0,
                          extra_server=f'token_file = "{tokens}"')
    store = mirror.store()
    pool = Pool(mirror.settings.storage.root)
    for i in range(3):
        seed_snapshot(store, pool, "repo", {"dists/stable/InRelease": f"release {i}".encode(),
                                            f"pool/p_{i}_all.deb": f"package {i}".encode()})
    store.close()
    with serve_both(mirror) as served:
        yield served


def exercise(operation: schemathesis.APIOperation, mode: GenerationMode,
             checks: list[schemathesis.CheckFunction]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink], database=None)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks, timeout=30)

    try:
        run()
    except Unsatisfiable:  # negative mode: an operation without inputs has nothing to get wrong
        assert mode is GenerationMode.NEGATIVE, operation.label


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(live: Served, mode: GenerationMode) -> None:
    """Every operation, generated valid (positive) and invalid (negative) requests.

    (schemathesis' own pytest plugin does not run under pytest 9 yet, hence the explicit loop.)"""
    schema = schemathesis.openapi.from_url(f"{live.api_url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11, " ".join(o.label for o in operations)  # it leaves out the document
    for operation in operations:
        exercise(operation, mode, CHECKS)
