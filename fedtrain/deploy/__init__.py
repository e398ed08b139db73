"""The deployment kit: credentials, launchers, systemd units and status for a Flower Deployment Engine federation.

``fedtrain deploy init`` writes a CA, the SuperLink's TLS certificate and one SuperNode authentication key per
device (:mod:`fedtrain.deploy.pki`); ``superlink`` and ``supernode`` build and exec the Flower command lines
(:mod:`fedtrain.deploy.launch`); ``units`` writes systemd units (:mod:`fedtrain.deploy.units`); ``status`` asks the
SuperLink which nodes are online and which run is current (:mod:`fedtrain.deploy.status`). See deploy/README.md.
"""

from fedtrain.deploy.errors import DeployError

__all__ = ["DeployError"]
