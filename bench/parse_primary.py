"""Benchmark: parsing a primary.xml of N packages (default 60,000) with mirror's parser.

Prints the parse time and peak RSS against the targets (<= 2 s, <= 200 MB), and, as a baseline
measured in the same run, createrepo_c's own full parse (every field, files included) of the
same file. Run: .venv/bin/python bench/parse_primary.py [--entries 60000]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = ('<?xml version="1.0" encoding="UTF-8"?>\n<metadata xmlns="http://linux.duke.edu/metadata/common" '
          'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{n}">\n')
PACKAGE = (
    '<package type="rpm"><name>pkg{i}</name><arch>x86_64</arch><version epoch="0" ver="1.{i}" rel="1.el9"/>'
    '<checksum type="sha256" pkgid="YES">{h}</checksum><summary>A package</summary><description>A long '
    'description of package number {i}, which does many useful things for its users.</description>'
    '<packager>Example</packager><url>https://example.org</url><time file="1700000000" build="1700000000"/>'
    '<size package="102400" installed="300000" archive="300500"/>'
    '<location href="Packages/p/pkg{i}-1.{i}-1.el9.x86_64.rpm"/><format><rpm:license>MIT</rpm:license>'
    '<rpm:vendor>Example</rpm:vendor><rpm:group>Unspecified</rpm:group><rpm:buildhost>b</rpm:buildhost>'
    '<rpm:sourcerpm>pkg{i}-1.{i}-1.el9.src.rpm</rpm:sourcerpm><rpm:header-range start="4504" end="12345"/>'
    '<rpm:provides><rpm:entry name="pkg{i}" flags="EQ" epoch="0" ver="1.{i}" rel="1.el9"/>'
    '<rpm:entry name="pkg{i}(x86-64)" flags="EQ" epoch="0" ver="1.{i}" rel="1.el9"/></rpm:provides>'
    '<rpm:requires><rpm:entry name="libc.so.6()(64bit)"/><rpm:entry name="rtld(GNU_HASH)"/>'
    '<rpm:entry name="libfoo.so.1()(64bit)"/></rpm:requires><file>/usr/bin/pkg{i}</file></format></package>\n'
)

CHILD = """
import resource, sys, time
from pathlib import Path
from mirror.formats.rpm import parse_primary
t = time.perf_counter()
n = len(parse_primary(Path(sys.argv[1]), what="primary.xml"))
print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""

BASELINE = """
import resource, sys, time
import createrepo_c as cr
pkgs = []
t = time.perf_counter()
cr.xml_parse_primary(sys.argv[1], pkgcb=lambda p: pkgs.append(p) or True, do_files=True)
print(len(pkgs), time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=60_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "primary.xml"
        with path.open("w") as f:
            f.write(HEADER.format(n=args.entries))
            for i in range(args.entries):
                f.write(PACKAGE.format(i=i, h=f"{i:064x}"))
            f.write("</metadata>\n")
        size = path.stat().st_size / 1e6
        ours = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                              check=True).stdout.split()
        base = subprocess.run([sys.executable, "-c", BASELINE, str(path)], capture_output=True, text=True,
                              check=True).stdout.split()
    n, seconds, rss = int(ours[0]), float(ours[1]), float(ours[2])
    print(f"primary.xml: {args.entries} packages, {size:.1f} MB")
    verdict_time = "pass" if seconds <= 2 else "FAIL"
    verdict_rss = "pass" if rss <= 200 else "FAIL"
    print(f"mirror parse_primary: {seconds:.2f} s, peak RSS {rss:.0f} MB (process)   "
          f"targets <= 2 s: {verdict_time}, <= 200 MB: {verdict_rss}")
    print(f"baseline createrepo_c full parse (files too, objects kept): {float(base[1]):.2f} s, "
          f"peak RSS {float(base[2]):.0f} MB; ratio ours/baseline {seconds / float(base[1]):.2f}")
    return 0 if n == args.entries else 1


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
