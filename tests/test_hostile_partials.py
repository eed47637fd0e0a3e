"""HOSTILE.md cases 24, 39, 41, 45 and 76: what tests/HOSTILE_COVERAGE.md had as "partly".

Each test is named `test_case<NN>_...` after its case; the policies chosen where the catalogue
leaves one open are in the README's security section ("Policies for the cases ...").

- 39: comps.xml (`group`, `group_gz`) and modules.yaml are parsed only for a filtered snapshot
  (reduced to the kept packages: mirror.formats.comps, mirror.formats.modulemd); an unfiltered
  one mirrors them as opaque blobs checked against the signed repomd's size and digest, and an
  entity bomb in them is mirrored fast and with bounded memory. A filtered sync refuses an entity
  declaration in comps (defusedxml) and any YAML anchor or alias in modules.yaml (an event scan
  before loading) fast, with bounded memory, naming the file.
- 24: a ten-digit `<revision>` reads as a Unix time; more than a day in the future is refused
  like a future record timestamp (`mirror.formats.rpm.revision_problem`).
- 41: createrepo_c holds a text node whole (about twice its size), so a primary.xml or
  updateinfo.xml with more than `MAX_TEXT_RUN` bytes without markup is refused before it is
  parsed; memory is measured in a subprocess.
- 45: `mirror cve` (table, JSON) and the /cves and /advisories API with hostile advisory strings;
  a control character in an error message's path.
- 76: pool mismatch messages carry expected and received values and the URL; a promotion policy
  refusal is loud; the per-tier staleness gauges exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.keys import SigningKey, make_key
from fixtures.rpm_repo import RpmPackage, RpmRepo, sample_modules_yaml
from fixtures.upstream import UpstreamServer
from mirror.diff import Advisory, AdvisoryPackage
from mirror.formats.rpm import parse_repomd
from mirror.model import EntryKind, ExpectedFile, ManifestEntry, PackageKey, RootRecord, utcnow
from mirror.pool import Pool
from mirror.store import NewSnapshot
from tests.helpers import CHECKOUT, Mirror, app_in_thread, http, write_config
from tests.test_hostile_catalogue import Before, RpmSetup, assert_rejected

RPM_BASE = [RpmPackage("hello", "1.0"), RpmPackage("libfoo", "2.0", epoch=1, payload_size=4000),
            RpmPackage("foo-doc", "2.0", arch="noarch")]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def mirror_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return make_key(tmp_path_factory.mktemp("keys") / "partials-mirror", "Partials Mirror <m@example.org>")


@contextlib.contextmanager
def rpm_repo(tmp_path: Path, key: SigningKey, *, extra_repo: str = "",
             extra_top: str = "") -> Iterator[RpmSetup]:
    """An RPM upstream (revision 1000) served over HTTP and a mirror configured for it."""
    upstream = RpmRepo(tmp_path / "upstream", key)
    upstream.add(*RPM_BASE)
    upstream.publish(revision="1000", timestamp=1_700_000_000)
    keyring = key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_config(tmp_path / "mirror", server.url, keyring, kind="rpm", extra_repo=extra_repo,
                              extra_top=extra_top)
        yield RpmSetup(upstream, server, mirror, key)


def first_snapshot(s: RpmSetup) -> Before:
    first = s.mirror.sync_one()
    assert first.ok and first.snapshot, first.error
    return Before(first.snapshot, s.mirror.served_tree())


def run_measured(args: list[str], *, timeout: float = 180) -> tuple[int, str, int, float]:
    """Run `args` from the checkout: (exit status, output, peak RSS in bytes, seconds).

    The peak is the program's own (VmHWM of its address space, polled until it exits): wait4's
    ru_maxrss also counts the fork of this (big) test process before the exec."""
    with tempfile.TemporaryFile() as out:
        start = time.monotonic()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=CHECKOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        peak = 0
        try:
            while proc.poll() is None:
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except OSError:
                    break
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
                time.sleep(0.02)
            proc.wait()
        finally:
            timer.cancel()
        elapsed = time.monotonic() - start
        out.seek(0)
        return proc.returncode, out.read().decode(errors="replace"), peak, elapsed


# -- 39: entity bombs in records the mirror does not parse ---------------------------------------

def xml_bomb(root: str, body: str, *, quadratic: bool) -> str:
    """`body` with `@BOMB@` replaced by a reference that expands to ~3 GB (billion laughs) or
    ~10 GB (quadratic blowup: one 100 kB entity referenced 100 000 times)."""
    if quadratic:
        dtd = f'<!DOCTYPE {root} [\n <!ENTITY a "{"x" * 100_000}">\n]>\n'
        ref = "&a;" * 100_000
    else:
        entities = "".join(f' <!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">\n' for i in range(1, 10))
        dtd = f'<!DOCTYPE {root} [\n <!ENTITY lol0 "lol">\n{entities}]>\n'
        ref = "&lol9;"
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + dtd + body.replace("@BOMB@", ref)


COMPS_BODY = """<comps>
  <group>
    <id>bomb</id>
    <name>@BOMB@</name>
    <description>@BOMB@</description>
    <default>false</default>
    <uservisible>true</uservisible>
    <packagelist>
      <packagereq type="mandatory">hello</packagereq>
    </packagelist>
  </group>
