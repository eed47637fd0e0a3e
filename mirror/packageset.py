"""A snapshot's packages as a set of text lines: :class:`PackageSet`, and its blob in the store.

Apart from :mod:`mirror.diff` (which compares two of them), so that a sync's commit, which stores
one per snapshot, loads only this and zstandard.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Set
from itertools import compress
from operator import itemgetter

import zstandard

from mirror.model import PackageKey

__all__ = ["PackageSet", "Row", "line_row", "row_line"]

#: (name, arch, version): what the store's package rows are.
Row = tuple[str, str, str]

# A snapshot's packages are handled as text lines "name<TAB>arch<TAB>version": a str caches its
# hash and compares with one memcmp, so set operations on lines run several times faster than on
# (name, arch, version) tuples (a tuple's hash is recomputed at every lookup, and equal tuples
# from two queries compare field by field). A tab, newline or backslash inside a field is
# escaped (valid package metadata has none). Sorted, a name's lines are contiguous ("foo<TAB>"
# sorts before "foo-bar<TAB>" and "foo2<TAB>"), so bisection finds them.

_FIRST = itemgetter(0)
_BLOB_FORMAT = b"\x01"  # PackageSet.to_blob: this byte, then a zstd frame of the text


def _escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    out: list[str] = []
    chars = iter(field)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            out.append({"t": "\t", "n": "\n"}.get(nxt, nxt))
        else:
            out.append(c)
    return "".join(out)


def row_line(row: Row) -> str:
    """``name<TAB>arch<TAB>version``, fields escaped when they hold a tab, newline or backslash."""
    line = "\t".join(row)
    if line.count("\t") != 2 or "\n" in line or "\\" in line:
        if len(row) != 3:
            raise ValueError(f"a package row is (name, arch, version), not {row!r}")
        return "\t".join(map(_escape, row))
    return line


def line_row(line: str) -> Row:
    name, arch, version = line.split("\t")
    if "\\" in line:
        return _unescape(name), _unescape(arch), _unescape(version)
    return name, arch, version


class PackageSet:
    """A snapshot's packages: an immutable set of ``(name, arch, version)`` rows, held as lines.

    Build one from rows (``PackageSet(rows)``, :meth:`from_keys`) or from the blob a store keeps
    per snapshot (:meth:`to_blob` at sync time, :meth:`from_blob` to read it: one blob is many
    times cheaper to read than 60,000 rows out of SQLite). Snapshots never change, so a server
    can also keep PackageSets in memory. A diff of two PackageSets costs two set subtractions on
    strings (C-level) plus work that follows the size of the change, because each knows its
    *multi* names (the names with more than one line: several versions or arches): a blob
    carries them, a PackageSet made from rows counts them (in C) the first time a diff needs
    them, and keeps them."""

    __slots__ = ("_lines", "_multi", "_multi_lines", "_names", "_set", "_sorted")

    def __init__(self, rows: Iterable[Row] = ()) -> None:
        rows = rows if isinstance(rows, (list, tuple)) else list(rows)
        lines = list(map("\t".join, rows))  # C-level, checked in bulk
        text = "\n".join(lines)
        if (set(map(len, rows)) - {3} or text.count("\t") != 2 * len(lines)
                or text.count("\n") != max(len(lines) - 1, 0) or "\\" in text):
            lines = list(map(row_line, rows))  # some field needs escaping, or a row is not 3 fields
        self._set: frozenset[str] = frozenset(lines)
        #: the lines as given, and their names (made from rows: dropped once sorted)
        self._lines: list[str] | None = lines
        self._names: list[str] | None = list(map(_FIRST, rows))
        self._sorted: list[str] | None = None  # every line, sorted (from a blob, or for to_blob)
        self._multi: frozenset[str] | None = None  # names with more than one line
        self._multi_lines: dict[str, list[str]] | None = None  # their lines, when not sorted

    @classmethod
    def from_keys(cls, keys: Iterable[PackageKey]) -> PackageSet:
        return cls([(k.name, k.arch, k.version) for k in keys])

    def to_blob(self) -> bytes:
        """Format byte, then zstd of: the count of multi names, those names, the sorted lines;
        one per line (about 9 bytes a package; zstd decompresses 3-4 times faster than zlib)."""
        multi = sorted(_escape(n) for n in self.multi_names())
        text = "\n".join([str(len(multi)), *multi, *self._sorted_lines()])
        return _BLOB_FORMAT + zstandard.ZstdCompressor(level=10).compress(text.encode())

    @classmethod
    def from_blob(cls, blob: bytes) -> PackageSet:
        """The PackageSet :meth:`to_blob` wrote (ValueError if ``blob`` is not one)."""
        if blob[:1] != _BLOB_FORMAT:
            raise ValueError("not a PackageSet blob (unknown format)")
        try:
            parts = zstandard.ZstdDecompressor().decompress(blob[1:]).decode().split("\n")
            count = int(parts[0])
        except (zstandard.ZstdError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"corrupt PackageSet blob: {exc}") from None
        if not 0 <= count < len(parts):
            raise ValueError("corrupt PackageSet blob: bad count of names")
        ps = cls.__new__(cls)
        lines = parts[1 + count:]
        ps._set = frozenset(lines)
        ps._lines = ps._names = None
        ps._sorted = lines
        ps._multi = frozenset(map(_unescape, parts[1:1 + count]))
        ps._multi_lines = None
        return ps

    def _sorted_lines(self) -> list[str]:
        lines = self._sorted
        if lines is None:
            lines = self._sorted = sorted(self._set)  # a benign race: two threads may both sort
        return lines

    def multi_names(self) -> frozenset[str]:
        """The names with more than one line (several versions, or several arches)."""
        multi = self._multi
        if multi is None:
            if self._lines is not None and self._names is not None:
                lines, names = self._lines, self._names
            else:
                lines = self._sorted_lines()
                names = [_unescape(line.partition("\t")[0]) for line in lines]
            # Counted in C; Python only sees the names that repeat, and their lines.
            repeated = {n for n, c in Counter(names).items() if c > 1}
            grouped: dict[str, dict[str, None]] = {}
            for name, line in compress(zip(names, lines, strict=True), map(repeated.__contains__, names)):
                grouped.setdefault(name, {})[line] = None  # a row given twice counts once
            self._multi_lines = {n: list(ls) for n, ls in grouped.items() if len(ls) > 1}
            multi = self._multi = frozenset(self._multi_lines)
        return multi

    def _lines_named(self, names: Set[str]) -> Iterable[str]:
        """Every line of these names: bisection in the sorted lines, else one scan that runs in C
        (itertools.compress over the names of the lines as given)."""
        if self._sorted is None and self._lines is not None and self._names is not None:
            return compress(self._lines, map(names.__contains__, self._names))
        return [line for name in names for line in self._named_lines(name)]

    def _lines_of_multi(self, name: str) -> list[str]:
        """The lines of a name in multi_names()."""
        if self._multi_lines is not None:
            return self._multi_lines.get(name, [])
        return self._named_lines(name)

    def _named_lines(self, name: str) -> list[str]:
        lines = self._sorted_lines()
        prefix = _escape(name) + "\t"
        i = j = bisect_left(lines, prefix)
        n = len(lines)
        while j < n and lines[j].startswith(prefix):
            j += 1
        return lines[i:j]

    def named(self, name: str) -> list[Row]:
        """Every row of package ``name`` (all arches and versions)."""
        return [line_row(line) for line in self._lines_named({name})]

    def __len__(self) -> int:
        return len(self._set)

    def __iter__(self) -> Iterator[Row]:
        return map(line_row, self._set)

    def __contains__(self, row: object) -> bool:
        return isinstance(row, tuple) and len(row) == 3 and row_line(row) in self._set

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackageSet) and self._set == other._set

    def __hash__(self) -> int:
        return hash(self._set)
