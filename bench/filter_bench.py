"""Benchmark: filtering a 60,000-package repo down to 5,000 and regenerating its signed metadata.

Two measurements, each in its own child process (wall time of the work, peak RSS of the child):

- **APT**: a verified `Packages` of N paragraphs (realistic fields and descriptions) -> the kept
  paragraphs (`include` = a regex keeping K names, `keep_newest = 1`), Packages plain/gz/xz, a new
  Release, InRelease and Release.gpg signed with a throwaway key (`mirror.regenerate`).
- **RPM**: a verified primary/filelists/other (gz) of N packages plus an updateinfo of N/10
  advisories -> parse primary, filter, write primary/filelists/other with createrepo_c for the K
  kept packages, updateinfo reduced, repomd.xml, and its detached signature (`mirror.repodata`).

Targets: <= 10 s and peak RSS <= 300 MB each. The input is generated once under
`<workdir>/filter/` (not timed). Run: .venv/bin/python bench/filter_bench.py [--packages 60000]
[--keep 5000] [--workdir bench/out]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIME_TARGET = 10.0
RSS_TARGET = 300.0

PARAGRAPH = (
    "Package: pkg{i:05d}\nSource: src{src:05d}\nVersion: 1.{i}-1\nInstalled-Size: 1234\n"
    "Maintainer: Example Maintainers <maint@example.org>\nArchitecture: amd64\n"
    "Depends: libc6 (>= 2.36), libfoo1 (>= 1.2), zlib1g (>= 1:1.2.0)\n"
    "Description: package number {i} of the benchmark\n"
    " A longer description of package number {i}, which does many useful things for its users,\n"
    " wrapped over a few lines like real descriptions are.\n .\n It has a second paragraph too.\n"
    "Homepage: https://example.org/pkg{i:05d}\nDescription-md5: {md5}\nSection: misc\nPriority: optional\n"
    "Filename: pool/main/p/pkg{i:05d}/pkg{i:05d}_1.{i}-1_amd64.deb\nSize: {size}\n"
    "MD5sum: {md5}\nSHA256: {sha}\n"
)

PRIMARY_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<metadata xmlns="http://linux.duke.edu/metadata/common" '
                'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{n}">\n')
PRIMARY = (
    '<package type="rpm"><name>pkg{i:05d}</name><arch>x86_64</arch>'
    '<version epoch="0" ver="1.{i}" rel="1.el9"/>'
    '<checksum type="sha256" pkgid="YES">{h}</checksum><summary>A package</summary><description>A long '
    'description of package number {i}, which does many useful things for its users.</description>'
    '<packager>Example</packager><url>https://example.org</url><time file="1700000000" build="1700000000"/>'
    '<size package="102400" installed="300000" archive="300500"/>'
    '<location href="Packages/p/pkg{i:05d}-1.{i}-1.el9.x86_64.rpm"/><format><rpm:license>MIT</rpm:license>'
    '<rpm:vendor>Example</rpm:vendor><rpm:group>Unspecified</rpm:group><rpm:buildhost>b</rpm:buildhost>'
    '<rpm:sourcerpm>pkg{i:05d}-1.{i}-1.el9.src.rpm</rpm:sourcerpm>'
    '<rpm:header-range start="4504" end="12345"/>'
    '<rpm:provides><rpm:entry name="pkg{i:05d}" flags="EQ" epoch="0" ver="1.{i}" rel="1.el9"/>'
    '</rpm:provides><rpm:requires><rpm:entry name="libc.so.6()(64bit)"/></rpm:requires>'
    '<file>/usr/bin/pkg{i:05d}</file></format></package>\n'
)
FILELISTS_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n<filelists xmlns="http://linux.duke.edu/metadata/'
                  'filelists" packages="{n}">\n')
FILELISTS = ('<package pkgid="{h}" name="pkg{i:05d}" arch="x86_64">'
             '<version epoch="0" ver="1.{i}" rel="1.el9"/>'
             '<file>/usr/bin/pkg{i:05d}</file><file>/usr/share/doc/pkg{i:05d}/README</file>'
             '<file type="dir">/usr/share/doc/pkg{i:05d}</file></package>\n')
OTHER_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n'
              '<otherdata xmlns="http://linux.duke.edu/metadata/other" packages="{n}">\n')
OTHER = ('<package pkgid="{h}" name="pkg{i:05d}" arch="x86_64">'
         '<version epoch="0" ver="1.{i}" rel="1.el9"/>'
         '<changelog author="Example &lt;x@example.org&gt; - 1.{i}-1" date="1700000000">- update to 1.{i}'
         '</changelog></package>\n')


def _h(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def build_inputs(root: Path, n: int) -> None:
    import createrepo_c as cr

    marker = root / "done"
    if marker.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    with (root / "Packages").open("w") as f:
        for i in range(n):
            md5 = hashlib.md5(str(i).encode()).hexdigest()
            f.write(PARAGRAPH.format(i=i, src=i // 3, size=1000 + i, md5=md5, sha=_h(i)))
            f.write("\n")
    for name, head, body, tail in (("primary", PRIMARY_HEAD, PRIMARY, "</metadata>\n"),
                                   ("filelists", FILELISTS_HEAD, FILELISTS, "</filelists>\n"),
                                   ("other", OTHER_HEAD, OTHER, "</otherdata>\n")):
        with gzip.open(root / f"{name}.xml.gz", "wt", compresslevel=6) as g:
            g.write(head.format(n=n))
            for i in range(n):
                g.write(body.format(i=i, h=_h(i)))
            g.write(tail)
    info = cr.UpdateInfo()
    for a in range(n // 10):
        rec = cr.UpdateRecord()
        rec.id, rec.type, rec.severity, rec.title = f"BENCH-2026:{a:05d}", "security", "Important", f"u{a}"
        col = cr.UpdateCollection()
        col.shortname = col.name = "bench"
        for i in (a * 10, a * 10 + 1):
            p = cr.UpdateCollectionPackage()
            p.name, p.epoch, p.version, p.release, p.arch = f"pkg{i:05d}", "0", f"1.{i}", "1.el9", "x86_64"
            p.filename = f"pkg{i:05d}-1.{i}-1.el9.x86_64.rpm"
            col.append(p)
        rec.append_collection(col)
        info.append(rec)
    with gzip.open(root / "updateinfo.xml.gz", "wt") as g:
        g.write(info.xml_dump())
    marker.touch()


def child_apt(inputs: Path, keep: int, home: Path, key: str) -> dict[str, float]:
    from datetime import UTC, datetime

    from mirror.filters import PackageFilter
    from mirror.formats.deb import parse_release
    from mirror.regenerate import compressed_variants, filter_packages, release_text
    from mirror.signing import MirrorSigner

    signer = MirrorSigner.load(home, key)
    upstream = parse_release(b"Origin: Bench\nLabel: Bench\nSuite: stable\nCodename: bench\n"
                             b"Architectures: amd64\nComponents: main\nDate: Sat, 27 Nov 2026 10:00:00 UTC\n",
                             what="Release")
    data = (inputs / "Packages").read_bytes()
    start = time.perf_counter()
    flt = PackageFilter("deb", include=tuple(_range_patterns(keep)), keep_newest=1)
    kept, text = filter_packages(flt, data, what="Packages")
    variants = compressed_variants(text)
    files = [(f"main/binary-amd64/Packages{s}", len(d), hashlib.sha256(d).hexdigest())
             for s, d in variants.items()]
    release = release_text(upstream, architectures=["amd64"], components=["main"], files=files,
                           date=datetime.now(UTC))
    signer.clearsign(release)
    signer.detach_sign(release)
    return {"seconds": time.perf_counter() - start, "kept": len(kept)}


def _range_patterns(keep: int) -> list[str]:
    """Name patterns keeping pkg00000 .. pkg{keep-1} (keep a multiple of 1000)."""
    return [f"pkg{k:02d}*" for k in range(keep // 1000)]


def child_rpm(inputs: Path, keep: int, home: Path, key: str, tmp: Path) -> dict[str, float]:
    from mirror.filters import PackageFilter
    from mirror.formats.compression import decompress_to_file
    from mirror.formats.rpm import RepomdRecord, parse_primary
    from mirror.formats.updateinfo import load_updateinfo
    from mirror.repodata import UpstreamRecord, kept_advisories, write_repodata
    from mirror.signing import MirrorSigner

    signer = MirrorSigner.load(home, key)
    start = time.perf_counter()
    plain = tmp / "primary.xml"  # as a sync does: decompressed with a cap, then parsed
    decompress_to_file(inputs / "primary.xml.gz", "gz", plain, cap=1 << 32, what="primary")
    entries = parse_primary(plain, what="primary")
    parsed = time.perf_counter()
    advisories = load_updateinfo(inputs / "updateinfo.xml.gz", "gz", cap=1 << 32, what="updateinfo",
                                 tmp_dir=tmp)
    kept = PackageFilter("rpm", include=tuple(_range_patterns(keep)), keep_newest=1).select(
        entries, lambda e: (e.name, e.arch, e.evr))
    ids = [a.id for a in kept_advisories(advisories, kept)]

    def rec(kind: str) -> UpstreamRecord:
        record = RepomdRecord(kind, f"repodata/{kind}.xml.gz", None, "sha256", "", None, None, None, None,
                              None)
        return UpstreamRecord(record, inputs / f"{kind}.xml.gz")

    records = {k: rec(k) for k in ("primary", "filelists", "other", "updateinfo")}
    out = tmp / "rpm-out"
    files = write_repodata(out, kept=kept, records=records, advisory_ids=ids, revision="1", tmp=tmp)
    signer.detach_sign(files["repodata/repomd.xml"])
    end = time.perf_counter()
    return {"seconds": end - start, "parse_seconds": parsed - start, "kept": len(kept),
            "advisories": len(ids)}


def measure(kind: str, args: argparse.Namespace, home: Path, key: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--packages", str(args.packages),
           "--keep", str(args.keep), "--workdir", str(args.workdir), "--home", str(home), "--key", key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed ({proc.returncode})")
    result: dict[str, float] = json.loads(out)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=60000)
    parser.add_argument("--keep", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--child", choices=("apt", "rpm"))
    parser.add_argument("--home", type=Path)
    parser.add_argument("--key")
    args = parser.parse_args()
    if args.keep % 1000 or not 0 < args.keep <= args.packages:
        parser.error("--keep must be a positive multiple of 1000, at most --packages")
    inputs = args.workdir.resolve() / "filter" / f"{args.packages}"
    if args.child:
        import tempfile

        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            if args.child == "apt":
                result = child_apt(inputs, args.keep, args.home, args.key)
            else:
                result = child_rpm(inputs, args.keep, args.home, args.key, Path(tmp))
        print(json.dumps(result))
        return 0

    from fixtures.keys import make_key

    print(f"generating inputs for {args.packages} packages (cached under {inputs}) ...", flush=True)
    build_inputs(inputs, args.packages)
    home = args.workdir.resolve() / "filter" / "gnupg"
    if not (home / "fingerprint").exists():
        key = make_key(home, "Bench Mirror <bench@example.org>")
        (home / "fingerprint").write_text(key.fingerprint)
    fingerprint = (home / "fingerprint").read_text().strip()
    ok = True
    for kind in ("apt", "rpm"):
        r = measure(kind, args, home, fingerprint)
        good = r["seconds"] <= TIME_TARGET and r["peak_rss_mb"] <= RSS_TARGET
        ok &= good
        extra = f", parse {r['parse_seconds']:.2f} s, {int(r['advisories'])} advisories kept" \
            if kind == "rpm" else ""
        print(f"{kind}: {args.packages} -> {int(r['kept'])} packages in {r['seconds']:.2f} s (target <= "
              f"{TIME_TARGET:.0f} s){extra}; peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(target <= {RSS_TARGET:.0f} MB): {'OK' if good else 'MISSED'}")
    print("all targets met" if ok else "some targets missed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
