"""https upstreams through mirror.transport: the certificate is checked against the system's trust
store (here a throwaway CA named by SSL_CERT_FILE, as OpenSSL reads it), host name included."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.errors import FetchError
from mirror.fetch import Fetcher, FetchPolicy

BODY = b"signed metadata\n" * 1000


def _certificate(directory: Path, san: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=upstream",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
    return key, cert


class _TlsServer:
    """GET anything -> 200 with BODY, over TLS, on 127.0.0.1 in a thread."""

    def __init__(self, key: Path, cert: Path) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()

        server = self._loop.run_until_complete(
            asyncio.start_server(answer, "127.0.0.1", 0, ssl=self._context))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())

    def __enter__(self) -> _TlsServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    key, cert = _certificate(tmp_path / "server", "IP:127.0.0.1")
    with _TlsServer(key, cert) as server:
        yield f"https://127.0.0.1:{server.port}/debian/dists/stable/InRelease", cert


def _fetch(url: str) -> bytes:
    async def go() -> bytes:
        async with Fetcher(FetchPolicy(retries=0, connect_timeout=5, read_timeout=5)) as fetcher:
            return await fetcher.fetch_bytes(url, cap=1 << 20, what="dists/stable/InRelease")

    return asyncio.run(go())


def test_https_upstream_with_a_trusted_certificate_is_fetched(
        served: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, cert = served
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert _fetch(url) == BODY


def test_https_certificate_from_an_untrusted_issuer_is_refused(
        served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, _cert = served
    _key, other = _certificate(tmp_path / "other", "IP:127.0.0.1")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    with pytest.raises(FetchError, match=r"cannot fetch https://127\.0\.0\.1.*CERTIFICATE_VERIFY_FAILED"):
        _fetch(url)


def test_https_certificate_for_another_host_is_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = _certificate(tmp_path / "server", "DNS:mirror.example.org")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with _TlsServer(key, cert) as server, \
            pytest.raises(FetchError, match=r"CERTIFICATE_VERIFY_FAILED.*(IP address mismatch|match)"):
        _fetch(f"https://127.0.0.1:{server.port}/debian/dists/stable/InRelease")