</comps>
"""


def yaml_bomb() -> str:
    """A YAML "billion laughs" (nested aliases, 9^10 leaves) as a third modules.yaml document."""
    lines = ["---", "document: modulemd-bomb", "version: 1", "data:",
             '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n...\n"


def test_case39_only_the_filtered_path_parses_comps_or_modules_yaml() -> None:
    """The premise of the tests below: comps and modules.yaml are read only by
    mirror.formats.comps (defusedxml) and mirror.formats.modulemd (PyYAML), which only
    mirror.repodata (the filtered snapshot's metadata) imports; no libcomps or libmodulemd, and
    no other module imports YAML or parses comps. Unfiltered, they are records like any other."""
    parsers = {"comps.py": ("defusedxml",), "modulemd.py": ("import yaml",)}
    for path in (CHECKOUT / "mirror").rglob("*.py"):
        text = path.read_text()
        for needle in ("import yaml", "from yaml", "defusedxml", "libcomps", "xml_parse_comps",
                       "libmodulemd"):
            if needle in parsers.get(path.name, ()) and path.parent.name == "formats":
                continue
            assert needle not in text, (path, needle)
        if path.name != "repodata.py":
            assert "mirror.formats.comps" not in text and "mirror.formats.modulemd" not in text, path


@pytest.mark.parametrize("bomb", ["billion_laughs", "quadratic_blowup"])
def test_case39_entity_bombs_in_comps_and_modules_yaml_are_mirrored_byte_for_byte_unparsed(
        tmp_path: Path, archive_key: SigningKey, bomb: str) -> None:
    with rpm_repo(tmp_path, archive_key) as s:
        first_snapshot(s)
        s.upstream.add(RpmPackage("hello", "1.1"))
        s.upstream.publish(revision="1001", timestamp=1_700_000_001,
                           comps_xml=xml_bomb("comps", COMPS_BODY, quadratic=bomb == "quadratic_blowup"),
                           modules_yaml=sample_modules_yaml() + yaml_bomb())
        code, out, rss, seconds = run_measured([sys.executable, "-m", "mirror.cli", "-c",
                                                str(s.mirror.config), "sync"])
        assert code == 0, out
        assert seconds < 30 and rss < 250 * MiB, (seconds, rss)  # an expansion is gigabytes and minutes
        tree = s.mirror.served_tree()
        served = parse_repomd(tree["repodata/repomd.xml"], what="repomd.xml")
        upstream = s.upstream.records()
        for kind in ("group", "group_gz", "modules"):
            record = served.record(kind)
            assert record is not None, kind
            assert tree[record.href] == (s.upstream.root / upstream[kind].href).read_bytes(), kind
        assert tree["repodata/repomd.xml"] == s.upstream.repomd_path.read_bytes()


@pytest.mark.parametrize("bomb", ["billion_laughs_in_comps", "quadratic_blowup_in_comps",
                                  "alias_bomb_in_modules", "lone_anchor_in_modules"])
def test_case39_bombs_in_comps_or_modules_yaml_of_a_filtered_repo_are_refused_fast(
        tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey, bomb: str) -> None:
    """A filtered snapshot reduces comps and modules.yaml to the kept packages, so it parses them:
    an entity declaration in comps and any anchor or alias in modules.yaml are refused before
    anything is expanded (CLI sync in a subprocess: fails in seconds, bounded peak RSS; then the
    same sync in process: nothing published, the error names the file)."""
    extra_top = f'[signing]\ngnupghome = "{mirror_key.home}"\nkey = "{mirror_key.fingerprint}"\n'
    with rpm_repo(tmp_path, archive_key, extra_repo='exclude = ["/^foo-doc/"]', extra_top=extra_top) as s:
        before = first_snapshot(s)
        s.upstream.add(RpmPackage("hello", "1.1"))
        comps = COMPS_BODY.replace("@BOMB@", "Bomb")
        modules = sample_modules_yaml()
        if bomb.endswith("_in_comps"):
            comps = xml_bomb("comps", COMPS_BODY, quadratic=bomb.startswith("quadratic"))
        elif bomb == "alias_bomb_in_modules":
            modules += yaml_bomb()
        else:  # an anchor nothing refers to yet: still refused (modulemd files have none)
            modules = modules.replace("summary: Test module", "summary: &s Test module")
        s.upstream.publish(revision="1001", timestamp=1_700_000_001, comps_xml=comps, modules_yaml=modules)
        kind = "group" if bomb.endswith("_in_comps") else "modules"
        href = s.upstream.records()[kind].href
        code, out, rss, seconds = run_measured([sys.executable, "-m", "mirror.cli", "-c",
                                                str(s.mirror.config), "sync"])
        assert code != 0, out
        assert seconds < 30 and rss < 250 * MiB, (seconds, rss)
        assert href in out, out
        result = s.mirror.sync_one()
        words = "declares an XML entity" if kind == "group" else "uses a YAML anchor or alias"
        assert_rejected(s, before, result, code="metadata_malformed", file=href, words=words)


@pytest.mark.parametrize("kind", ["filelists", "other"])
def test_case39_entity_bomb_in_filelists_or_other_of_a_filtered_repo_is_refused_fast(
        tmp_path: Path, archive_key: SigningKey, mirror_key: SigningKey, kind: str) -> None:
    """A filtered snapshot re-writes filelists and other through createrepo_c's parser: a DTD
    there must not expand (createrepo_c's parser leaves the entity undefined: "Entity 'lol9' not
    defined", the sync fails)."""
    extra_top = f'[signing]\ngnupghome = "{mirror_key.home}"\nkey = "{mirror_key.fingerprint}"\n'
    with rpm_repo(tmp_path, archive_key, extra_repo='exclude = ["/^foo-doc/"]', extra_top=extra_top) as s:
        before = first_snapshot(s)
        s.upstream.add(RpmPackage("hello", "1.1"))
        s.upstream.publish(revision="1001", timestamp=1_700_000_001)
        inject = {"filelists": "<file>@BOMB@</file></package>",
                  "other": '<changelog author="a" date="1">@BOMB@</changelog></package>'}[kind]
        s.upstream.edit_metadata(kind, lambda x: xml_bomb(
            "metadata", x.split("?>", 1)[1].replace("</package>", inject, 1), quadratic=False))
        start = time.monotonic()
        result = s.mirror.sync_one()
        seconds = time.monotonic() - start
        assert seconds < 30, seconds
        assert_rejected(s, before, result, code="metadata_malformed", file="repodata")


def _record(kind: str, href: str, open_size: int | None) -> object:
    from mirror.formats.rpm import RepomdRecord

    return RepomdRecord(kind, href, None, "sha256", "0" * 64, 1, None, None, open_size, None)


@pytest.mark.parametrize(("case", "content", "open_size", "max_size", "outcome"), [
    ("within_open_size", b"x" * 5000, 5000, 10_000, "ok"),
    ("no_open_size_within_max", b"x" * 5000, None, 10_000, "ok"),
    ("bomb_past_the_max", b"\0" * 50_000, None, 10_000, "exceeds the cap of 10000"),
    ("bomb_past_its_open_size", b"\0" * 50_000, 1000, 10_000, "exceeds the cap of 1000"),
    ("open_size_claims_more_than_the_max", b"\0" * 50_000, 60_000, 10_000, "exceeds the cap of 10000"),
    ("shorter_than_its_open_size", b"x" * 5000, 6000, 10_000, "repomd says open-size 6000"),
])
def test_case39_filelists_and_other_of_a_filtered_repo_are_decompressed_under_a_cap(
        tmp_path: Path, case: str, content: bytes, open_size: int | None, max_size: int,
        outcome: str) -> None:
    """createrepo_c reads a compressed file without any cap: a filtered snapshot hands it
    filelists and other decompressed first, at most min(open-size, max_index_size) bytes."""
    import gzip

    from mirror.errors import MirrorError
    from mirror.repodata import UpstreamRecord, _decompressed

    source = tmp_path / "filelists.xml.gz"
    source.write_bytes(gzip.compress(content))
    record = UpstreamRecord(_record("filelists", "repodata/x-filelists.xml.gz", open_size),  # type: ignore[arg-type]
                            source)
    if outcome == "ok":
        plain = _decompressed(record, tmp_path / "plain", max_size)
        assert plain.file.read_bytes() == content and plain.record is record.record
        return
    with pytest.raises(MirrorError, match=outcome) as err:
        _decompressed(record, tmp_path / "plain", max_size)
    assert "repodata/x-filelists.xml.gz" in str(err.value)


# -- 24: a repomd revision far in the future ------------------------------------------------------

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SKEW = timedelta(days=1)


@pytest.mark.parametrize(("revision", "refused"), [
    ("9999999999", True),  # year 2286
    (str(int((NOW + timedelta(days=3)).timestamp())), True),
    (str(int((NOW + timedelta(hours=20)).timestamp())), False),  # within the skew
    (str(int((NOW - timedelta(days=400)).timestamp())), False),
    ("1000", False), ("20261127", False),  # counters and dates: not Unix times
    ("99999999999", False), ("0999999999", False),  # eleven digits, a leading zero: not read as times
    ("8.9", False), ("", False), (None, False), ("9999999999 ", False),
])
def test_case24_revision_that_reads_as_a_future_unix_time_is_a_problem(revision: str | None,
                                                                       refused: bool) -> None:
    from mirror.formats.rpm import revision_problem

    problem = revision_problem(revision, NOW, SKEW)
    assert (problem is not None) == refused, problem
    if problem is not None:
        assert f"revision {revision}" in problem and "in the future" in problem


def test_case24_repomd_revision_far_in_the_future_is_refused_in_a_sync_and_never_the_mark(
        tmp_path: Path, archive_key: SigningKey) -> None:
    with rpm_repo(tmp_path, archive_key) as s:
        before = first_snapshot(s)
        s.upstream.add(RpmPackage("hello", "1.1"))
        s.upstream.publish(revision="9999999999", timestamp=1_700_000_001)  # sane record timestamps
        assert_rejected(s, before, s.mirror.sync_one(), code="metadata_future", file="repodata/repomd.xml",
                        words="revision 9999999999")
        s.upstream.publish(revision="1002", timestamp=1_700_000_002)  # the genuine next one
        result = s.mirror.sync_one()
        assert result.ok and result.snapshot, result.error


# -- 41: one huge text node ----------------------------------------------------------------------

def _primary(description: str = "x", release: str = "1") -> str:
    entries = "".join(
        f'<package type="rpm"><name>p{n}</name><arch>noarch</arch>'
        f'<version epoch="0" ver="1" rel="{release if n == 0 else "1"}"/>'
        f'<checksum type="sha256" pkgid="YES">{"a" * 64}</checksum>'
        f'<description>{description if n == 0 else "d"}</description>'
        f'<size package="10" installed="1" archive="1"/><location href="Packages/p{n}.rpm"/></package>'
        for n in range(2))
    return ('<?xml version="1.0"?>\n<metadata xmlns="http://linux.duke.edu/metadata/common" '
            f'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="2">{entries}</metadata>\n')


def _updateinfo(description: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<updates><update from="x" status="final" '
            'type="security" version="1"><id>TEST-1</id><title>t</title><issued date="2026-01-01 00:00:00"/>'
            f'<description>{description}</description><references/><pkglist/></update></updates>\n')


MEASURE = """
import resource, sys, time
from pathlib import Path
from mirror.errors import MalformedMetadataError
from mirror.formats.rpm import parse_primary
from mirror.formats.updateinfo import parse_updateinfo
path, kind = Path(sys.argv[1]), sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.monotonic()
try:
    n = len((parse_primary if kind == "primary" else parse_updateinfo)(path, what=kind))
    outcome = f"accepted {n}"
except MalformedMetadataError as exc:
    outcome = f"refused: {exc}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{(peak - base) * 1024} {time.monotonic() - start:.3f} {outcome}")
"""


@pytest.mark.parametrize(("variant", "kind", "make", "accepted"), [
    ("description_50MiB", "primary", lambda: _primary(description="x" * (50 * MiB)), False),
    ("entity_refs_50MiB", "primary", lambda: _primary(description="&lt;" * (12 * MiB)), False),
    ("attribute_50MiB", "primary", lambda: _primary(release="1" * (50 * MiB)), False),
    ("updateinfo_description_50MiB", "updateinfo", lambda: _updateinfo("x" * (50 * MiB)), False),
    ("description_3MiB", "primary", lambda: _primary(description="x" * (3 * MiB)), True),
])
def test_case41_huge_text_node_is_refused_before_the_parse_with_bounded_memory(
        tmp_path: Path, variant: str, kind: str, make: object, accepted: bool) -> None:
    """Measured in a fresh interpreter: peak RSS growth while parsing. Without the pre-scan a
    50 MiB description cost ~100 MiB (createrepo_c holds a text node whole, twice), 100 MiB ~200 MiB:
    linear in the node, bounded only by the 2 GiB decompressed-size cap."""
    path = tmp_path / f"{kind}.xml"
    assert callable(make)
    path.write_text(make())
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), kind], cwd=CHECKOUT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    growth, seconds, outcome = done.stdout.strip().split(" ", 2)
    if accepted:
        assert outcome == "accepted 2" if kind == "primary" else outcome.startswith("accepted"), outcome
        assert int(growth) < 32 * MiB, growth
    else:
        assert outcome.startswith("refused") and "without markup" in outcome, outcome
        assert int(growth) < 8 * MiB, growth
    assert float(seconds) < 2, seconds


