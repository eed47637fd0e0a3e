"""Benchmark: mirror.formats.deb.parse_packages against python-debian on a realistic index.

    .venv/bin/python bench/parse_packages.py [--entries 60000] [--repeat 3] [--seed 1]

Generates a Packages file shaped like a Debian one (Package, Source, Version, Installed-Size,
Maintainer, Architecture, Depends, Pre-Depends, multi-line Description, Homepage,
Description-md5, Tag, Section, Priority, Filename, Size, MD5sum, SHA256; about 1 KB a paragraph),
then prints our parse time (best of --repeat), python-debian's time on the same bytes
(``Packages.iter_paragraphs(data, use_apt_pkg=False)``, the baseline), the ratio, whether both
gave the same tuples, and the peak RSS. Target: ours <= 1.5 s for 60,000 entries.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import re
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirror.formats.deb import parse_packages

WORDS = (
    "library", "utility", "daemon", "python", "perl", "runtime", "development", "files",
    "documentation", "shared", "support", "module", "plugin", "the", "for", "and", "with", "of",
    "a", "to", "in", "data", "server", "client", "tools", "kernel", "network", "graphics", "font",
    "manager", "interface", "bindings", "extension",
)


def generate(entries: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    paragraphs = []
    for i in range(entries):
        name = f"pkg{i}-{rnd.choice(WORDS)}"
        source = f"src{i // 3}"
        upstream = f"{rnd.randint(1, 40)}.{rnd.randint(0, 99)}.{rnd.randint(0, 9)}"
        version = f"{rnd.randint(0, 3)}:{upstream}-{rnd.randint(1, 9)}+deb12u{rnd.randint(1, 5)}"
        arch = rnd.choice(("amd64", "amd64", "all"))
        depends = ", ".join(
            f"lib{rnd.choice(WORDS)}{rnd.randint(0, 99)} (>= {rnd.randint(1, 9)}.{rnd.randint(0, 20)})"
            for _ in range(rnd.randint(2, 6))
        )
        summary = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 9)))
        body = []
        for _ in range(rnd.randint(3, 7)):
            body.append(" " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 11))))
            if rnd.random() < 0.15:
                body.append(" .")
        digest_md5 = hashlib.md5(name.encode()).hexdigest()
        lines = [
            f"Package: {name}",
            f"Source: {source} ({version})" if rnd.random() < 0.3 else f"Source: {source}",
            f"Version: {version}",
            f"Installed-Size: {rnd.randint(10, 100_000)}",
            f"Maintainer: Debian {rnd.choice(WORDS).title()} Team "
            f"<pkg-{rnd.choice(WORDS)}-maintainers@lists.alioth.debian.org>",
            f"Architecture: {arch}",
            f"Depends: {depends}",
            f"Pre-Depends: libc6 (>= 2.{rnd.randint(10, 36)})",
            f"Description: {summary}",
            *body,
            f"Homepage: https://www.example.org/{name}",
            f"Description-md5: {digest_md5}",
            "Tag: role::program, implemented-in::c, interface::commandline",
            f"Section: {rnd.choice(('libs', 'utils', 'python', 'devel', 'net', 'admin'))}",
            "Priority: optional",
            f"Filename: pool/main/{source[0]}/{source}/{name}_{upstream}_{arch}.deb",
            f"Size: {rnd.randint(1000, 50_000_000)}",
            f"MD5sum: {digest_md5}",
            f"SHA256: {hashlib.sha256(name.encode()).hexdigest()}",
        ]
        paragraphs.append("\n".join(lines) + "\n")
    return "\n".join(paragraphs).encode()


_SOURCE_RE = re.compile(r"(?P<source>[^ ]+)( \((?P<version>.+)\))?")


def baseline(data: bytes) -> list[tuple[object, ...]]:
    from debian.deb822 import Packages

    out: list[tuple[object, ...]] = []
    for p in Packages.iter_paragraphs(data, use_apt_pkg=False):
        source = p.get("Source")
        out.append((
            p["Package"], p["Version"], p["Architecture"], p["Filename"], int(p["Size"]),
            p.get("SHA256"),
            None if source is None else _SOURCE_RE.match(source).group("source"),  # type: ignore[union-attr]
        ))
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true", help="skip python-debian")
    args = parser.parse_args()

    data = generate(args.entries, args.seed)
    lines = data.count(b"\n")
    print(f"entries: {args.entries}, size: {len(data) / 1e6:.1f} MB "
          f"({len(data) / args.entries:.0f} bytes/entry), lines: {lines}")
    rss_before = peak_rss_mib()

    times = []
    ours: list[tuple[object, ...]] = []
    for _ in range(args.repeat):
        gc.collect()
        start = time.perf_counter()
        result = parse_packages(data, what="bench/Packages")
        times.append(time.perf_counter() - start)
        ours = [(p.name, p.version, p.arch, p.filename, p.size, p.sha256, p.source) for p in result]
        del result
    best = min(times)
    print(f"mirror parse_packages: {best:.3f} s (best of {args.repeat}; "
          f"all: {', '.join(f'{t:.3f}' for t in times)})  "
          f"target <= 1.5 s: {'OK' if best <= 1.5 else 'MISSED'}")
    print(f"peak RSS after ours: {peak_rss_mib():.0f} MiB (input generated: {rss_before:.0f} MiB)")
    if args.no_baseline:
        return
    gc.collect()
    start = time.perf_counter()
    theirs = baseline(data)
    base = time.perf_counter() - start
    print(f"python-debian (use_apt_pkg=False): {base:.3f} s")
    print(f"ratio: {base / best:.1f}x faster")
    print(f"identical results: {ours == theirs} ({len(ours)} packages)")
    print(f"peak RSS overall: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
