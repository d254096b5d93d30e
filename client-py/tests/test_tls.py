"""TLS: a broker with a certificate made by the `openssl` command for this test, and a client
connecting with `sluices://...?ca_file=...`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import sluice

from .conftest import Broker


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(dir: Path, name: str) -> None:
    """`name`.pem and `name`.key: a self-signed CA (P-256)."""
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=dir,
    )


def make_server_cert(dir: Path, ca: str) -> None:
    """server.pem and server.key for 127.0.0.1, signed by `ca`."""
    (dir / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=dir,
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=dir,
    )


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path]]:
    """A broker with TLS on, and the directory of its PEM files (ca.pem is its CA)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test certificates")
    root = tmp_path_factory.mktemp("tls")
    make_ca(root, "ca")
    make_ca(root, "other-ca")
    make_server_cert(root, "ca")
    (root / "data").mkdir()
    broker = Broker(root / "data", root).start(
        extra=(
            "--tls-cert", str(root / "server.pem"),
            "--tls-key", str(root / "server.key"),
            "--tls-listen", "127.0.0.1:0",
        )
    )
    assert broker.tls_port, "the broker announced no TLS port"
    yield broker, root
    broker.stop()


def test_sluices_url_with_ca_file_publishes_and_consumes(
    tls_broker: tuple[Broker, Path], queue_name: str
) -> None:
    broker, pems = tls_broker
    url = f"sluices://guest:guest@127.0.0.1:{broker.tls_port}?ca_file={pems / 'ca.pem'}"
    with sluice.Client(url) as client:
        assert repr(client).startswith("<Client url=sluices://")
        client.declare_queue(queue_name)
        client.publish("", queue_name, b"over TLS")
        with client.consume(queue_name) as consumer:
            msg = consumer.receive(timeout=10.0)
            assert msg is not None and msg.body == b"over TLS"
            msg.ack()


async def test_async_client_over_sluices(tls_broker: tuple[Broker, Path], queue_name: str) -> None:
    broker, pems = tls_broker
    url = f"sluices://guest:guest@127.0.0.1:{broker.tls_port}?ca_file={pems / 'ca.pem'}"
    async with sluice.AsyncClient(url) as client:
        await client.declare_queue(queue_name)
        await client.publish("", queue_name, b"async over TLS")
        assert (await client.inspect_queue(queue_name)).ready == 1


def test_a_server_signed_by_an_untrusted_ca_raises_tls_error(
    tls_broker: tuple[Broker, Path],
) -> None:
    broker, pems = tls_broker
    url = f"sluices://127.0.0.1:{broker.tls_port}?ca_file={pems / 'other-ca.pem'}"
    with pytest.raises(sluice.TlsError, match="not trusted"):
        sluice.Client(url)
    assert issubclass(sluice.TlsError, sluice.ConnectionError)