def test_case41_text_run_limit_is_exact_across_read_chunks(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mirror.errors import MalformedMetadataError
    from mirror.formats import rpm
    from mirror.formats.rpm import check_text_runs

    monkeypatch.setattr(rpm, "_SCAN_CHUNK", 7)  # runs straddle many chunk boundaries
    path = tmp_path / "x.xml"
    for run, limit, ok in ((40, 40, True), (41, 40, False), (40, 5, False), (3, 5, True), (0, 1, True)):
        path.write_bytes(b"<" + b"y" * run + b"<" + b"z" * min(run, limit))  # a run: bytes between `<`s
        if ok:
            check_text_runs(path, what="x.xml", limit=limit)
        else:
            with pytest.raises(MalformedMetadataError, match="without markup"):
                check_text_runs(path, what="x.xml", limit=limit)


def test_case41_huge_description_in_primary_fails_the_sync(tmp_path: Path, archive_key: SigningKey) -> None:
    with rpm_repo(tmp_path, archive_key) as s:
        before = first_snapshot(s)
        s.upstream.add(RpmPackage("hello", "1.1"))
        s.upstream.publish(revision="1001", timestamp=1_700_000_001)
        s.upstream.edit_metadata("primary", lambda x: x.replace("<description>", "<description>"
                                                                + "x" * (6 * MiB), 1))
        assert_rejected(s, before, s.mirror.sync_one(), code="metadata_malformed", file="primary",
                        words="without markup")


# -- 45: hostile strings in advisories: `mirror cve`, /cves, /advisories -----------------------

HOSTILE_ID = "RHSA-2026:\x1b]0;pwn\x07</script>"
HOSTILE_TITLE = 'title \x1b[2J\r\nSet-Cookie: x=1 \u202egnp.exe "><img src=x onerror=alert(1)></script>'
HOSTILE_PACKAGE = "evil\x1b[31m\u202e<script>"
CVE = "CVE-2026-4545"
RAW = ("\x1b", "\x07", "\r", "\u202e", "\x9b")


def seed_hostile_advisory(m: Mirror) -> str:
    """An RPM snapshot in `dev` that carries HOSTILE_PACKAGE 1.0-1 and an advisory with hostile
    id, title, severity and package name fixing CVE in it (straight into the state database: XML
    1.0 cannot even carry ESC or BEL, the store and the outputs must not care)."""
    store = m.store()
    try:
        pool = Pool(m.settings.storage.root)
        files = {"repodata/repomd.xml": b"<repomd/>", "Packages/e.rpm": b"rpm bytes"}
        entries = []
        for path, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            blob = pool.path_for(digest)
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            package = PackageKey(HOSTILE_PACKAGE, "x86_64", "1.0-1") if path.endswith(".rpm") else None
            kind = EntryKind.PACKAGE if package else EntryKind.ROOT
            entries.append(ManifestEntry(path, digest, len(data), kind, package))
        advisory = Advisory(
            id=HOSTILE_ID, type="security", severity="Important\x07", title=HOSTILE_TITLE, issued=utcnow(),
            updated=None, cves=(CVE,), references=(),
            packages=(AdvisoryPackage(HOSTILE_PACKAGE, "0", "1.0", "1", "x86_64"),), description="\x1b[5m")
        root = RootRecord("repomd", hashlib.sha256(b"<repomd/>").hexdigest(), utcnow(), None, revision="1")
        return store.commit_snapshot(NewSnapshot("repo", "upstream", "seed", [root], entries,
                                                 advisories=[advisory]), "dev")
    finally:
        store.close()


@pytest.fixture
def hostile_rpm(tmp_path: Path, archive_key: SigningKey) -> Iterator[tuple[Mirror, str]]:
    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring, kind="rpm")
    yield mirror, seed_hostile_advisory(mirror)


