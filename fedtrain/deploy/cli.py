"""``fedtrain deploy ...``: the deployment kit's commands (init, renew, superlink, supernode, worker, units, status).

Registered on the ``fedtrain`` command by :func:`add_deploy_parser`. Only the standard library is imported here:
``fedtrain``'s parser is built at every start-up, so each command imports its module when it runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

__all__ = ["add_deploy_parser"]


def _init(args: argparse.Namespace) -> int:
    from fedtrain.deploy.errors import DeployError
    from fedtrain.deploy.pki import init_deployment

    if args.devices is not None and args.device:
        raise DeployError("give either --devices N or --device NAME (repeated), not both")
    if args.devices is None and not args.device:
        raise DeployError("give --devices N or one --device NAME per device")
    devices: Any = args.device if args.device else args.devices
    hosts = args.superlink_host
    paths = init_deployment(args.out_dir, hosts, devices, port=args.port, days=args.days, force=args.force)
    print(f"deployment written to {paths.root} ({len(paths.devices)} devices; nothing there may be committed)")
    print(f"  1. operator: append {paths.connection_toml} to $FLWR_HOME/config.toml (default ~/.flwr/config.toml)")
    print(f"  2. SuperLink host: fedtrain deploy superlink {paths.root}")
    print(f"  3. operator: bash {paths.register_script}  (registers every device's key)")
    print(f"  4. each device: copy {paths.root}/devices/<name>/, then fedtrain deploy supernode DEVICE_DIR "
          "--superlink HOST:PORT --data-path FILE")  # fmt: skip
    return 0


def _renew(args: argparse.Namespace) -> int:
    from fedtrain.deploy.pki import renew_superlink_cert

    cert = renew_superlink_cert(args.out_dir, days=args.days, hosts=args.superlink_host or None)
    print(f"re-issued {cert} from the deployment's CA; restart the SuperLink to load it (devices need nothing)")
    return 0


def _launch(command: list[str], print_only: bool) -> int:
    from fedtrain.deploy.launch import NO_INSTALL_ENV, exec_command

    if print_only:
        env = " ".join(f"{k}={v}" for k, v in NO_INSTALL_ENV.items())
        print(f"{env} {shlex.join(command)}")
        return 0
    exec_command(command)
    return 0  # not reached: exec replaced this process


def _superlink(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedtrain.deploy.launch import superlink_command

    cmd = superlink_command(args.out_dir, host=args.host, port=args.port, database=args.database)
    if not args.print:
        db = Path(cmd[cmd.index("--database") + 1])
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _launch(cmd, args.print)


def _supernode(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedtrain.deploy.errors import DeployError
    from fedtrain.deploy.launch import supernode_command

    cmd = supernode_command(
        args.device_dir, args.superlink, args.data_path, local_port=args.local_port, node_config=args.node_config,
        max_retries=args.max_retries, max_wait_time=args.max_wait_time, warm_worker=args.warm_worker,
    )  # fmt: skip
    if not args.print and not Path(args.data_path).expanduser().is_file():
        raise DeployError(f"--data-path {args.data_path} does not exist on this device: copy its data file there first")
    if args.supervise and not args.print:
        from fedtrain.deploy.launch import supervise_command

        return supervise_command(cmd, Path(args.device_dir).name)
    return _launch(cmd, args.print)


def _worker(args: argparse.Namespace) -> int:
    from fedtrain.deploy.launch import device_folder, worker_socket
    from fedtrain.federation.warm_worker import serve

    dev_dir = device_folder(args.device_dir)  # refuses a folder that is not a device's, --socket or not
    serve(args.socket or worker_socket(dev_dir))
    # Served and cleaned up. A stop signal mid-message leaves a thread inside torch, and the interpreter's shutdown
    # could then abort (SIGABRT, a failure to systemd): end the process here, the message's reply is void anyway.
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _units(args: argparse.Namespace) -> int:
    from fedtrain.deploy.units import write_units

    for path in write_units(
        args.folder, args.user, args.venv, superlink=args.superlink, data_path=args.data_path, dest=args.dest,
        warm_worker=args.warm_worker,
    ):  # fmt: skip
        print(path)
    return 0


def _status(args: argparse.Namespace) -> int:
    from fedtrain.deploy.status import format_status, query_status

    print(format_status(query_status(args.target, run_dir=args.run_dir)))
    return 0


def add_deploy_parser(subparsers: Any) -> None:
    """Register ``deploy`` and its subcommands on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    deploy = subparsers.add_parser(
        "deploy",
        help="credentials, launchers, systemd units and status for a Flower deployment (deploy/README.md)",
        description="Run fedtrain on Flower's Deployment Engine: TLS, SuperNode authentication, launchers, units.",
    )
    sub = deploy.add_subparsers(dest="deploy_command", required=True)

    init = sub.add_parser("init", help="write a CA, the SuperLink certificate and one auth key per device")
    init.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the deployment's credentials")
    init.add_argument(
        "--superlink-host",
        action="append",
        required=True,
        metavar="HOST",
        help="name or IP address devices use to reach the SuperLink (repeat for more; all go in SANs)",
    )
    init.add_argument("--devices", type=int, metavar="N", help="number of devices (named device-0 .. device-N-1)")
    init.add_argument("--device", action="append", metavar="NAME", help="a device name (repeat per device)")
    init.add_argument("--port", type=int, default=9400, help="SuperLink port (default 9400)")
    init.add_argument("--days", type=int, default=365, help="SuperLink certificate validity (default 365)")
    init.add_argument("--force", action="store_true", help="replace an earlier deployment in OUT_DIR (new CA)")
    init.set_defaults(func=_init)

    renew = sub.add_parser("renew", help="re-issue the SuperLink certificate from the same CA")
    renew.add_argument("out_dir", metavar="OUT_DIR", help="a folder `fedtrain deploy init` wrote")
    renew.add_argument("--days", type=int, default=365, help="validity of the new certificate (default 365)")
    renew.add_argument(
        "--superlink-host",
        action="append",
        metavar="HOST",
        help="replace the SAN host list (default: keep the deployment's)",
    )
    renew.set_defaults(func=_renew)

    link = sub.add_parser("superlink", help="start the SuperLink (TLS, node auth, persistent state)")
    link.add_argument("out_dir", metavar="OUT_DIR", help="a folder `fedtrain deploy init` wrote")
    link.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0: all interfaces)")
    link.add_argument("--port", type=int, help="port (default: the deployment's)")
    link.add_argument("--database", metavar="PATH", help="state database (default OUT_DIR/state/superlink.db)")
    link.add_argument("--print", action="store_true", help="print the command line instead of running it")
    link.set_defaults(func=_superlink)

    node = sub.add_parser("supernode", help="start this device's SuperNode (TLS, its auth key, its data file)")
    node.add_argument("device_dir", metavar="DEVICE_DIR", help="this device's devices/<name> folder from init")
    node.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink as this device sees it")
    node.add_argument("--data-path", required=True, metavar="FILE", help="this device's data file (fedtrain split)")
    node.add_argument("--local-port", type=int, default=9094, help="the SuperNode's own port (default 9094)")
    node.add_argument(
        "--node-config",
        default="",
        metavar="'k=v ...'",
        help="more node config; partition-id and num-partitions default to the device's",
    )
    node.add_argument("--max-retries", type=int, help="connection retries before giving up (default: for ever)")
    node.add_argument("--max-wait-time", type=float, help="seconds of retrying before giving up (default: Flower's)")
    node.add_argument(
        "--supervise",
        action="store_true",
        help="run Flower as a child and end a refusal (unregistered key, TLS mismatch, no connection) in one line",
    )
    node.add_argument(
        "--warm-worker",
        action="store_true",
        help="let the device's warm worker (fedtrain deploy worker DEVICE_DIR) answer the messages: torch is imported "
        "once instead of per message",
    )
    node.add_argument("--print", action="store_true", help="print the command line instead of running it")
    node.set_defaults(func=_supernode)

    worker = sub.add_parser(
        "worker",
        help="keep torch (and Opacus) loaded for this device's ClientApp, which Flower starts afresh per message",
        description="Serve the device's ClientApp messages from one long-lived process (docs/deploy.md, warm worker). "
        "Start the SuperNode with --warm-worker to use it; without a worker the ClientApp handles each message itself.",
    )
    worker.add_argument("device_dir", metavar="DEVICE_DIR", help="this device's devices/<name> folder from init")
    worker.add_argument("--socket", metavar="PATH", help="Unix socket to serve (default DEVICE_DIR/worker/worker.sock)")
    worker.set_defaults(func=_worker)

    units = sub.add_parser("units", help="write systemd units for the SuperLink and the SuperNodes")
    units.add_argument("folder", metavar="OUT_DIR", help="a deployment folder (all units) or one device folder")
    units.add_argument("--user", required=True, help="account the services run as")
    units.add_argument("--venv", required=True, metavar="PATH", help="absolute path of the venv with flwr and fedtrain")
    units.add_argument("--superlink", metavar="HOST:PORT", help="address SuperNodes use (default: the deployment's)")
    units.add_argument(
        "--data-path",
        default="{device_dir}/data.npz",
        metavar="TEMPLATE",
        help="each device's data file; {device_dir} and {name} are filled in (default: %(default)s)",
    )
    units.add_argument("--dest", metavar="DIR", help="folder for the units (default OUT_DIR/units or the device dir)")
    units.add_argument(
        "--no-warm-worker",
        dest="warm_worker",
        action="store_false",
        help="no warm-worker unit per device: each message's ClientApp process imports torch itself",
    )
    units.set_defaults(func=_units)

    status = sub.add_parser("status", help="registered and online nodes, the current run and its round")
    status.add_argument("target", metavar="CONNECTION_OR_OUT_DIR", help="a Flower connection name or a deployment")
    status.add_argument("--run-dir", metavar="DIR", help="the run folder, for the current round (metrics.jsonl)")
    status.set_defaults(func=_status)


def main(argv: list[str] | None = None) -> int:
    """``python -m fedtrain.deploy.cli ...`` runs the group on its own (errors as one line, like ``fedtrain``)."""
    from fedtrain.errors import FedtrainError

    parser = argparse.ArgumentParser(prog="fedtrain")
    add_deploy_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
