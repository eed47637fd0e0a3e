"""A filtered RPM snapshot's comps (`group`, `group_gz`) and modules.yaml (`modules`), reduced to
the packages it keeps (mirror.formats.comps, mirror.formats.modulemd, mirror.repodata): unit tests
of both reductions, then end to end through a sync against a real fixture repo, with
createrepo_c and real dnf (only the mirror's key) reading the result."""

from __future__ import annotations

import gzip
import hashlib
import lzma
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.keys import SigningKey
from fixtures.upstream import UpstreamServer
from mirror.errors import MalformedMetadataError
from mirror.formats.comps import COMPS_HEADER, parse_comps, reduce_comps
from mirror.formats.modulemd import nevra, reduce_modules
from tests.helpers import http, serve_both
from tests.test_filters import mirror_key, signing_toml

__all__ = ["mirror_key"]  # the module-scoped fixture, shared with tests.test_filters


# -- comps ---------------------------------------------------------------------------------------

COMPS = COMPS_HEADER + """<comps>
  <group>
    <id>tools</id>
    <name>Tools</name>
    <name xml:lang="de">Werkzeuge</name>
    <description>Tools &amp; more</description>
    <default>true</default>
    <uservisible>true</uservisible>
    <packagelist>
      <packagereq type="mandatory">hello</packagereq>
      <packagereq type="default">tool</packagereq>
      <packagereq type="optional">telnet</packagereq>
    </packagelist>
  </group>
  <group>
    <id>net</id>
    <name>Network</name>
    <packagelist>
      <packagereq type="mandatory">telnet</packagereq>
      <packagereq type="optional">telnetd</packagereq>
    </packagelist>
  </group>
  <group>
    <id>empty</id>
    <name>Empty upstream</name>
    <packagelist>
    </packagelist>
  </group>
  <environment>
    <id>workstation</id>
    <name>Workstation</name>
    <grouplist>
      <groupid>tools</groupid>
      <groupid>net</groupid>
    </grouplist>
    <optionlist>
      <groupid default="true">net</groupid>
      <groupid>empty</groupid>
    </optionlist>
  </environment>
  <category>
    <id>all</id>
    <name>All</name>
    <grouplist>
      <groupid>net</groupid>
      <groupid>tools</groupid>
    </grouplist>
  </category>
  <langpacks>
    <match install="hello-%s" name="hello"/>
  </langpacks>
</comps>
"""


def _groups(data: bytes) -> dict[str, list[str]]:
    root = parse_comps(data, what="comps.xml")
    return {(g.findtext("id") or "").strip(): [(r.text or "").strip() for r in g.iter("packagereq")]
            for g in root.findall("group")}


def _refs(data: bytes, holder: str) -> dict[str, list[str]]:
    root = parse_comps(data, what="comps.xml")
    return {f"{(h.findtext('id') or '').strip()}/{lst.tag}":
            [(g.text or "").strip() for g in lst.iter("groupid")]
            for h in root.findall(holder) for lst in h if lst.tag in ("grouplist", "optionlist")}


UPSTREAM_NAMES = {"hello", "tool", "telnet"}  # what the upstream repo lists: telnetd is a sibling repo's