def test_case45_cve_report_table_never_passes_control_characters(hostile_rpm: tuple[Mirror, str]) -> None:
    from mirror.diffs import cve_report, cve_to_table

    mirror, snapshot = hostile_rpm
    store = mirror.store()
    try:
        report = cve_report(store, mirror.settings, CVE)
    finally:
        store.close()
    assert [(t.tier, t.status) for t in report.tiers if t.snapshot] == [("dev", "fixed")]
    table = cve_to_table(report)
    for raw in RAW:
        assert raw not in table
    assert "RHSA-2026:\\x1b]0;pwn\\x07</script>" in table and snapshot in table


def test_case45_mirror_cve_table_never_passes_control_characters(hostile_rpm: tuple[Mirror, str]) -> None:
    mirror, _snapshot = hostile_rpm
    out = mirror.cli("cve", CVE)
    assert out.returncode == 0, out.stderr
    for raw in RAW:
        assert raw not in out.stdout, out.stdout


def test_case45_mirror_cve_json_is_valid_and_escaped(hostile_rpm: tuple[Mirror, str]) -> None:
    mirror, snapshot = hostile_rpm
    out = mirror.cli("cve", CVE, "--json")
    assert out.returncode == 0, out.stderr
    assert all(0x20 <= ord(c) < 0x7f or c == "\n" for c in out.stdout), out.stdout
    doc = json.loads(out.stdout)
    (dev,) = [t for t in doc["tiers"] if t["tier"] == "dev"]
    assert dev["snapshot"] == snapshot and dev["advisories"] == [HOSTILE_ID]  # exact round trip
    assert dev["packages"][0]["name"] == HOSTILE_PACKAGE


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_case45_cves_and_advisories_api_is_valid_ascii_json(hostile_rpm: tuple[Mirror, str]) -> None:
    from mirror.diffs import clear_cache
    from mirror.web.api import make_api_app

    mirror, _snapshot = hostile_rpm
    store = mirror.store()
    clear_cache()
    try:
        with app_in_thread(make_api_app(mirror.settings, store)) as url:
            for path in (f"/api/v1/cves/{CVE}", "/api/v1/repos/repo/advisories?in=dev"):
                reply = http("GET", url + path)
                assert reply.status == 200, reply.body
                assert reply.headers["content-type"].startswith("application/json")
                assert all(0x20 <= b < 0x7f for b in reply.body), reply.body  # \u escapes only
                doc = reply.json()
                strings = list(_strings(doc))  # round trip, nothing lost
                assert HOSTILE_ID in strings and any(HOSTILE_PACKAGE in s for s in strings), doc
                if "advisories" in path:
                    (advisory,) = doc["advisories"]
                    assert advisory["title"] == HOSTILE_TITLE and advisory["id"] == HOSTILE_ID
                    assert advisory["severity"] == "Important\x07"
                for name, value in reply.headers.items():  # no upstream string became a header
                    assert "pwn" not in value and "x=1" not in value, (name, value)
    finally:
        store.close()
        clear_cache()


