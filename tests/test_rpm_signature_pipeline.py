"""RPM package signatures checked while the packages download (`mirror.trust.rpmsig.SignatureChecks`).

Unit tests drive the pipeline with a fake verifier; the end-to-end ones sync a real signed RPM
repo (tests/test_sync_rpm.py's `setup`) and watch the real rpmkeys batches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from fixtures.keys import SigningKey
from fixtures.rpm_repo import RpmPackage
from fixtures.upstream import Fault
from mirror.errors import SignatureError
from mirror.trust.gpg import Keyring
from mirror.trust.rpmsig import PackageCheck, PackageVerifier, SignatureChecks
from tests.test_sync_rpm import Setup, setup, write_rpm_config  # noqa: F401 (the `setup` fixture)


class FakeVerifier:
    """Stands in for PackageVerifier: records its batches, finds `bad` labels bad."""

    def __init__(self, *, bad: Sequence[str] = (), delay: float = 0.0, fail: Exception | None = None) -> None:
        self.bad, self.delay, self.fail = set(bad), delay, fail
        self.batches: list[list[str]] = []
        self.running = 0
        self.cancelled = 0

    def leave_to_rpmkeys(self, batch: Sequence[PackageCheck]) -> list[PackageCheck]:
        return list(batch)  # no in-process check: every package goes to "rpmkeys"

    async def check_batch(self, batch: Sequence[PackageCheck], *,
                          started: Callable[[int], None] | None = None) -> list[str]:
        self.batches.append([p.label for p in batch])
        self.running += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        if self.fail is not None:
            raise self.fail
        return [f"{p.label}: bad" for p in batch if p.label in self.bad]


def _checks(fake: FakeVerifier, proven: frozenset[str] = frozenset(), **kw: Any) -> SignatureChecks:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(fake)
    return SignatureChecks(future, set(proven), lambda d: Path("/pool") / d, **kw)


def _digest(i: int) -> str:
    return f"{i:064x}"


def test_batches_run_while_packages_still_arrive_and_each_package_is_checked_once() -> None:
    async def scenario() -> tuple[FakeVerifier, list[str], int]:
        fake = FakeVerifier(bad=["p0007"], delay=0.01)
        checks = _checks(fake, proven=frozenset({_digest(3)}), workers=2, min_batch=8, linger=0.05)
        for i in range(100):
            checks.submit(f"p{i:04d}", _digest(i))
            checks.submit(f"again{i}", _digest(i))  # a second path with the same content
            await asyncio.sleep(0.002)
        before_the_end = sum(len(b) for b in fake.batches)
        problems = await checks.finish()
        await checks.aclose()
        return fake, problems, before_the_end

    fake, problems, before_the_end = asyncio.run(scenario())
    checked = [label for batch in fake.batches for label in batch]
    assert before_the_end >= 50, fake.batches  # most were checked before the last one arrived
    assert sorted(checked) == [f"p{i:04d}" for i in range(100) if i != 3]  # proven one skipped, no repeats
    assert problems == ["p0007: bad"]


def test_what_is_left_at_the_end_is_shared_among_the_workers() -> None:
    async def scenario() -> FakeVerifier:
        fake = FakeVerifier()
        checks = _checks(fake, workers=2, min_batch=10_000, linger=60)  # nothing goes before finish
        for i in range(300):
            checks.submit(f"p{i}", _digest(i))
        await asyncio.sleep(0.01)
        assert fake.batches == []
        await checks.finish()
        return fake

    fake = asyncio.run(scenario())
    assert sorted(len(b) for b in fake.batches) == [150, 150]


def test_problems_come_sorted_and_checked_lists_every_submitted_digest() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        fake = FakeVerifier(bad=["b", "a", "c"])
        checks = _checks(fake, workers=2, min_batch=1, linger=0)
        for i, label in enumerate(["c", "ok", "b", "a"]):
            checks.submit(label, _digest(i))
        return await checks.finish(), checks.checked

    problems, checked = asyncio.run(scenario())
    assert problems == ["a: bad", "b: bad", "c: bad"]
    assert checked == [_digest(i) for i in range(4)]


def test_rpmkeys_that_cannot_run_fails_the_check() -> None:
    async def scenario() -> None:
        checks = _checks(FakeVerifier(fail=SignatureError("cannot run rpmkeys: gone")), min_batch=1, linger=0)
        checks.submit("p", _digest(1))
        await checks.finish()

    with pytest.raises(SignatureError, match="cannot run rpmkeys"):
        asyncio.run(scenario())


def test_aclose_stops_running_batches() -> None:
    async def scenario() -> tuple[FakeVerifier, float]:
        fake = FakeVerifier(delay=60)
        checks = _checks(fake, workers=2, min_batch=1, linger=0)
        checks.submit("p", _digest(1))
        checks.submit("q", _digest(2))
        await asyncio.sleep(0.05)
        assert fake.running >= 1
        start = time.monotonic()
        await checks.aclose()
        return fake, time.monotonic() - start

    fake, took = asyncio.run(scenario())
    assert took < 5 and fake.running == 0 and fake.cancelled >= 1


class ChildVerifier:
    """A verifier whose "rpmkeys" is a sleeping child process, to watch its niceness."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs: list[tuple[list[str], int, int | None]] = []  # labels, nice at start, nice at the end

    def leave_to_rpmkeys(self, batch: Sequence[PackageCheck]) -> list[PackageCheck]:
        return list(batch)  # no in-process check: every package goes to "rpmkeys"

    async def check_batch(self, batch: Sequence[PackageCheck], *,
                          started: Callable[[int], None] | None = None) -> list[str]:
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        try:
            if started is not None:
                started(proc.pid)
            run: list[Any] = [[p.label for p in batch], os.getpriority(os.PRIO_PROCESS, proc.pid), None]
            self.runs.append(run)  # type: ignore[arg-type]
            await asyncio.sleep(self.seconds)
            run[2] = os.getpriority(os.PRIO_PROCESS, proc.pid)
            return []
        finally:
            proc.kill()
            await proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="renicing back needs CAP_SYS_NICE")
