"""The deployment kit without running Flower: init's files, modes and certificates, refusals, command lines, units,
scripts, and status parsing (tests/test_deploy_e2e*.py run the real processes)."""

from __future__ import annotations

import configparser
import ipaddress
import itertools
import json
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedtrain.deploy.cli import main as deploy_main
from fedtrain.deploy.errors import DeployError
from fedtrain.deploy.launch import parse_superlink_address, superlink_command, supernode_command
from fedtrain.deploy.pki import init_deployment, renew_superlink_cert, ssh_fingerprint
from fedtrain.deploy.status import current_round, format_status, query_status
from fedtrain.deploy.units import write_units

REPO = Path(__file__).resolve().parents[1]
HOSTS = ["192.168.1.10", "link.example.org", "fd00::1"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return init_deployment(tmp_path_factory.mktemp("kit") / "out", HOSTS, 2, port=9411, days=30)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_layout_and_modes(kit):
    root = kit.root
    names = {p.name for p in root.iterdir()}
    assert names == {".gitignore", "ca.crt", "ca.key", "superlink.crt", "superlink.key", "devices", "register.sh",
                     "connection.toml", "deployment.json"}  # fmt: skip
    assert (root / ".gitignore").read_text().splitlines()[-1] == "*"
    assert sorted(p.name for p in (root / "devices").iterdir()) == ["device-0", "device-1"]
    for d in (root, root / "devices", *(root / "devices").iterdir()):
        assert _mode(d) == 0o700, d
    private = [kit.ca_key, kit.superlink_key, *(d.auth_key for d in kit.devices.values())]
    for p in private:
        assert _mode(p) == 0o600, p
    for dev in kit.devices.values():
        assert {p.name for p in dev.dir.iterdir()} >= {"auth.key", "auth.key.pub", "ca.crt"}
        assert dev.ca_cert.read_bytes() == kit.ca_cert.read_bytes()
    # nothing in the folder is tracked or addable: git sees it as ignored
    if shutil.which("git"):
        proc = subprocess.run(["git", "check-ignore", "-q", str(kit.ca_key)], cwd=root, capture_output=True)
        assert proc.returncode in (0, 128)  # 128: the tmp dir is not in a repository; 0: ignored


def test_server_cert_chains_to_ca_with_sans(kit):
    ca = x509.load_pem_x509_certificate(kit.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(kit.superlink_cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises when the signature or issuer does not match
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"link.example.org", "localhost"}
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert ips == {ipaddress.ip_address(h) for h in ("192.168.1.10", "fd00::1", "127.0.0.1")}
    key = load_pem_private_key(kit.superlink_key.read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31
    assert ca.not_valid_after_utc > cert.not_valid_after_utc


def test_device_keys_are_p384_openssh(kit):
    fingerprints = set()
    for dev in kit.devices.values():
        raw = dev.auth_key.read_bytes()
        assert raw.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        priv = load_ssh_private_key(raw, None)
        pub_line = dev.auth_key_pub.read_text()
        assert pub_line.startswith("ecdsa-sha2-nistp384 ")
        pub = load_ssh_public_key(pub_line.encode())
        assert isinstance(priv, ec.EllipticCurvePrivateKey) and isinstance(priv.curve, ec.SECP384R1)
        assert pub.public_numbers() == priv.public_key().public_numbers()  # type: ignore[union-attr]
        fingerprints.add(ssh_fingerprint(pub_line))
    assert len(fingerprints) == 2  # one key per device


def test_register_connection_and_manifest(kit):
    script = kit.register_script.read_text().splitlines()
    regs = [shlex.split(line) for line in script if line.startswith("flwr supernode register")]
    assert regs == [["flwr", "supernode", "register", str(d.auth_key_pub), "fedtrain"] for d in kit.devices.values()]
    assert script[-1] == "flwr supernode list fedtrain"
    assert subprocess.run(["bash", "-n", str(kit.register_script)]).returncode == 0
    import tomllib

    conn = tomllib.loads(kit.connection_toml.read_text())["superlink"]["fedtrain"]
    assert conn == {"address": "192.168.1.10:9411", "root-certificates": str(kit.ca_cert)}
    assert Path(conn["root-certificates"]).is_absolute()
    m = json.loads(kit.manifest.read_text())
    assert m["hosts"] == HOSTS and m["port"] == 9411
    assert [d["name"] for d in m["devices"]] == ["device-0", "device-1"]
    assert m["devices"][1]["auth_key_sha256"] == ssh_fingerprint(kit.devices["device-1"].auth_key_pub.read_text())
    cert = x509.load_pem_x509_certificate(kit.superlink_cert.read_bytes())
    assert m["superlink"]["expires"] == cert.not_valid_after_utc.isoformat()


@pytest.mark.parametrize(
    ("hosts", "devices", "match"),
    [
        (["https://link"], 1, "neither an IP address"),
        (["link:9400"], 1, "neither an IP address"),
        (["bad_host"], 1, "neither an IP address"),
        (["300.1.1.1"], 1, "not a valid one"),
        ([], 1, "at least one"),
        (["link"], 0, "at least one device"),
        (["link"], ["a", "b", "a"], "repeated: a"),
        (["link"], ["x/y"], "not allowed"),
        (["link"], ["../up"], "not allowed"),
    ],
)
def test_init_refuses_bad_input(tmp_path, hosts, devices, match):
    with pytest.raises(DeployError, match=match):
        init_deployment(tmp_path / "out", hosts, devices)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_init_refuses_non_empty_dir_without_force(tmp_path):
    out = tmp_path / "out"
    first = init_deployment(out, ["link"], ["a", "b"])
    with pytest.raises(DeployError, match=r"not empty.*--force"):
        init_deployment(out, ["link"], 1)
    old_ca = first.ca_cert.read_bytes()
    again = init_deployment(out, ["link"], ["c"], force=True)
    assert again.ca_cert.read_bytes() != old_ca
    assert sorted(p.name for p in (out / "devices").iterdir()) == ["c"]  # the old keys are gone
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DeployError, match=r"holds no deployment\.json"):
        init_deployment(other, ["link"], 1, force=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_renew_keeps_ca_and_device_keys(tmp_path):
    paths = init_deployment(tmp_path / "out", ["link"], 1, days=10)
    ca, dev_key = paths.ca_cert.read_bytes(), paths.devices["device-0"].auth_key.read_bytes()
    old = x509.load_pem_x509_certificate(paths.superlink_cert.read_bytes())
    renew_superlink_cert(paths.root, days=100, hosts=["link", "10.0.0.7"])
    new = x509.load_pem_x509_certificate(paths.superlink_cert.read_bytes())
    assert paths.ca_cert.read_bytes() == ca and paths.devices["device-0"].auth_key.read_bytes() == dev_key
    assert new.serial_number != old.serial_number
    new.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    assert ipaddress.ip_address("10.0.0.7") in new.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.IPAddress)
    assert _mode(paths.superlink_key) == 0o600
    assert json.loads(paths.manifest.read_text())["superlink"]["expires"] == new.not_valid_after_utc.isoformat()


def _flags(cmd: list[str]) -> dict[str, str]:
    return {a: b for a, b in itertools.pairwise(cmd) if a.startswith("--") and not b.startswith("--")}


def test_superlink_command(kit):
    cmd = superlink_command(kit.root)
    assert Path(cmd[0]).name == "flower-superlink"
    f = _flags(cmd)
    assert f["--ssl-ca-certfile"] == str(kit.ca_cert) and f["--ssl-certfile"] == str(kit.superlink_cert)
    assert f["--ssl-keyfile"] == str(kit.superlink_key)
    assert f["--database"] == str(kit.root / "state" / "superlink.db")
    assert (f["--host"], f["--port"]) == ("0.0.0.0", "9411")
    assert "--enable-supernode-auth" in cmd and "--disable-runtime-dependency-installation" in cmd
    assert "--insecure" not in cmd
    assert all(Path(v).is_absolute() for k, v in f.items() if k.startswith("--ssl") or k == "--database")
    assert _flags(superlink_command(kit.root, host="127.0.0.1", port=9500, database="db.sqlite"))["--database"] == str(
        Path("db.sqlite").resolve()
    )
    # every flag is one flower-superlink 1.42 accepts
    help_text = subprocess.run([cmd[0], "--help"], capture_output=True, text=True).stdout
    for flag in (a for a in cmd if a.startswith("--")):
        assert flag in help_text, flag


def test_supernode_command(kit, tmp_path):
    dev = kit.devices["device-1"]
    data = tmp_path / "client-1.npz"
    cmd = supernode_command(dev.dir, "link.example.org:9411", data, local_port=9502, node_config="local-epochs=1")
    f = _flags(cmd)
    assert Path(cmd[0]).name == "flower-supernode"
    assert f["--root-certificates"] == str(dev.ca_cert) and f["--auth-supernode-private-key"] == str(dev.auth_key)
    assert (f["--superlink"], f["--port"]) == ("link.example.org:9411", "9502")
    assert f["--node-config"] == f"data-path='{data}' partition-id=1 num-partitions=2 local-epochs=1"
    # Flower's own parser reads it back as this node's data path and partition
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([f["--node-config"]])
    assert parsed == {"data-path": str(data), "partition-id": 1, "num-partitions": 2, "local-epochs": 1}
    override = supernode_command(dev.dir, "[fd00::1]:9411", data, node_config="partition-id=0")
    assert "partition-id=0 num-partitions=2" in _flags(override)["--node-config"]
    help_text = subprocess.run([cmd[0], "--help"], capture_output=True, text=True).stdout
    for flag in (a for a in cmd if a.startswith("--")):
        assert flag in help_text, flag


@pytest.mark.parametrize("address", ["link", "https://link:9400", "link:0", "a b:1", "link:99999"])
def test_supernode_refuses_bad_superlink(address):
    with pytest.raises(DeployError):
        parse_superlink_address(address)


def test_supernode_refusals(kit, tmp_path):
    dev = kit.devices["device-0"]
    with pytest.raises(DeployError, match="does not exist"):
        supernode_command(tmp_path, "link:9411", tmp_path / "d.npz")
    with pytest.raises(DeployError, match="not a key=value"):
        supernode_command(dev.dir, "link:9411", tmp_path / "d.npz", node_config="oops")
    with pytest.raises(DeployError, match="--data-path"):
        supernode_command(dev.dir, "link:9411", tmp_path / "d.npz", node_config="data-path=x")


def test_cli_print_and_errors(kit, tmp_path, capsys):
    assert deploy_main(["deploy", "superlink", str(kit.root), "--print"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 ")
    assert shlex.split(line)[1:] == superlink_command(kit.root)
    args = ["deploy", "supernode", str(kit.devices["device-0"].dir), "--superlink", "link:9411"]
    assert deploy_main([*args, "--data-path", str(tmp_path / "x.npz"), "--print"]) == 0
    assert "--auth-supernode-private-key" in capsys.readouterr().out
    assert deploy_main([*args, "--data-path", str(tmp_path / "x.npz")]) == 7  # not on this device: one line
    err = capsys.readouterr().err
    assert err.startswith("error: --data-path") and err.count("\n") == 1
    assert deploy_main(["deploy", "init", str(tmp_path / "k"), "--superlink-host", "h", "--devices", "0"]) == 7
    assert "at least one device" in capsys.readouterr().err
    out = tmp_path / "named"
    named = ["deploy", "init", str(out), "--superlink-host", "h", "--device", "pi-a", "--device", "pi-b"]
    assert deploy_main(named) == 0
    assert sorted(p.name for p in (out / "devices").iterdir()) == ["pi-a", "pi-b"]


def test_cli_module_imports_only_stdlib():
    code = (
        "import sys; import fedtrain.deploy.cli; "
        "bad = [m for m in ('cryptography', 'flwr', 'torch', 'numpy', 'fedtrain.deploy.pki') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([shutil.which("python") or "python", "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _read_unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def _unescape(exec_start: str) -> list[str]:
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(exec_start)]


def test_units(kit, tmp_path):
    venv = "/opt/fedtrain/venv"
    files = write_units(kit.root, "fedtrain", venv, dest=tmp_path / "units")
    assert sorted(p.name for p in files) == [
        "fedtrain-superlink.service", "fedtrain-supernode-device-0.service", "fedtrain-supernode-device-1.service",
        "fedtrain-worker-device-0.service", "fedtrain-worker-device-1.service",
    ]  # fmt: skip
    link = _read_unit(tmp_path / "units" / "fedtrain-superlink.service")
    svc = link["Service"]
    assert svc["Restart"] == "on-failure" and int(svc["RestartSec"]) > 0 and svc["User"] == "fedtrain"
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in svc["Environment"]
    # Flower starts flower-superexec (and it flwr-clientapp) by name: the venv's bin comes first on PATH.
    path = dict(kv.split("=", 1) for kv in shlex.split(svc["Environment"]))["PATH"]
    assert path.split(":")[0] == f"{venv}/bin" and "/usr/bin" in path.split(":")
    assert _unescape(svc["ExecStart"]) == superlink_command(kit.root, venv=venv)
    assert _unescape(svc["ExecStart"])[0] == f"{venv}/bin/flower-superlink"
    assert link["Install"]["WantedBy"] == "multi-user.target"
    node_unit = _read_unit(tmp_path / "units" / "fedtrain-supernode-device-1.service")
    node = node_unit["Service"]
    dev = kit.devices["device-1"]
    expected = supernode_command(dev.dir, "192.168.1.10:9411", dev.dir / "data.npz", local_port=9095, venv=venv,
                                 warm_worker=True)  # fmt: skip
    assert _unescape(node["ExecStart"]) == expected
    assert _flags(expected)["--node-config"].endswith(f"warm-worker='{dev.dir / 'worker' / 'worker.sock'}'")
    assert node["Restart"] == "on-failure"
    # The SuperNode wants its device's warm worker, which runs `fedtrain deploy worker` from the same venv.
    assert "fedtrain-worker-device-1.service" in node_unit["Unit"]["Wants"].split()
    worker = _read_unit(tmp_path / "units" / "fedtrain-worker-device-1.service")["Service"]
    assert _unescape(worker["ExecStart"]) == [f"{venv}/bin/fedtrain", "deploy", "worker", str(dev.dir)]
    assert worker["Restart"] == "on-failure" and worker["User"] == "fedtrain"
    plain = write_units(kit.root, "fedtrain", venv, dest=tmp_path / "plain", warm_worker=False)
    assert not any("worker" in p.name for p in plain)
    plain_node = _read_unit(tmp_path / "plain" / "fedtrain-supernode-device-1.service")
    assert "warm-worker" not in plain_node["Service"]["ExecStart"] and "worker" not in plain_node["Unit"]["Wants"]
    assert shlex.split(node["Environment"])[1].startswith(f"PATH={venv}/bin:")
    if shutil.which("systemd-analyze"):  # systemd's own parser, where it is installed
        proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, files)], capture_output=True,
                              text=True)  # fmt: skip
        assert "Failed to parse" not in proc.stderr and "Invalid" not in proc.stderr, proc.stderr


def test_a_launched_flower_command_finds_its_own_venvs_tools_first():
    from fedtrain.deploy.launch import deploy_env

    env = deploy_env({"PATH": "/usr/bin:/bin"}, command=["/opt/v/bin/flower-supernode", "--insecure"])
    assert env["PATH"] == "/opt/v/bin:/usr/bin:/bin" and env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert deploy_env({"PATH": "/usr/bin"}, command=["flower-supernode"])["PATH"] == "/usr/bin"  # found on PATH


def test_unit_for_one_device_folder(kit, tmp_path):
    dev = kit.devices["device-0"]
    with pytest.raises(DeployError, match="--superlink"):
        write_units(dev.dir, "pi", "/opt/v", dest=tmp_path)
    paths = write_units(dev.dir, "pi", "/opt/v", superlink="link:9411", data_path="/data/%x.npz", dest=tmp_path)
    assert sorted(p.name for p in paths) == ["fedtrain-supernode-device-0.service", "fedtrain-worker-device-0.service"]
    cmd = _unescape(_read_unit(paths[0])["Service"]["ExecStart"])
    assert _flags(cmd)["--node-config"].startswith("data-path='/data/%x.npz' partition-id=0")
    with pytest.raises(DeployError, match="--user"):
        write_units(kit.root, "Bad User", "/opt/v", dest=tmp_path)


def test_scripts_parse():
    for script in [REPO / "deploy" / "pi" / "setup.sh"]:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        text = script.read_text()
        assert "set -euo pipefail" in text
        if shutil.which("shellcheck"):
            proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout


def test_pi_setup_pins_match_pyproject():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {re.split(r"[\[=<>]", d)[0]: d for d in deps}
    text = (REPO / "deploy" / "pi" / "setup.sh").read_text()
    assert '"torch==2.13.0"' in text and pins["torch"] == "torch==2.13.0"
    (line,) = [ln for ln in text.splitlines() if ln.startswith("DEPS=(")]
    for spec in re.findall(r'"([^"]+)"', line):
        name = re.split(r"[\[=<>]", spec)[0]
        if name == "flwr":
            assert spec.split("==")[1] == pins["flwr"].split("==")[1]  # same version; no simulation extra (ray)
        else:
            assert spec == pins[name], (spec, pins[name])
    assert "deploy/edge-requirements.txt" in text
    assert "3, 11" in text and "swapon" in text and "fedtrain.deploy.cli deploy units" in text


def test_pi_setup_fails_clearly_without_args(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "deploy" / "pi" / "setup.sh")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error: give the device folder")


def test_dockerfile():
    text = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "torch==${TORCH_VERSION}" in text and "ARG TORCH_VERSION=2.13.0" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text
    assert 'ENTRYPOINT ["python", "-m", "fedtrain.deploy.cli", "deploy"]' in text
    for path in re.findall(r"^COPY (\S+)", text, flags=re.M):
        assert (REPO / path).exists(), path
    ignore = (REPO / "deploy" / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") - 0] == "**"  # everything is excluded first, then only the sources allowed


def _docker_ready() -> str | None:
    if not shutil.which("docker"):
        return "no docker client"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return "no Docker daemon: " + " ".join(info.stderr.split())[-200:]
    image = subprocess.run(["docker", "image", "inspect", "python:3.11-slim"], capture_output=True, text=True)
    if image.returncode != 0:
        return "python:3.11-slim is not available locally and tests never download"
    return None


@pytest.mark.slow
def test_docker_build_amd64():
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(
        ["docker", "build", "--platform", "linux/amd64", "-f", "deploy/docker/Dockerfile", "-t",
         "fedtrain-test:amd64", "."], cwd=REPO, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = subprocess.run(["docker", "run", "--rm", "fedtrain-test:amd64", "--help"], capture_output=True, text=True)
    assert "init" in run.stdout and "supernode" in run.stdout


def test_status_parses_flwr_json(tmp_path):
    calls = []

    def runner(argv, env):
        calls.append((list(argv), env.get("FLWR_HOME")))
        if argv[1] == "supernode":
            nodes = [{"node-id": "1", "status": "online", "online-at": "2026-12-01 10:00:00Z"},
                     {"node-id": "2", "status": "registered"}]  # fmt: skip
            return "Using SuperLink...\n" + json.dumps({"success": True, "nodes": nodes})
        runs = [
            {"run-id": "5", "status": "finished:completed", "pending-at": "2026-12-01 09:00:00Z"},
            {"run-id": "6", "status": "running", "pending-at": "2026-12-01 10:00:00Z", "fab-name": "fedtrain"},
        ]
        return json.dumps({"success": True, "runs": runs})

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert current_round(run_dir) is None
    lines = [{"phase": "finetune", "round": 1}, {"phase": "finetune", "round": 2, "test_accuracy": 0.5}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    status = query_status("mylink", run_dir=run_dir, runner=runner)
    assert [c[0][1:] for c in calls] == [["supernode", "list", "mylink", "--format", "json"],
                                         ["ls", "mylink", "--format", "json"]]  # fmt: skip
    assert status.count("online") == 1 and status.count("registered") == 1
    assert status.current_run and status.current_run["run-id"] == "6"
    text = format_status(status)
    assert "2 nodes, 1 online, 1 registered" in text and "run 6" in text and "latest finished round: 2" in text


def test_status_uses_a_deployment_folder_and_reports_flwr_errors(kit):
    seen = {}

    def runner(argv, env):
        home = Path(env["FLWR_HOME"])
        seen["config"] = (home / "config.toml").read_text()
        return json.dumps({"success": False, "error-message": "Connection to the SuperLink\nis unavailable."})

    with pytest.raises(DeployError, match=r"^`flwr supernode list` failed: Connection to the SuperLink is unavailable"):
        query_status(str(kit.root), runner=runner)
    assert "[superlink.fedtrain]" in seen["config"]
    with pytest.raises(DeployError, match="no JSON"):
        query_status("x", runner=lambda a, e: "Traceback ...")


def test_a_supervised_supernode_ends_a_refusal_in_one_line(capsys):
    from fedtrain.deploy.errors import DeployError
    from fedtrain.deploy.launch import supervise_command

    refused = ["sh", "-c", "echo 'ERROR: [code: 2004] Failed to activate SuperNode'; echo 'Exit Code: 305'; exit 1"]
    with pytest.raises(DeployError) as err:
        supervise_command(refused, "device-0")
    message = str(err.value)
    assert message.startswith("device-0: the SuperLink refused this device's key") and "\n" not in message
    assert "[code: 2004]" in capsys.readouterr().out  # Flower's own output still reaches the operator
    with pytest.raises(DeployError, match="exited with code 3"):
        supervise_command(["sh", "-c", "exit 3"], "device-1")
    assert supervise_command(["sh", "-c", "echo fine"], "device-2") == 0


def test_retry_limits_reach_flower(kit):
    from fedtrain.deploy.launch import supernode_command

    dev = kit.root / "devices" / "device-0"
    cmd = supernode_command(dev, "127.0.0.1:9400", dev / "data.npz", max_retries=2, max_wait_time=5.0)
    assert cmd[cmd.index("--max-retries") + 1] == "2" and cmd[cmd.index("--max-wait-time") + 1] == "5.0"
    assert "--max-retries" not in supernode_command(dev, "127.0.0.1:9400", dev / "data.npz")