@pytest.mark.parametrize(("keep", "groups", "environments", "categories"), [
    pytest.param({"hello", "tool", "telnet", "telnetd"}, None, None, None, id="nothing_dropped"),
    pytest.param({"hello", "tool", "telnet"},
                 {"tools": ["hello", "tool", "telnet"], "net": ["telnet"], "empty": []},
                 {"workstation/grouplist": ["tools", "net"], "workstation/optionlist": ["net", "empty"]},
                 {"all/grouplist": ["net", "tools"]}, id="packagereq_dropped"),
    pytest.param({"hello", "tool"},
                 {"tools": ["hello", "tool"], "empty": []},
                 {"workstation/grouplist": ["tools"], "workstation/optionlist": ["empty"]},
                 {"all/grouplist": ["tools"]}, id="emptied_group_dropped_with_its_references"),
    pytest.param(set(), {"empty": []},
                 {"workstation/grouplist": [], "workstation/optionlist": ["empty"]},
                 {"all/grouplist": []}, id="everything_dropped"),
    pytest.param({"hello", "tool", "telnet"}, None, None, None, id="listed:sibling_repo_package_kept"),
    pytest.param({"hello", "tool"},
                 {"tools": ["hello", "tool"], "net": ["telnetd"], "empty": []},
                 {"workstation/grouplist": ["tools", "net"], "workstation/optionlist": ["net", "empty"]},
                 {"all/grouplist": ["net", "tools"]}, id="listed:group_kept_for_a_sibling_repo_package"),
    pytest.param(set(), {"net": ["telnetd"], "empty": []},
                 {"workstation/grouplist": ["net"], "workstation/optionlist": ["net", "empty"]},
                 {"all/grouplist": ["net"]}, id="listed:everything_dropped"),
])
def test_comps_reduction(request: pytest.FixtureRequest, keep: set[str], groups: dict[str, list[str]] | None,
                         environments: dict[str, list[str]] | None,
                         categories: dict[str, list[str]] | None) -> None:
    """Without `listed`, every packagereq not kept goes; with the upstream's names, those naming a
    package the upstream never had (a sibling repo's) stay."""
    listed = UPSTREAM_NAMES if "[listed:" in request.node.name else None
    out = reduce_comps(COMPS.encode(), keep, what="repodata/comps.xml", listed=listed)
    if groups is None:
        assert out is None  # the caller keeps the upstream's bytes
        return
    assert out is not None
    assert out.startswith(COMPS_HEADER.encode())  # a valid comps document, DOCTYPE included
    assert _groups(out) == groups
    assert _refs(out, "environment") == environments
    assert _refs(out, "category") == categories
    text = out.decode()
    # the rest as it was: translations, escaping, langpacks, attributes
    if "tools" in groups:
        assert '<name xml:lang="de">Werkzeuge</name>' in text and "Tools &amp; more" in text
    assert '<match install="hello-%s" name="hello" />' in text
    assert reduce_comps(out, keep, what="again", listed=listed) is None  # a fixed point


@pytest.mark.parametrize(("data", "words"), [
    pytest.param('<?xml version="1.0"?>\n<!DOCTYPE comps [\n <!ENTITY a "b">\n]>\n<comps/>',
                 "declares an XML entity ('a')", id="internal_entity"),
    pytest.param('<?xml version="1.0"?>\n<!DOCTYPE comps [\n <!ENTITY a SYSTEM "file:///etc/passwd">\n]>\n'
                 "<comps><group><id>&a;</id></group></comps>", "declares an XML entity ('a')",
                 id="external_entity"),
    pytest.param('<?xml version="1.0"?>\n<!DOCTYPE comps [\n <!ENTITY % p SYSTEM "http://example.org/x">\n'
                 " %p;\n]>\n<comps/>", "declares an XML entity", id="parameter_entity"),
    pytest.param("<metadata/>", "is not a comps document", id="not_comps"),
    pytest.param("<comps><group></comps>", "is not well-formed XML", id="malformed"),
])
def test_comps_refusals(data: str, words: str) -> None:
    with pytest.raises(MalformedMetadataError, match=r"declares|is not") as info:
        reduce_comps(data.encode(), {"hello"}, what="repodata/x-comps.xml")
    assert words in str(info.value) and "repodata/x-comps.xml" in str(info.value)


# -- modules.yaml --------------------------------------------------------------------------------

def _stream(name: str, stream: str, artifacts: list[str] | None, *, rpm_map: dict[str, str] | None = None,
            ) -> dict[str, Any]:
    data: dict[str, Any] = {"name": name, "stream": stream, "version": 20240102030405, "context": "c0ffee42",
                            "arch": "x86_64", "summary": f"{name} {stream}", "description": "A stream.",
                            "license": {"module": ["MIT"]}}
    if artifacts is not None:
        data["artifacts"] = {"rpms": artifacts}
        if rpm_map is not None:
            data["artifacts"]["rpm-map"] = {"sha256": {digest: {"nevra": n} for digest, n in rpm_map.items()}}
    return {"document": "modulemd", "version": 2, "data": data}


def _defaults(module: str, stream: str) -> dict[str, Any]:
    return {"document": "modulemd-defaults", "version": 1,
            "data": {"module": module, "stream": stream, "profiles": {stream: ["default"]}}}


def _obsoletes(module: str, stream: str) -> dict[str, Any]:
    return {"document": "modulemd-obsoletes", "version": 1,
            "data": {"module": module, "stream": stream, "modified": "2024-01-02T00:00Z", "message": "gone"}}


HELLO = "hello-0:1.1-1.x86_64"
HELLO_OLD = "hello-0:1.0-1.x86_64"
TOOL = "tool-0:2.0-1.x86_64"
TELNET = "telnet-0:1.0-1.x86_64"
TRANSLATIONS = {"document": "modulemd-translations", "version": 1,
                "data": {"module": "net", "stream": "1", "modified": 202401020304, "translations": {}}}
