"""systemd units for a deployment: the SuperLink's, and per device its SuperNode's and its warm worker's.

``fedtrain-superlink.service``, ``fedtrain-supernode-<name>.service`` and ``fedtrain-worker-<name>.service``.

Their ``ExecStart`` is exactly the launcher's command line (:mod:`fedtrain.deploy.launch`), so a unit and
``fedtrain deploy superlink|supernode --print`` never disagree. A unit per device, not a template: each device
has its own key folder, data file and partition id, which a template's ``%i`` alone cannot carry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from fedtrain.deploy.errors import DeployError
from fedtrain.deploy.launch import (
    DEFAULT_LOCAL_PORT,
    NO_INSTALL_ENV,
    superlink_command,
    supernode_command,
    worker_command,
)
from fedtrain.deploy.pki import DEVICE_MANIFEST, MANIFEST, load_manifest

__all__ = ["superlink_unit", "supernode_unit", "systemd_quote", "worker_unit", "write_units"]

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
DEFAULT_DATA_TEMPLATE = "{device_dir}/data.npz"


def systemd_quote(arg: str) -> str:
    """``arg`` as one word of a systemd ``ExecStart`` (double quotes where needed; ``%`` and ``$`` escaped)."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# systemd's own default PATH for services, after the venv's bin: Flower starts flower-superexec (and it
