"""The embedded SeaweedFS's gRPC ports (master, volume, filer, S3) answer only the holder of the client certificate
generated for its data directory: a plaintext gRPC client, a TLS client without a certificate and one with a
certificate from another CA are refused, and the weed processes keep serving S3. Real `weed` process; every socket
operation is bounded."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from livo.store import GRPC_CLIENT_NAME, GRPC_SERVERS, GRPC_TLS_DIR, EmbeddedSeaweedFS

pytestmark = pytest.mark.store

# One read-only call per server (the S3 gateway's own service has none: a health check; an unknown method would
# still get a gRPC answer, which is all the probe looks for).
HARMLESS_CALLS = {
    "master": "/master_pb.Seaweed/GetMasterConfiguration",
    "volume": "/volume_server_pb.VolumeServer/VolumeServerStatus",
    "filer": "/filer_pb.SeaweedFiler/GetFilerConfiguration",
    "s3": "/grpc.health.v1.Health/Check",
}
FRAME_SETTINGS, FRAME_HEADERS, FRAME_DATA, FRAME_GOAWAY = 4, 1, 0, 7


# ------------------------------------------------------------------------------------- a minimal gRPC client
def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK "literal header field without indexing, new name", no Huffman (names and values < 127 bytes)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _unary_call_bytes(path: str, authority: str, scheme: str) -> bytes:
    headers = b"".join(_literal(n, v) for n, v in ((":method", "POST"), (":scheme", scheme), (":path", path),
                                                    (":authority", authority), ("content-type", "application/grpc"),
                                                    ("te", "trailers")))
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(FRAME_SETTINGS, 0, 0, b"")
            + _frame(FRAME_HEADERS, 0x4, 1, headers)           # END_HEADERS
            + _frame(FRAME_DATA, 0x1, 1, b"\x00\x00\x00\x00\x00"))  # an empty message, END_STREAM


def _grpc_answer(connect: Callable[[], socket.socket], path: str, authority: str, scheme: str,
                 timeout_s: float = 5.0) -> str:
    """'answered' when the server sends response headers for our call (whatever its gRPC status: the call got
    through to a gRPC handler); otherwise how the attempt ended."""
    deadline = time.monotonic() + timeout_s
    try:
        sock = connect()
    except (ssl.SSLError, OSError) as exc:
        return f"refused at connect: {exc!r}"
    buffer = b""
    try:
        sock.sendall(_unary_call_bytes(path, authority, scheme))
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return f"closed after {len(buffer)} bytes: {buffer[:40]!r}"
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                kind, stream = buffer[3], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                if len(buffer) < 9 + length:
                    break
                if kind == FRAME_HEADERS and stream == 1:
                    return "answered"
                if kind == FRAME_GOAWAY:
                    return f"GOAWAY {buffer[9:9 + length]!r}"
                buffer = buffer[9 + length:]
        return f"no answer within {timeout_s:.0f} s"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc!r}"
    finally:
        sock.close()


def _tls_context(ca: Path, cert_and_key: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)  # the client checks the server too: a failure here must not pass as "refused"
    context.set_alpn_protocols(["h2"])
    if cert_and_key:
        context.load_cert_chain(*cert_and_key)
    return context


def _other_ca_client(directory: Path) -> tuple[Path, Path]:
    """A client certificate with the accepted common name, signed by a CA the server does not know."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else's CA")])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GRPC_CLIENT_NAME)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "other.crt", directory / "other.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# ----------------------------------------------------------------------------------------------------- the test
@pytest.mark.slow
def test_grpc_ports_require_the_generated_client_certificate(tmp_path: Path) -> None:
    with EmbeddedSeaweedFS(tmp_path / "store", bucket="grpc", stop_grace_s=2.0) as server:
        store = server.store()
        store.put_bytes("kept.bin", b"before the probes")
        tls = server.data_dir / GRPC_TLS_DIR
        ca = tls / "ca.crt"
        for name in (*GRPC_SERVERS, "client"):
            assert oct((tls / f"{name}.key").stat().st_mode & 0o777) == "0o600", name
        assert oct(tls.stat().st_mode & 0o777) == "0o700"
        assert not list(tls.glob("ca.key")) and len(list(tls.glob("*.key"))) == len(GRPC_SERVERS) + 1

        clients = {
            "no certificate": None,
            "another CA's certificate": _other_ca_client(tmp_path / "other"),
            "the master's server certificate": (tls / "master.crt", tls / "master.key"),  # wrong name and usage
        }
        checked = []
        for name in GRPC_SERVERS:
            port = server.ports[f"{name}.grpc"]
            authority = f"127.0.0.1:{port}"
            # weed 4.48 also serves each gRPC server on a Unix socket in /tmp: the same checks apply there
            unix_path = Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
            transports: dict[str, Callable[[], socket.socket]] = {
                "tcp": lambda port=port: socket.create_connection(("127.0.0.1", port), timeout=5)}
            if unix_path.exists():
                def unix(path: str = str(unix_path)) -> socket.socket:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(5)
                    sock.connect(path)
                    return sock
                transports["unix"] = unix
            for transport, connect in transports.items():
                where = f"{name} gRPC ({transport}, port {port})"
                outcome = _grpc_answer(connect, HARMLESS_CALLS[name], authority, "http")
                assert outcome != "answered", f"{where} answered a plaintext gRPC call"
                for label, cert_and_key in clients.items():
                    context = _tls_context(ca, cert_and_key)

                    def tls_connect(connect=connect, context=context) -> socket.socket:
                        return context.wrap_socket(connect(), server_hostname="localhost")

                    outcome = _grpc_answer(tls_connect, HARMLESS_CALLS[name], authority, "https")
                    assert outcome != "answered", f"{where} answered a TLS call with {label}"
                    assert "CERTIFICATE_VERIFY_FAILED" not in outcome, f"{where}: the probe did not trust the server"
                # the probe itself works: the generated client certificate gets an answer
                context = _tls_context(ca, (tls / "client.crt", tls / "client.key"))
                outcome = _grpc_answer(lambda connect=connect, context=context: context.wrap_socket(
                    connect(), server_hostname="localhost"), HARMLESS_CALLS[name], authority, "https")
                assert outcome == "answered", f"{where} did not answer the holder of the client certificate: {outcome}"
                checked.append(where)
        assert len(checked) >= len(GRPC_SERVERS), checked

        # the weed processes still talk to each other: S3 reads the old object and writes and reads a new one
        assert store.get_bytes("kept.bin") == b"before the probes"
        payload = os.urandom(4096)
        store.put_bytes("after/probes.bin", payload)
        assert store.get_bytes("after/probes.bin") == payload


def test_stopping_the_server_removes_its_unix_sockets(tmp_path):
    """weed listens on /tmp/seaweedfs-*-<port>.sock too and leaves the files behind when killed: stop removes them."""
    from livo.store import EmbeddedSeaweedFS

    server = EmbeddedSeaweedFS(tmp_path / "store").start()
    try:
        ports = set(server.ports.values())
        sockets = [p for port in ports for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
        assert sockets, "weed made no unix socket (has its behaviour changed?)"
    finally:
        server.stop()
    assert [p for port in ports for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")] == []