MODULES = [
    _stream("tools", "1", [HELLO, HELLO_OLD, "hello-0:1.1-1.src", TOOL],
            rpm_map={"a" * 64: HELLO, "b" * 64: HELLO_OLD}),
    _stream("tools", "2", [TELNET]),
    _stream("net", "1", [TELNET]),
    _stream("meta", "1", []),  # no artifact upstream: kept as it is
    _stream("bare", "1", None),
    _defaults("tools", "1"), _defaults("net", "1"), _obsoletes("net", "1"), _obsoletes("tools", "2"),
    TRANSLATIONS,
]
BASH = "bash-0:5.1-1.x86_64"  # a sibling repo's package
UPSTREAM_NEVRAS = [HELLO, HELLO_OLD, TOOL, TELNET]  # what the upstream repo lists (binary only)
LISTED_MODULES = [
    _stream("tools", "1", [HELLO, HELLO_OLD, "hello-0:1.1-1.src", TOOL]),
    _stream("net", "1", [TELNET, "telnet-0:1.0-1.src"]),  # only its source left: dropped
    _stream("shell", "1", [TELNET, BASH]),  # a sibling repo's package left: kept
    _defaults("net", "1"), _defaults("shell", "1"),
]


def _write_modules(tmp_path: Path, docs: list[Any]) -> Path:
    path = tmp_path / "modules.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True, explicit_end=True))
    return path


def _summary(docs: list[Any]) -> list[tuple[str, str, list[str] | None]]:
    out = []
    for doc in docs:
        data = doc["data"]
        if doc["document"] == "modulemd":
            out.append(("modulemd", f"{data['name']}:{data['stream']}",
                        data["artifacts"]["rpms"] if "artifacts" in data else None))
        else:
            out.append((doc["document"], f"{data['module']}:{data['stream']}", None))
    return out


@pytest.mark.parametrize(("keep", "expected"), [
    pytest.param([HELLO, HELLO_OLD, TOOL, TELNET, "hello-0:1.1-1.src"], None, id="nothing_dropped"),
    pytest.param([HELLO, TOOL, TELNET], [
        ("modulemd", "tools:1", [HELLO, TOOL]), ("modulemd", "tools:2", [TELNET]),
        ("modulemd", "net:1", [TELNET]), ("modulemd", "meta:1", []), ("modulemd", "bare:1", None),
        ("modulemd-defaults", "tools:1", None), ("modulemd-defaults", "net:1", None),
        ("modulemd-obsoletes", "net:1", None), ("modulemd-obsoletes", "tools:2", None),
        ("modulemd-translations", "net:1", None)], id="artifacts_reduced"),
    pytest.param([HELLO, TOOL], [
        ("modulemd", "tools:1", [HELLO, TOOL]), ("modulemd", "meta:1", []), ("modulemd", "bare:1", None),
        ("modulemd-defaults", "tools:1", None), ("modulemd-obsoletes", "tools:2", None),
        ("modulemd-translations", "net:1", None)], id="emptied_streams_dropped_with_their_defaults"),
    pytest.param(["hello-1.1-1.x86_64"], [  # epoch 0 left out: the same package
        ("modulemd", "tools:1", [HELLO]), ("modulemd", "meta:1", []), ("modulemd", "bare:1", None),
        ("modulemd-defaults", "tools:1", None), ("modulemd-obsoletes", "tools:2", None),
        ("modulemd-translations", "net:1", None)], id="epoch_spelled_either_way"),
])
def test_modules_reduction(tmp_path: Path, keep: list[str],
                           expected: list[tuple[str, str, list[str] | None]] | None) -> None:
    path = _write_modules(tmp_path, MODULES)
    out = reduce_modules(path, keep, what="repodata/modules.yaml.gz")
    if expected is None:
        assert out is None
        return
    assert out is not None
    text = out.decode()
    assert text.startswith("---\n") and text.rstrip().endswith("...")
    docs = list(yaml.safe_load_all(text))
    assert _summary(docs) == expected
    tools = next(d for d in docs if d["document"] == "modulemd" and d["data"]["name"] == "tools")
    kept_map = [v["nevra"] for v in tools["data"]["artifacts"]["rpm-map"]["sha256"].values()]
    assert kept_map == [HELLO]
    assert tools["data"]["stream"] == "1" and tools["data"]["version"] == 20240102030405  # types as they were
    assert next(d for d in docs if d["document"] == "modulemd-translations") == TRANSLATIONS
    (tmp_path / "again.yaml").write_bytes(out)
    assert reduce_modules(tmp_path / "again.yaml", keep, what="again") is None  # a fixed point