def test_case45_control_characters_in_an_error_path_are_repr_escaped_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hostile upstream path in an error: the message quotes it with repr() where the raiser
    does (paths: `mirror.repopath.contained`), and the sync's ERROR log line carries the message as
    is. Documented: log lines escape control characters only through repr() of the value."""
    from mirror.errors import UnsafePathError
    from mirror.repopath import contained

    hostile = "pool/\x1b]0;pwn\x07/../../x\r\n.deb"
    with pytest.raises(UnsafePathError) as caught:
        contained(hostile, what="dists/stable/main/binary-amd64/Packages")
    message = str(caught.value)
    for raw in ("\x1b", "\x07", "\r", "\n"):
        assert raw not in message, message
    assert repr(hostile)[1:-1][:20] in message or "\\x1b" in message, message


# -- 76: mismatch messages, a refused promotion, staleness gauges ---------------------------------

async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(("variant", "body", "code", "words"), [
    ("sha256", b"B" * 10, "checksum_mismatch",
     [f"expected {hashlib.sha256(b'A' * 10).hexdigest()}",
      f"received {hashlib.sha256(b'B' * 10).hexdigest()}"]),
    ("short", b"A" * 9, "size_mismatch", ["expected 10 bytes", "received 9"]),
    ("long", b"A" * 11, "size_mismatch", ["expected 10 bytes", "received at least 11"]),
])
def test_case76_pool_mismatch_messages_say_expected_received_and_where_from(
        tmp_path: Path, variant: str, body: bytes, code: str, words: list[str]) -> None:
    import asyncio

    from mirror.errors import MirrorError

    pool = Pool(tmp_path)
    tmp = pool.temp_dir("repo")
    expected = ExpectedFile("dists/stable/main/binary-amd64/Packages.xz", 10,
                            hashlib.sha256(b"A" * 10).hexdigest())
    url = "http://up.example/debian/dists/stable/main/binary-amd64/Packages.xz"
    with pytest.raises(MirrorError) as caught:
        asyncio.run(pool.ingest(_chunks(body), expected, tmp, what=expected.path, url=url))
    message = str(caught.value)
    assert caught.value.code == code and f"(from {url})" in message, message
    for word in words:
        assert word in message, message
    assert list(tmp.iterdir()) == []  # nothing left behind
    with pytest.raises(MirrorError) as caught:
        asyncio.run(pool.ingest(_chunks(body), expected, tmp, what=expected.path,
                                url="http://up.example/x\x1b]0;pwn\x07"))
    assert "\x1b" not in str(caught.value) and "\\x1b" in str(caught.value)
    with pytest.raises(MirrorError) as caught:
        asyncio.run(pool.ingest(_chunks(body), expected, tmp, what=expected.path,
                                url="https://user:secret@up.example:8443/x"))
    assert "(from https://up.example:8443/x)" in str(caught.value) and "secret" not in str(caught.value)


ADMIN_TOKEN = "admin-token-0123456789abcdef"


def _mirror_with_admin_token(tmp_path: Path, archive_key: SigningKey) -> Mirror:
    """A mirror whose API accepts ADMIN_TOKEN (an admin line in its token file)."""
    keyring = archive_key.write_public(tmp_path / "k.asc")
    tokens = tmp_path / "m" / "tokens"
    tokens.parent.mkdir(parents=True)
    tokens.write_text(f"admin:{ADMIN_TOKEN}\n")
    tokens.chmod(0o600)
    return write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring,
                        extra_server=f'token_file = "{tokens}"')


@pytest.mark.parametrize("via", ["api", "cli"])
def test_case76_a_promotion_policy_refusal_is_loud(tmp_path: Path, archive_key: SigningKey, via: str) -> None:
    """Replay of 73 (dev -> prod, skipping test and uat): 422 `policy_refused` naming the tier to
    go through and `force`; the CLI exits 2 with the same message; nothing moves. (The server log
    line for a refused promotion: the test below.)"""
    from tests.helpers import seed_snapshot

    mirror = _mirror_with_admin_token(tmp_path, archive_key)
    store = mirror.store()
    try:
        snap = seed_snapshot(store, Pool(mirror.settings.storage.root), "repo",
                             {"dists/stable/InRelease": b"signed", "pool/hello_1.0_amd64.deb": b"deb"})
    finally:
        store.close()
    if via == "cli":
        out = mirror.cli("promote", "repo", "--to", "prod", "--snapshot", snap)
        assert out.returncode == 2, out
        message = out.stderr
        assert message.startswith("mirror: error:"), message
    else:
        from mirror.web.api import make_api_app

        store = mirror.store()
        try:
            app = make_api_app(mirror.settings, store)
            with app_in_thread(app) as url:
                reply = http("POST", f"{url}/api/v1/repos/repo/promote",
                             body={"to": "prod", "snapshot": snap}, token=ADMIN_TOKEN)
        finally:
            store.close()
        assert reply.status == 422, reply.body
        error = reply.json()["error"]
        assert error["code"] == "policy_refused"
        message = error["message"]
    assert "uat" in message and "force" in message, message
    assert mirror.tier(tier="prod") is None


def test_case76_a_promotion_policy_refusal_is_in_the_server_log(tmp_path: Path, archive_key: SigningKey,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from mirror.web.api import make_api_app
    from tests.helpers import seed_snapshot

    mirror = _mirror_with_admin_token(tmp_path, archive_key)
    store = mirror.store()
    try:
        snap = seed_snapshot(store, Pool(mirror.settings.storage.root), "repo",
                             {"dists/stable/InRelease": b"x"})
        app = make_api_app(mirror.settings, store)
        with caplog.at_level(logging.INFO), app_in_thread(app) as url:
            reply = http("POST", f"{url}/api/v1/repos/repo/promote", body={"to": "prod", "snapshot": snap},
                         token=ADMIN_TOKEN)
    finally:
        store.close()
    assert reply.status == 422
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("policy_refused" in m and "admin" in m and "/repos/repo/promote" in m for m in lines), lines


def test_case76_staleness_gauges_per_tier_are_exported(tmp_path: Path, archive_key: SigningKey) -> None:
    """`mirror_tier_snapshot_age_seconds` (age of the served snapshot) and
    `mirror_tier_valid_until_timestamp_seconds` (upstream Valid-Until), beside the remaining time."""
    from prometheus_client import CollectorRegistry, generate_latest

    from mirror.metrics import StateCollector
    from tests.helpers import seed_snapshot

    keyring = archive_key.write_public(tmp_path / "k.asc")
    mirror = write_config(tmp_path / "m", "http://127.0.0.1:9/", keyring)
    valid_until = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    store = mirror.store()
    try:
        seed_snapshot(store, Pool(mirror.settings.storage.root), "repo", {"dists/stable/InRelease": b"x"},
                      valid_until=valid_until)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StateCollector(store, ["repo"]))
        text = generate_latest(registry).decode()
    finally:
        store.close()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert 0 <= values['mirror_tier_snapshot_age_seconds{repo="repo",tier="dev"}'] < 60, text
    tier = '{repo="repo",tier="dev"}'
    assert values[f"mirror_tier_valid_until_timestamp_seconds{tier}"] == valid_until.timestamp()
    assert 2.9 * 86400 < values[f"mirror_tier_valid_until_remaining_seconds{tier}"] <= 3 * 86400
