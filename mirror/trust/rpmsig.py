"""RPM package signatures: each package's header signature checked against the repo's pinned keys.

`rpmkeys --checksig` runs against a private rpm database (never the host's) that holds only the
repo's pinned keys, with `_pkgverify_level signature` so that an unsigned package fails (rpm's
default passes it). The database is built once per key set, atomically, under the storage root.
A package that verified once for a key set is remembered by digest, so a resync never re-checks
what it already proved. `SignatureChecks` runs the checks in batches while the downloads still
run, each batch one rpmkeys process started from the event loop; a package the in-process check
accepted as it landed (`mirror.downloads.fetch_into_pool`) is only counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mirror.errors import SignatureError, StorageError
from mirror.trust.gpg import Keyring

if TYPE_CHECKING:
    from mirror.downloads import Helpers
    from mirror.trust.rpmpackage import InProcessCheck

log = logging.getLogger(__name__)

BATCH = 200  # packages on one rpmkeys command line
TIMEOUT = 600
_KEY_LINE = re.compile(r"Signature, key ID ([0-9a-fA-F]+): (\S+)")


@dataclass(frozen=True)
class PackageCheck:
    label: str  # the package's path in the repo, for messages
    file: Path  # the bytes to check (a pool file)


def keyset_id(keyring: Keyring) -> str:
    return hashlib.sha256(",".join(sorted(keyring.pinned)).encode()).hexdigest()[:16]


def database_path(keyring: Keyring, root: Path) -> Path:
    """Where `PackageVerifier(keyring, root)` keeps its rpm database (and what it proved)."""
    return root / keyset_id(keyring)


def keys_path(keyring: Keyring, root: Path) -> Path:
    """The pinned keys `PackageVerifier(keyring, root)` exported (they exist once it is built)."""
    return database_path(keyring, root) / "keys.asc"


class PackageVerifier:
    def __init__(self, keyring: Keyring, root: Path) -> None:
        self.keyring = keyring
        self.keyset = keyset_id(keyring)
        self.dbpath = database_path(keyring, root)
        self._build(root)
        self.keys_file = keys_path(keyring, root)  # the pinned keys, exported (rpmkeys imported them)
        self.fast = self._fast_check()

    def _fast_check(self) -> InProcessCheck | None:
        """The in-process check (mirror.trust.rpmpackage) with the same exported keys rpmkeys has;
        None if it cannot be set up (then rpmkeys checks everything, as before)."""
        try:
            from mirror.trust.rpmpackage import InProcessCheck

            check = InProcessCheck(self.keys_file.read_bytes(), self.keyring.pinned)
        except Exception as exc:  # an old database without keys.asc, a key Sequoia cannot read
            log.warning("package signatures: in-process check unavailable, rpmkeys checks all: %s", exc)
            return None
        return check if check.usable else None

    def leave_to_rpmkeys(self, batch: Sequence[PackageCheck]) -> list[PackageCheck]:
        """Blocking: the packages of `batch` the in-process check did not accept (all of them
        without it); rpmkeys gives their verdict."""
        if self.fast is None:
            return list(batch)
        left = []
        for p in batch:
            why = self.fast.check(p.file)
            if why is not None:
                log.debug("%s: left to rpmkeys: %s", p.label, why)
                left.append(p)
        return left

    def _env(self) -> dict[str, str]:
        return {"HOME": str(self.dbpath), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}

    def _defines(self, dbpath: Path) -> list[str]:
        return ["--define", f"_dbpath {dbpath}", "--define", "_pkgverify_level signature"]

    def _build(self, root: Path) -> None:
        if (self.dbpath / ".complete").exists():
            return
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.keyset}.", dir=root))
        try:
            keys = subprocess.run(
                ["gpg", "--homedir", str(self.keyring.home), "--batch", "--no-options", "--armor",
                 "--export", *sorted(self.keyring.pinned)], capture_output=True, check=False, timeout=60)
            if keys.returncode != 0 or not keys.stdout:
                raise StorageError(f"cannot export the pinned keys for rpm: {keys.stderr.decode()[-300:]}")
            (tmp / "keys.asc").write_bytes(keys.stdout)
            proc = subprocess.run(["rpmkeys", *self._defines(tmp), "--import", str(tmp / "keys.asc")],
                                  capture_output=True, text=True, check=False, timeout=60,
                                  env={**self._env(), "HOME": str(tmp)})
            if proc.returncode != 0:
                raise StorageError(f"rpmkeys --import failed: {proc.stderr[-300:]}")
            (tmp / ".complete").write_text("ok\n")
            try:
                os.replace(tmp, self.dbpath)
            except OSError:
                if not (self.dbpath / ".complete").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def check(self, packages: Sequence[PackageCheck]) -> list[str]:
        """Blocking: the problems found, one line per bad package (empty: every one verified)."""
        left = self.leave_to_rpmkeys(packages)
        problems: list[str] = []
        for i in range(0, len(left), BATCH):
            problems += self._check_batch(left[i:i + BATCH])
        return problems

    def _checksig(self, batch: Sequence[PackageCheck]) -> list[str]:
        return ["rpmkeys", *self._defines(self.dbpath), "--checksig", "-v", *(str(p.file) for p in batch)]

    def _check_batch(self, batch: Sequence[PackageCheck]) -> list[str]:
        try:
            proc = subprocess.run(self._checksig(batch), capture_output=True, text=True,
                                  check=False, timeout=TIMEOUT, env=self._env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SignatureError(f"cannot run rpmkeys: {exc}") from exc
        return _problems(batch, proc.stdout, proc.returncode, proc.stderr)

    async def check_batch(self, batch: Sequence[PackageCheck], *,
                          started: Callable[[int], None] | None = None) -> list[str]:
        """`check` of one batch in one `rpmkeys` process, without blocking the event loop (nor a
        thread): the problems found. `started` is told rpmkeys' pid as soon as it runs (to renice
        it). Cancelled, it kills its rpmkeys."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._checksig(batch), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self._env())
        except OSError as exc:
            raise SignatureError(f"cannot run rpmkeys: {exc}") from exc
        try:
            if started is not None:
                started(proc.pid)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            except TimeoutError:
                raise SignatureError(f"cannot run rpmkeys: timed out after {TIMEOUT} seconds") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return _problems(batch, out.decode(errors="replace"), proc.returncode, err.decode(errors="replace"))