# flwr-clientapp) by name, so the venv's tools must come first.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _unit(description: str, user: str, command: Sequence[str], workdir: Path, after: Sequence[str]) -> str:
    path = f"{Path(command[0]).parent}:{_SYSTEM_PATH}"  # command[0] is the venv's flower-superlink/-supernode/fedtrain
    env = " ".join(systemd_quote(f"{k}={v}") for k, v in {**NO_INSTALL_ENV, "PATH": path}.items())
    return "\n".join(
        [
            "# Written by `fedtrain deploy units`; install with: sudo cp THIS /etc/systemd/system/ &&",
            "# sudo systemctl daemon-reload && sudo systemctl enable --now THIS",
            "[Unit]",
            f"Description={description}",
            f"After={' '.join(after)}",
            f"Wants={' '.join(after)}",
            "StartLimitIntervalSec=0",  # keep retrying: a device may boot long before the SuperLink is up
            "",
            "[Service]",
            "Type=simple",
            f"User={user}",
            f"WorkingDirectory={systemd_quote(str(workdir))}",
            f"Environment={env} PYTHONUNBUFFERED=1",
            f"ExecStart={' '.join(systemd_quote(a) for a in command)}",
            "Restart=on-failure",
            "RestartSec=10",
            "KillMode=control-group",  # the SuperExec and ClientApp children stop with the service
            "TimeoutStopSec=30",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def _check(user: str, venv: str | os.PathLike[str]) -> None:
    if not _USER.match(user):
        raise DeployError(f"--user {user!r} is not a valid Linux user name")
    if not Path(venv).is_absolute() and not str(venv).startswith("~"):
        raise DeployError(f"--venv {venv!r} must be an absolute path (the path on the machine that runs the unit)")


def superlink_unit(
    out_dir: str | os.PathLike[str],
    user: str,
    venv: str | os.PathLike[str],
    host: str = "0.0.0.0",
    port: int | None = None,
    database: str | os.PathLike[str] | None = None,
) -> str:
    """The text of ``fedtrain-superlink.service`` for the deployment in ``out_dir``."""
    _check(user, venv)
    cmd = superlink_command(out_dir, host=host, port=port, database=database, venv=venv)
    workdir = Path(out_dir).expanduser().resolve()
    return _unit("fedtrain SuperLink (Flower)", user, cmd, workdir, ["network-online.target"])


def supernode_unit(
    device_dir: str | os.PathLike[str],
    user: str,
    venv: str | os.PathLike[str],
    superlink: str,
    data_path: str | os.PathLike[str],
    local_port: int = DEFAULT_LOCAL_PORT,
    node_config: str = "",
    warm_worker: bool = True,
) -> str:
    """The text of one device's ``fedtrain-supernode-<name>.service`` (wanting its warm worker's unit, by default)."""
    _check(user, venv)
    cmd = supernode_command(device_dir, superlink, data_path, local_port=local_port, node_config=node_config, venv=venv,
                            warm_worker=warm_worker)  # fmt: skip
    name = Path(device_dir).expanduser().resolve().name
    workdir = Path(device_dir).expanduser().resolve()
    after = ["network-online.target", *([_worker_unit_name(name)] if warm_worker else [])]
    return _unit(f"fedtrain SuperNode {name} (Flower)", user, cmd, workdir, after)


def _worker_unit_name(device: str) -> str:
    return f"fedtrain-worker-{device}.service"


def worker_unit(device_dir: str | os.PathLike[str], user: str, venv: str | os.PathLike[str]) -> str:
    """The text of one device's ``fedtrain-worker-<name>.service``: its warm worker (torch loaded once)."""
    _check(user, venv)
    cmd = worker_command(device_dir, venv=venv)
    workdir = Path(device_dir).expanduser().resolve()
    return _unit(f"fedtrain warm worker {workdir.name}", user, cmd, workdir, ["local-fs.target"])


def write_units(
    folder: str | os.PathLike[str],
    user: str,
    venv: str | os.PathLike[str],
    superlink: str | None = None,
    data_path: str = DEFAULT_DATA_TEMPLATE,
    dest: str | os.PathLike[str] | None = None,
    host: str = "0.0.0.0",
    warm_worker: bool = True,
) -> list[Path]:
    """Write the units of a deployment folder (SuperLink + every device) or of one device folder.

    Parameters
    ----------
    folder
        OUT_DIR of ``init`` (all units) or one ``devices/<name>`` folder (its SuperNode unit only).
    user, venv
        The account the services run as, and the virtual environment holding flwr and fedtrain.
    superlink
        ``HOST:PORT`` the SuperNodes connect to (default: the deployment's address, from deployment.json).
    data_path
        Each device's data file; ``{device_dir}`` and ``{name}`` are replaced per device.
    dest
        Folder for the unit files (default ``OUT_DIR/units``, or the device folder).
    host
        The SuperLink's bind address.
    warm_worker
        Write each device's warm-worker unit too, and let its SuperNode unit use the worker.
    """
    root = Path(folder).expanduser().resolve()
    if (root / MANIFEST).is_file():
        manifest = load_manifest(root)
        out = Path(dest).expanduser().resolve() if dest else root / "units"
        address = superlink or str(manifest["address"])
        texts = {"fedtrain-superlink.service": superlink_unit(root, user, venv, host=host)}
        for i, dev in enumerate(manifest["devices"]):
            dev_dir = root / "devices" / dev["name"]
            data = data_path.format(device_dir=dev_dir, name=dev["name"])
            # distinct local ports, so that the units of one deployment can also run on one test host
            unit = supernode_unit(dev_dir, user, venv, address, data, local_port=DEFAULT_LOCAL_PORT + i,
                                  warm_worker=warm_worker)  # fmt: skip
            texts[f"fedtrain-supernode-{dev['name']}.service"] = unit
            if warm_worker:
                texts[_worker_unit_name(dev["name"])] = worker_unit(dev_dir, user, venv)
    elif (root / DEVICE_MANIFEST).is_file():
        if not superlink:
            raise DeployError("a device folder's unit needs --superlink HOST:PORT (as the device reaches it)")
        out = Path(dest).expanduser().resolve() if dest else root
        data = data_path.format(device_dir=root, name=root.name)
        texts = {
            f"fedtrain-supernode-{root.name}.service": supernode_unit(
                root, user, venv, superlink, data, warm_worker=warm_worker
            )
        }
        if warm_worker:
            texts[_worker_unit_name(root.name)] = worker_unit(root, user, venv)
    else:
        raise DeployError(
            f"{root} is neither a deployment folder ({MANIFEST}) nor a device folder ({DEVICE_MANIFEST}): run "
            "`fedtrain deploy init` first"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        path = out / name
        path.write_text(text)
        written.append(path)
    return written