def test_a_nice_batch_still_running_when_the_downloads_end_is_reniced_back() -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)

    async def scenario() -> ChildVerifier:
        fake = ChildVerifier(0.5)
        checks = _checks(fake, workers=1, min_batch=1, linger=0)  # type: ignore[arg-type]
        checks.submit("p", _digest(1))
        while not fake.runs:
            await asyncio.sleep(0.01)
        assert await checks.finish() == []
        return fake

    fake = asyncio.run(scenario())
    assert [(labels, start, end) for labels, start, end in fake.runs] == [(["p"], min(19, mine + 19), mine)]


def test_a_nice_batch_that_cannot_be_reniced_back_is_restarted_at_full_priority(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    setpriority = os.setpriority

    def unprivileged(which: int, who: int, prio: int) -> None:
        if prio < os.getpriority(which, who):
            raise PermissionError(13, "Permission denied")
        setpriority(which, who, prio)

    monkeypatch.setattr(os, "setpriority", unprivileged)

    async def scenario() -> tuple[ChildVerifier, list[str]]:
        fake = ChildVerifier(0.3)
        checks = _checks(fake, workers=1, min_batch=1, linger=0)  # type: ignore[arg-type]
        checks.submit("p", _digest(1))
        while not fake.runs:
            await asyncio.sleep(0.01)
        assert await checks.finish() == []
        return fake, checks.checked

    fake, checked = asyncio.run(scenario())
    assert [(labels, start, end) for labels, start, end in fake.runs] == [
        (["p"], min(19, mine + 19), None), (["p"], mine, mine)]  # interrupted, then again at full priority
    assert checked == [_digest(1)]


def test_a_cancelled_batch_kills_its_rpmkeys(tmp_path: Path, archive_key: SigningKey,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    keyring = Keyring([archive_key.write_public(tmp_path / "k.asc")], [archive_key.fingerprint],
                      tmp_path / "keyring")
    verifier = PackageVerifier(keyring, tmp_path / "rpmdb")  # the real rpmkeys builds the database
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    pidfile = tmp_path / "rpmkeys.pid"
    (fake_bin / "rpmkeys").write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    (fake_bin / "rpmkeys").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")

    async def scenario() -> None:
        task = asyncio.create_task(verifier.check_batch([PackageCheck("p", tmp_path / "p.rpm")]))
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


# -- end to end ----------------------------------------------------------------------------------


def test_signatures_are_checked_while_a_slow_package_still_downloads(
        setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """The first packages are checked in batches while the slow one still downloads; that one
    lands once the verifier is ready and is checked as it lands (its bytes still in memory)."""
    caplog.set_level(logging.DEBUG, logger="mirror.trust.rpm")
    setup.upstream.add(RpmPackage("slow", "1.0"))
    setup.publish()
    setup.server.faults[setup.upstream.url_path_of("slow", "1.0")] = Fault(delay=2.0)
    batches: list[tuple[float, list[str]]] = []  # every batch: the in-process check, then rpmkeys
    original = PackageVerifier.leave_to_rpmkeys

    def recording(self: PackageVerifier, batch: Sequence[PackageCheck]) -> list[PackageCheck]:
        batches.append((time.monotonic(), [p.label for p in batch]))
        return original(self, batch)

    monkeypatch.setattr(PackageVerifier, "leave_to_rpmkeys", recording)
    start = time.monotonic()
    result = setup.mirror.sync_one()
    assert result.ok, result.error
    labels = [label for _, batch in batches for label in batch]
    (line,) = [r.getMessage() for r in caplog.records if "accepted as they landed" in r.getMessage()]
    landed = int(line.split(": package signatures: ")[1].split()[0])
    assert sorted(labels) == sorted(set(labels)) and len(labels) + landed == 4, (labels, line)
    assert not any("slow" in label for label in labels) and landed >= 1  # the slow one, as it landed
    early = [batch for at, batch in batches if at - start < 1.5]  # before the slow one could land
    assert early and not any("slow" in label for batch in early for label in batch), batches
    (proven,) = (setup.mirror.settings.storage.root / "rpmdb").glob("*/verified-packages")
    assert len(proven.read_text().split()) == 4


def test_packages_already_in_the_pool_are_still_checked_for_a_repo_that_requires_signatures(
        setup: Setup, tmp_path: Path, archive_key: SigningKey) -> None:  # noqa: F811
    setup.upstream.add(RpmPackage("hello", "1.1"), sign=False)
    setup.publish()
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_rpm_config(tmp_path / "shared", setup.server.url, keyring, name="strict", extra_repo=f"""
[[repos]]
name = "lax"
type = "rpm"
url = "{setup.server.url}"
keyring = "{keyring}"
package_signatures = "ignore"
""")
    assert mirror.sync_one("lax").ok  # every package, the unsigned one too, is now in the shared pool
    result = mirror.sync_one("strict")
    assert result.error is not None and result.error.code == "signature_invalid", result.error
    assert "hello-1.1" in str(result.error) and "not signed" in str(result.error)
    assert mirror.snapshots("strict") == []
    assert not list((mirror.settings.storage.root / "rpmdb").glob("*/verified-packages"))  # none remembered


def test_a_failed_download_stops_the_checks_and_remembers_nothing(setup: Setup) -> None:  # noqa: F811
    setup.upstream.add(RpmPackage("gone", "1.0"))
    setup.publish()
    setup.server.faults[setup.upstream.url_path_of("gone", "1.0")] = Fault(statuses=[404] * 10)
    result = setup.mirror.sync_one()
    assert result.error is not None and "gone-1.0" in str(result.error), result.error
    assert setup.mirror.snapshots() == []
    assert not list((setup.mirror.settings.storage.root / "rpmdb").glob("*/verified-packages"))


def test_a_leftover_in_the_pool_is_adopted_and_still_checked(setup: Setup) -> None:  # noqa: F811
    import hashlib

    from mirror.pool import Pool

    setup.upstream.add(RpmPackage("hello", "1.1"), sign=False)
    setup.publish()
    data = setup.upstream.rpm_path("hello", "1.1").read_bytes()
    # what an interrupted run leaves: the file under its final pool name, not recorded anywhere
    leftover = Pool(setup.mirror.settings.storage.root).path_for(hashlib.sha256(data).hexdigest())
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(data)
    result = setup.mirror.sync_one()
    assert result.error is not None and result.error.code == "signature_invalid", result.error
    assert "hello-1.1" in str(result.error) and "not signed" in str(result.error)
    assert setup.mirror.snapshots() == []