@pytest.mark.parametrize(("keep", "expected"), [
    pytest.param(UPSTREAM_NEVRAS, None, id="nothing_dropped"),
    pytest.param([HELLO, TOOL], [
        ("modulemd", "tools:1", [HELLO, "hello-0:1.1-1.src", TOOL]), ("modulemd", "shell:1", [BASH]),
        ("modulemd-defaults", "shell:1", None)], id="sources_and_sibling_packages_stay"),
])
def test_modules_reduction_with_the_upstream_listing(
        tmp_path: Path, keep: list[str], expected: list[tuple[str, str, list[str] | None]] | None) -> None:
    """With the upstream's NEVRAs, artifacts naming a package the upstream never had (a source RPM,
    a sibling repo's package) stay; a stream left with only source RPMs is dropped."""
    path = _write_modules(tmp_path, LISTED_MODULES)
    out = reduce_modules(path, keep, what="m", listed=UPSTREAM_NEVRAS)
    if expected is None:
        assert out is None
        return
    assert out is not None
    assert _summary(list(yaml.safe_load_all(out))) == expected


def test_modules_with_no_document_left_is_empty(tmp_path: Path) -> None:
    path = _write_modules(tmp_path, [_stream("net", "1", [TELNET]), _defaults("net", "1")])
    assert reduce_modules(path, [HELLO], what="m") == b""  # the caller leaves the record out


def test_nevra() -> None:
    assert nevra("hello", "0", "1.1", "1", "x86_64") == HELLO
    assert nevra("hello", "", "1.1", "1", "x86_64") == HELLO
    assert nevra("libfoo", "2", "1", "3.el9", "noarch") == "libfoo-2:1-3.el9.noarch"


