"""``fedtrain deploy init``: a deployment's CA, the SuperLink's TLS certificate and one SuperNode key per device.

Everything is made with the ``cryptography`` package (Flower depends on it). The CA and the server certificate
are EC P-384; each device gets an EC P-384 key pair in OpenSSH format, which is what ``flwr supernode register``
reads (Flower refuses ed25519 and non-NIST curves). Private files are mode 600, folders 700, and the folder
carries a ``.gitignore`` of ``*`` so that nothing in it can be committed by accident.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedtrain.deploy.errors import DeployError

__all__ = [
    "CONNECTION_NAME",
    "DeploymentPaths",
    "DevicePaths",
    "format_address",
    "init_deployment",
    "load_manifest",
    "parse_host",
    "renew_superlink_cert",
    "ssh_fingerprint",
]

CONNECTION_NAME = "fedtrain"  # the [superlink.<name>] entry of the operator's Flower config
DEFAULT_PORT = 9400
CA_MIN_DAYS = 3650  # the CA outlives several SuperLink certificates, so `renew` keeps the devices' ca.crt valid
MANIFEST = "deployment.json"
DEVICE_MANIFEST = "device.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # also a valid systemd unit-name part and file name
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CLOCK_SKEW = dt.timedelta(hours=1)  # certificates valid from an hour ago: devices with a slow clock still accept


@dataclass(frozen=True)
class DevicePaths:
    """One device's folder: what is copied onto that device (its key, its public key and the CA certificate)."""

    name: str
    dir: Path
    auth_key: Path
    auth_key_pub: Path
    ca_cert: Path

    @classmethod
    def under(cls, devices_dir: Path, name: str) -> DevicePaths:
        d = devices_dir / name
        return cls(name, d, d / "auth.key", d / "auth.key.pub", d / "ca.crt")


@dataclass(frozen=True)
class DeploymentPaths:
    """The files ``init_deployment`` writes (all paths absolute)."""

    root: Path
    ca_cert: Path
    ca_key: Path
    superlink_cert: Path
    superlink_key: Path
    register_script: Path
    connection_toml: Path
    manifest: Path
    devices: dict[str, DevicePaths] = field(default_factory=dict)

    @classmethod
    def under(cls, root: Path, device_names: Sequence[str] = ()) -> DeploymentPaths:
        root = root.resolve()
        devs = {n: DevicePaths.under(root / "devices", n) for n in device_names}
        return cls(
            root,
            root / "ca.crt",
            root / "ca.key",
            root / "superlink.crt",
            root / "superlink.key",
            root / "register.sh",
            root / "connection.toml",
            root / MANIFEST,
            devs,
        )


# --- input checks ---------------------------------------------------------------------------------------------


def parse_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """``host`` as an IP address, or as a DNS name (lower-cased) when it is not one; bad names raise."""
    text = host.strip()
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    name = text.rstrip(".").lower()
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise DeployError(
            f"--superlink-host {host!r} is neither an IP address nor a DNS name (letters, digits and '-' in "
            "dot-separated labels, no port, no scheme): give the name or address devices use to reach the SuperLink"
        )
    if name.replace(".", "").isdigit():  # 10.0.0 or 300.1.1.1: a mistyped address, not a name
        raise DeployError(f"--superlink-host {host!r} looks like an IP address but is not a valid one")
    return name


def format_address(host: str, port: int) -> str:
    """``HOST:PORT`` with IPv6 addresses in brackets, as Flower's ``--superlink`` and ``address`` take them."""
    parsed = parse_host(host)
    if isinstance(parsed, ipaddress.IPv6Address):
        return f"[{parsed}]:{port}"
    return f"{parsed}:{port}"


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise DeployError(f"--port {port} is outside 1..65535")