#: The signature pipeline (`SignatureChecks`): while packages still download, a batch waits until
#: it has MIN_BATCH packages or LINGER seconds have passed since its first (starting rpmkeys costs
#: about as much as ten package checks), and its rpmkeys runs at nice +NICE, so that it takes only
#: the CPU the downloads leave. Once they are done, what is left is shared among the WORKERS at
#: once and runs at the sync's own priority, and so do the batches still running: each is
#: reniced back or, where that is not permitted, restarted. At most BATCH packages per rpmkeys.
MIN_BATCH = 64
LINGER = 0.25
WORKERS = max(1, min(4, len(os.sched_getaffinity(0))))  # one per core (Linux), up to 4
NICE = 19


class SignatureChecks:
    """Package signatures checked while the packages still download.

    `submit` (on the event loop, never blocking) queues a package whose bytes are in the pool;
    up to WORKERS tasks take queued packages in batches, each checked by one `rpmkeys` process
    (`PackageVerifier.check_batch`). `finish` checks what is left, waits for every batch and
    returns every problem, so that by the time the last download lands only the last batches
    remain. Each package is checked once: digests in `proven` (verified before for this key set)
    or already submitted are skipped; a verdict is final, never retried (only a batch interrupted
    to run it at full priority starts again). `aclose` stops everything still running (a sync
    that failed otherwise)."""

    def __init__(self, verifier: asyncio.Future[PackageVerifier], proven: set[str],
                 path_for: Callable[[str], Path], *, workers: int | None = None, min_batch: int | None = None,
                 linger: float | None = None, nice: int | None = None,
                 helpers: Helpers | None = None) -> None:
        self.verifier = verifier  # may still be building its database
        self._helpers = helpers  # the sync's download helpers run the in-process check, if any
        self.checked: list[str] = []  # digests submitted (remembered once every one verified)
        self.landed = 0  # of them, accepted by the in-process check as they landed
        self._path_for = path_for
        self._seen = set(proven)
        self._queue: deque[PackageCheck] = deque()
        self._workers = WORKERS if workers is None else workers
        self._min_batch = MIN_BATCH if min_batch is None else min_batch
        self._linger = LINGER if linger is None else linger
        self._nice = NICE if nice is None else nice
        self._share = BATCH  # at the end: what each worker takes
        self._tasks: list[asyncio.Task[None]] = []
        self._niced: dict[asyncio.Task[list[str]], int] = {}  # running nice batches -> their rpmkeys pid
        self._more = asyncio.Event()
        self._closed = False
        self._problems: list[str] = []
        self._error: BaseException | None = None

    def submit(self, label: str, digest: str, *, landed: bool = False) -> None:
        """Queue the package `label` (its path in the repo) stored in the pool as `digest`;
        `landed`: the in-process check accepted its bytes as they landed (nothing left to do)."""
        if digest in self._seen or self._closed:
            return
        self._seen.add(digest)
        self.checked.append(digest)
        if landed:
            self.landed += 1
            return
        self._queue.append(PackageCheck(label, self._path_for(digest)))
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._worker(), name=f"rpmkeys-{i}")
                           for i in range(self._workers)]
        if len(self._queue) == 1 or len(self._queue) >= self._min_batch:  # what workers wait for
            self._more.set()

    async def finish(self) -> list[str]:
        """Check what is still queued, wait for every batch; the problems, sorted (empty: all good).
        Raises SignatureError if rpmkeys could not run."""
        self._closed = True
        left = len(self._queue)
        batches = -(-left // BATCH)
        batches += -batches % self._workers  # as many for each worker, as even as can be
        self._share = max(1, -(-left // max(1, batches)))
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        for job, pid in list(self._niced.items()):
            try:
                os.setpriority(os.PRIO_PROCESS, pid, mine)
            except ProcessLookupError:
                pass  # it has just exited
            except OSError:  # not permitted to renice back (no CAP_SYS_NICE): start it again
                job.cancel()
        self._more.set()
        await self.verifier  # its errors are the sync's even when there is nothing left to check
        await asyncio.gather(*self._tasks)
        if self._error is not None:
            raise self._error
        return sorted(self._problems)

    async def aclose(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(self.verifier, *self._tasks, return_exceptions=True)

    async def _wait(self) -> None:
        self._more.clear()
        await self._more.wait()

    async def _worker(self) -> None:
        while self._error is None:
            if not self._queue:
                if self._closed:
                    return
                await self._wait()
                continue
            if len(self._queue) < self._min_batch and not self._closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger):
                        while len(self._queue) < self._min_batch and not self._closed:
                            await self._wait()
                if not self._queue:
                    continue
            # At the end, what is left is shared among the workers: the last batches finish together.
            share = self._share if self._closed else len(self._queue)
            batch = [self._queue.popleft() for _ in range(min(share, BATCH, len(self._queue)))]
            try:
                self._problems += await self._run(batch)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # aclose
                self._queue.extendleft(reversed(batch))  # interrupted by finish: again, at full priority
            except Exception as exc:  # rpmkeys could not run (or no database): finish() raises it
                self._error = exc
                self._more.set()

    async def _run(self, batch: list[PackageCheck]) -> list[str]:
        verifier = await self.verifier
        batch = await self._leave_to_rpmkeys(verifier, batch)
        if not batch:
            return []
        if self._closed or not self._nice:
            return await verifier.check_batch(batch)
        job: asyncio.Task[list[str]] | None = None

        def started(pid: int) -> None:  # checks and registers in one step: finish() sees it or came first
            assert job is not None
            if self._closed:
                return
            with contextlib.suppress(OSError):  # best effort: it may already have exited
                mine = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, pid, min(19, mine + self._nice))
                self._niced[job] = pid

        job = asyncio.create_task(verifier.check_batch(batch, started=started))
        try:
            return await job
        finally:
            self._niced.pop(job, None)


    async def _leave_to_rpmkeys(self, verifier: PackageVerifier,
                                batch: list[PackageCheck]) -> list[PackageCheck]:
        """The packages of `batch` the in-process check did not accept: checked by a download
        helper when there is one (no contention with this event loop for the interpreter lock),
        else in a thread."""
        if self._helpers is not None and verifier.fast is not None:
            declined = await self._helpers.check_signatures([p.file for p in batch], verifier.keys_file,
                                                            verifier.keyring.pinned)
            if declined is not None:
                return [batch[i] for i in declined]
        return await asyncio.to_thread(verifier.leave_to_rpmkeys, batch)


def _problems(batch: Sequence[PackageCheck], stdout: str, returncode: int, stderr: str) -> list[str]:
    """One line per package of `batch` that did not verify, from `rpmkeys --checksig -v`'s output."""
    blocks = _blocks(stdout)
    problems = []
    for p in batch:
        lines = blocks.get(str(p.file))
        verdict = _verdict(lines) if lines is not None else "rpmkeys gave no verdict"
        if verdict is not None:
            problems.append(f"{p.label}: {verdict}")
    if returncode not in (0, 1) and not problems:
        problems.append(f"rpmkeys exited {returncode}: {stderr.strip()[-300:]}")
    return problems


def _blocks(output: str) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = blocks.setdefault(line[:-1], [])
        elif current is not None and line.strip():
            current.append(line.strip())
    return blocks


def _verdict(lines: list[str]) -> str | None:
    """None when the package carries a good signature by a key in the database and intact digests."""
    if not lines:  # its name and nothing else: rpmkeys refused the headers (the reason is on stderr)
        return "rpmkeys could not read its signature header or header (no check reported)"
    signed_ok = False
    for line in lines:
        name, _, result = line.rpartition(": ")
        key = _KEY_LINE.search(line)
        if key is not None:
            if result == "OK":
                signed_ok = True
            elif result == "NOKEY":
                return f"signed by key ID {key.group(1).lower()}, which is not one of this repo's keys"
            else:
                return f"signature by key ID {key.group(1).lower()}: {result}"
        elif result not in ("OK", "NOTFOUND"):
            return f"{name}: {result}"
    return None if signed_ok else "not signed (no signature by any key)"