@pytest.mark.parametrize(("text", "words"), [
    pytest.param("---\ndocument: modulemd\ndata: &d {name: x}\n...\n---\ndocument: x\ndata: *d\n...\n",
                 "uses a YAML anchor or alias (line 3)", id="alias"),
    pytest.param("---\ndocument: modulemd\ndata:\n  name: &n x\n...\n", "uses a YAML anchor or alias",
                 id="anchor_only"),
    pytest.param("---\ndocument: modulemd\ndata: {name: [x}\n", "is not valid YAML", id="malformed"),
    pytest.param("---\n!!python/object:os.system {}\n", "is not valid YAML", id="python_tag"),
])
def test_modules_refusals(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "modules.yaml"
    path.write_text(text)
    with pytest.raises(MalformedMetadataError) as info:
        reduce_modules(path, [HELLO], what="repodata/x-modules.yaml.xz")
    assert words in str(info.value) and "repodata/x-modules.yaml.xz" in str(info.value)


# -- end to end ----------------------------------------------------------------------------------

#: COMPS and a group of telnet only (dropped with the filter's telnet), named by the environment.
UPSTREAM_COMPS = COMPS.replace("  <environment>", """  <group>
    <id>remote</id>
    <name>Remote</name>
    <packagelist>
      <packagereq type="mandatory">telnet</packagereq>
    </packagelist>
  </group>
  <environment>""").replace("<groupid>net</groupid>\n    </grouplist>",
                            "<groupid>net</groupid>\n      <groupid>remote</groupid>\n    </grouplist>", 1)
UPSTREAM_MODULES = [
    _stream("tools", "1", [HELLO, HELLO_OLD, "hello-0:1.1-1.src", TOOL]),
    _stream("net", "1", [TELNET]),
    _defaults("tools", "1"), _defaults("net", "1"),
]


def _decompress(data: bytes, href: str) -> bytes:
    if href.endswith(".gz"):
        return gzip.decompress(data)
    if href.endswith(".xz"):
        return lzma.decompress(data)
    if href.endswith(".zst"):
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return data


@pytest.mark.parametrize("compression", ["gz", "xz", "zst"])
def test_filtered_rpm_snapshot_reduces_comps_and_modules(tmp_path: Path, archive_key: SigningKey,
                                                         mirror_key: SigningKey, compression: str) -> None:
    import createrepo_c as cr

    from fixtures.dnf_client import DnfClient
    from fixtures.dnf_client import describe as dnf_describe
    from fixtures.rpm_repo import RpmPackage, RpmRepo, export_key
    from tests.test_sync_rpm import write_rpm_config

    upstream = RpmRepo(tmp_path / "upstream", archive_key)
    upstream.add(RpmPackage("hello", "1.0"), RpmPackage("hello", "1.1"), RpmPackage("telnet", "1.0"),
                 RpmPackage("tool", "2.0", requires=["hello >= 1.1"]))
    modules_text = yaml.safe_dump_all(UPSTREAM_MODULES, sort_keys=False, explicit_start=True,
                                      explicit_end=True)
    upstream.publish(revision="1001", timestamp=1_700_001_001, compression=compression,
                     comps_xml=UPSTREAM_COMPS,
                     modules_yaml=modules_text)
    upstream_records = upstream.records()
    keyring = archive_key.write_public(tmp_path / "keys" / "archive.asc")
    with UpstreamServer(upstream.root) as server:
        mirror = write_rpm_config(tmp_path / "mirror", server.url, keyring, name="rpm",
                                  extra_repo='exclude = ["/^telnet/"]\nkeep_newest = 1')
        mirror.config.write_text(signing_toml(mirror_key) + mirror.config.read_text())
        (result,) = mirror.sync("rpm")
        assert result.ok and result.snapshot, result.error
        assert server.count(upstream.url_path_of("telnet")) == 0

    tree = mirror.served_tree("rpm")
    local = tmp_path / "served"
    for path, data in tree.items():
        (local / path).parent.mkdir(parents=True, exist_ok=True)
        (local / path).write_bytes(data)
    repomd = cr.Repomd(str(local / "repodata" / "repomd.xml"))
    records = {r.type: r for r in repomd.records}
    assert {"group", "group_gz", "modules"} <= set(records)
    for rec in repomd.records:  # every record as repomd.xml describes it, open-checksums included
        data = tree[rec.location_href]
        assert rec.checksum_type == "sha256"
        assert hashlib.sha256(data).hexdigest() == rec.checksum and len(data) == rec.size, rec.type
        if rec.checksum_open:
            plain = _decompress(data, rec.location_href)
            assert hashlib.sha256(plain).hexdigest() == rec.checksum_open and len(plain) == rec.size_open
    assert _groups(UPSTREAM_COMPS.encode())["remote"] == ["telnet"]
    upstream_env = _refs(UPSTREAM_COMPS.encode(), "environment")
    assert upstream_env["workstation/grouplist"] == ["tools", "net", "remote"]
    # comps: telnet's packagereqs gone, its emptied group with them, also from the environment;
    # telnetd, a package the upstream repo does not have (a sibling repo's), stays
    comps = tree[records["group"].location_href]
    assert gzip.decompress(tree[records["group_gz"].location_href]) == comps
    assert records["group_gz"].location_href.endswith(".gz")
    assert comps.startswith(COMPS_HEADER.encode())
    assert _groups(comps) == {"tools": ["hello", "tool"], "net": ["telnetd"], "empty": []}
    assert _refs(comps, "environment") == {"workstation/grouplist": ["tools", "net"],
                                           "workstation/optionlist": ["net", "empty"]}
    # modules: compressed as upstream, only kept NEVRAs (and the source RPM the upstream repo
    # never had), telnet's stream and defaults gone
    href = records["modules"].location_href
    assert href.endswith(f"modules.yaml.{compression}")
    assert href != upstream_records["modules"].href
    docs = list(yaml.safe_load_all(_decompress(tree[href], href)))
    assert _summary(docs) == [("modulemd", "tools:1", [HELLO, "hello-0:1.1-1.src", TOOL]),
                              ("modulemd-defaults", "tools:1", None)]
    # createrepo_c reads the repo (primary, filelists, other through repomd)
    md = cr.Metadata()
    md.locate_and_load_xml(str(local))
    keys = md.keys()  # a Metadata is not iterable
    assert sorted(f"{md.get(k).name}-{md.get(k).version}" for k in keys) == ["hello-1.1", "tool-2.0"]

    if compression != "gz":
        return
    # real dnf, trusting only the mirror's key for the metadata, reads groups and modules
    mirror_asc = export_key(mirror_key, tmp_path / "mirror.asc")
    with serve_both(mirror) as served:
        assert http("GET", f"{served.repo_url}/dev/rpm/repodata/repomd.xml").status == 200
        dnf = DnfClient(tmp_path / "dnf")
        dnf.configure("mirror", f"{served.repo_url}/dev/rpm/", mirror_asc, gpgcheck=False)
        assert (r := dnf.makecache()).returncode == 0, dnf_describe(r)
        groups = dnf.run("group", "list", "--hidden", "-v")
        assert groups.returncode == 0, dnf_describe(groups)
        assert "(tools)" in groups.stdout and "(remote)" not in groups.stdout, groups.stdout
        modules = dnf.run("module", "list")
        assert modules.returncode == 0, dnf_describe(modules)
        assert "tools" in modules.stdout and "net " not in modules.stdout, modules.stdout
        info = dnf.run("group", "info", "tools")
        assert "hello" in info.stdout and "telnet" not in info.stdout, info.stdout