def _device_names(devices: int | Sequence[str]) -> list[str]:
    if isinstance(devices, int):
        if devices < 1:
            raise DeployError(f"--devices {devices}: a deployment needs at least one device")
        return [f"device-{i}" for i in range(devices)]
    names = [str(n) for n in devices]
    if not names:
        raise DeployError("no devices: give --devices N or one --device NAME per device")
    for n in names:
        if not _NAME.match(n):
            raise DeployError(
                f"device name {n!r} is not allowed: use 1-63 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit (no '/', no spaces)"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DeployError(f"device names must be unique; repeated: {', '.join(dupes)}")
    return names


# --- files ----------------------------------------------------------------------------------------------------


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is masked by the umask, and exist_ok keeps an old mode


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``path`` with ``mode`` from the first byte (no window in which a key is world-readable)."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, raw)
    finally:
        os.close(fd)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtrain deployment CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=max(days, CA_MIN_DAYS)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """The hosts as SAN entries (IP or DNS, detected), plus localhost and 127.0.0.1, without repeats."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in [*hosts, "localhost", "127.0.0.1"]:
        parsed = parse_host(h)
        key = str(parsed)
        if key in seen:
            continue
        seen.add(key)
        if isinstance(parsed, str):
            out.append(x509.DNSName(parsed))
        else:
            out.append(x509.IPAddress(parsed))
    return out


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str], days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(parse_host(hosts[0])))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def ssh_fingerprint(public_openssh: bytes | str) -> str:
    """``SHA256:...`` of an OpenSSH public key line, as ``ssh-keygen -l`` prints it."""
    text = public_openssh.decode() if isinstance(public_openssh, bytes) else public_openssh
    blob = base64.b64decode(text.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _cert_info(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "expires": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


def _write_device(dev: DevicePaths, ca_pem: bytes, index: int, count: int) -> dict[str, Any]:
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = public + f" fedtrain-{dev.name}\n".encode()
    _mkdir(dev.dir)
    _write(dev.auth_key, private)
    _write(dev.auth_key_pub, public_line)
    _write(dev.ca_cert, ca_pem, 0o644)
    # What `fedtrain deploy supernode DEVICE_DIR` needs on the device without the operator's deployment.json.
    info = {"name": dev.name, "partition-id": index, "num-partitions": count}
    _write(dev.dir / DEVICE_MANIFEST, json.dumps(info, indent=2) + "\n", 0o644)
    return {**info, "auth_key_sha256": ssh_fingerprint(public_line)}


def _register_script(paths: DeploymentPaths) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Registers every device's public key with the SuperLink (it must be running, with --enable-supernode-auth),",
        f"# then lists the nodes. Needs the [superlink.{CONNECTION_NAME}] entry of connection.toml in",
        "# $FLWR_HOME/config.toml (default ~/.flwr/config.toml). Written by `fedtrain deploy init`.",
        "set -euo pipefail",
    ]
    for dev in paths.devices.values():
        lines.append(f"flwr supernode register {shlex.quote(str(dev.auth_key_pub))} {CONNECTION_NAME}")
    lines.append(f"flwr supernode list {CONNECTION_NAME}")
    return "\n".join(lines) + "\n"


def _connection_toml(paths: DeploymentPaths, host: str, port: int) -> str:
    address = format_address(host, port)
    return (
        f"# The operator's Flower connection to this deployment's SuperLink: append to $FLWR_HOME/config.toml\n"
        f"# (default ~/.flwr/config.toml), then `flwr run . {CONNECTION_NAME}` and `flwr supernode list "
        f"{CONNECTION_NAME}`.\n"
        f"[superlink.{CONNECTION_NAME}]\n"
        f"address = {json.dumps(address)}\n"
        f"root-certificates = {json.dumps(str(paths.ca_cert))}\n"
    )


def _check_out_dir(root: Path, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise DeployError(f"{root} exists and is not a folder: choose another OUT_DIR")
    if root.is_dir() and any(root.iterdir()):
        if not force:
            raise DeployError(
                f"{root} is not empty: choose a new OUT_DIR, or pass --force to issue a new CA and new device keys "
                "there (every device must then be re-registered; `fedtrain deploy renew` re-issues only the "
                "SuperLink certificate)"
            )
        if not (root / MANIFEST).is_file():
            raise DeployError(
                f"{root} is not empty and holds no {MANIFEST}: --force replaces only a folder that "
                "`fedtrain deploy init` wrote; choose a new OUT_DIR"
            )


def init_deployment(
    out_dir: str | os.PathLike[str],
    hosts: Sequence[str],
    devices: int | Sequence[str],
    port: int = DEFAULT_PORT,
    days: int = 365,
    force: bool = False,
) -> DeploymentPaths:
    """Write a deployment's credentials, registration script and connection entry into ``out_dir``.

    Parameters
    ----------
    out_dir
        New or empty folder (or, with ``force``, one an earlier ``init`` wrote; its ``state/`` is kept).
    hosts
        Names and IP addresses devices use to reach the SuperLink; the first is the connection's address. All
        go into the certificate's SANs, with ``localhost`` and ``127.0.0.1``.
    devices
        A number of devices (named ``device-0`` ..) or their names.
    port
        The SuperLink's port (Fleet, Control and Runtime APIs share it in Flower 1.42).
    days
        Validity of the SuperLink certificate; the CA gets at least ten years.
    force
        Replace the credentials of an earlier deployment in ``out_dir``.

    Returns
    -------
    DeploymentPaths
        The absolute paths of what was written.
    """
    if not hosts:
        raise DeployError("give at least one --superlink-host (the name or IP address devices connect to)")
    for h in hosts:
        parse_host(h)
    _check_port(port)
    if days < 1:
        raise DeployError(f"--days {days} must be >= 1")
    names = _device_names(devices)
    root = Path(out_dir).expanduser().resolve()
    _check_out_dir(root, force)
    paths = DeploymentPaths.under(root, names)

    if force and (root / "devices").is_dir():  # keys of the replaced deployment must not linger
        shutil.rmtree(root / "devices")
    _mkdir(root)
    _write(root / ".gitignore", "# credentials: nothing in this folder may be committed\n*\n", 0o644)
    ca_key, ca_cert = _make_ca(days)
    server_key, server_cert = _make_server_cert(ca_key, ca_cert, hosts, days)
    ca_pem = _pem_cert(ca_cert)
    _write(paths.ca_key, _pem_key(ca_key))
    _write(paths.ca_cert, ca_pem, 0o644)
    _write(paths.superlink_key, _pem_key(server_key))
    _write(paths.superlink_cert, _pem_cert(server_cert), 0o644)
    _mkdir(root / "devices")
    device_rows = [_write_device(dev, ca_pem, i, len(names)) for i, dev in enumerate(paths.devices.values())]
    _write(paths.register_script, _register_script(paths), 0o700)
    _write(paths.connection_toml, _connection_toml(paths, hosts[0], port))
    manifest = {
        "format": 1,
        "created": _now().isoformat(),
        "connection": CONNECTION_NAME,
        "hosts": [str(parse_host(h)) for h in hosts],
        "port": port,
        "address": format_address(hosts[0], port),
        "ca": _cert_info(ca_cert),
        "superlink": {**_cert_info(server_cert), "sans": [str(s.value) for s in _sans(hosts)]},
        "devices": device_rows,
    }
    _write(paths.manifest, json.dumps(manifest, indent=2) + "\n")
    return paths


def load_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``deployment.json`` of ``out_dir``; a folder without one raises with the command that writes it."""
    path = Path(out_dir).expanduser() / MANIFEST
    if not path.is_file():
        raise DeployError(
            f"{Path(out_dir)} holds no {MANIFEST}: it is not a deployment folder; write one with "
            "`fedtrain deploy init OUT_DIR --superlink-host HOST --devices N`"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeployError(f"{path} is not valid JSON ({err}); re-create the deployment with init --force") from err
    return data


def renew_superlink_cert(out_dir: str | os.PathLike[str], days: int = 365, hosts: Sequence[str] | None = None) -> Path:
    """Re-issue the SuperLink certificate from the deployment's own CA (devices keep their ca.crt and keys).

    ``hosts`` replaces the SAN host list when given (e.g. a new address); otherwise the manifest's is kept.
    Returns the certificate's path; restart the SuperLink to load it.
    """
    if days < 1:
        raise DeployError(f"--days {days} must be >= 1")
    root = Path(out_dir).expanduser().resolve()
    manifest = load_manifest(root)
    paths = DeploymentPaths.under(root)
    try:
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except (OSError, ValueError) as err:
        raise DeployError(f"cannot read the deployment's CA in {root} ({err}); renew needs ca.key and ca.crt") from err
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"{paths.ca_key} is not the EC key `fedtrain deploy init` writes")
    if ca_cert.not_valid_after_utc <= _now() + dt.timedelta(days=1):
        raise DeployError(
            f"the CA in {root} expires {ca_cert.not_valid_after_utc:%Y-%m-%d}: issue a new deployment with "
            "`fedtrain deploy init --force` (and re-register every device)"
        )
    new_hosts = list(hosts) if hosts else list(manifest["hosts"])
    for h in new_hosts:
        parse_host(h)
    key, cert = _make_server_cert(ca_key, ca_cert, new_hosts, days)
    _write(paths.superlink_key, _pem_key(key))
    _write(paths.superlink_cert, _pem_cert(cert), 0o644)
    manifest["hosts"] = [str(parse_host(h)) for h in new_hosts]
    manifest["superlink"] = {**_cert_info(cert), "sans": [str(s.value) for s in _sans(new_hosts)]}
    if hosts:
        manifest["address"] = format_address(new_hosts[0], int(manifest["port"]))
        _write(paths.connection_toml, _connection_toml(paths, new_hosts[0], int(manifest["port"])))
    _write(paths.manifest, json.dumps(manifest, indent=2) + "\n")
    return paths.superlink_cert
