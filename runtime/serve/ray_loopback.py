"""A local Ray of ``asymvq serve --ray`` that listens on 127.0.0.1 only: the driver's settings
(``loopback_only``) and each replica's own gRPC server (``replica_on_loopback``), docs/server.md.

Ray's modules are imported inside the functions: they patch Ray's private internals, and only a process
that starts or runs in such a Ray needs them.
"""
from __future__ import annotations

import os

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "ASYMVQ_RAY_LOOPBACK"  # set by loopback_only(); Ray's processes inherit it


def replica_on_loopback() -> None:
    """In a replica of a loopback-only local Ray (``loopback_only``): Serve starts an inter-deployment gRPC
    server on ``[::]:0``, every interface, hard-coded in ``ray.serve._private.replica``; bind it to 127.0.0.1.
    Called from each deployment's constructor, which Serve runs before it starts that server."""
    if os.environ.get(LOOPBACK_ENV) != "1":
        return
    from ray.serve._private import replica

    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None or getattr(add_port, "asymvq_loopback", False):
        return  # another Ray (tests/runtime/test_ray_faults.py says whether it still listens outside), or done

    def on_loopback(server, address: str):
        return add_port(server, address.replace("[::]", LOOPBACK, 1))

    on_loopback.asymvq_loopback = True
    replica.add_port_to_grpc_server = on_loopback


def loopback_only() -> None:
    """Make the local Ray this process starts listen on 127.0.0.1 only (GCS, raylet, workers, agents).

    An unauthenticated Ray reachable from the network runs anyone's jobs (CVE-2023-48022, "ShadowRay").
    ``--node-ip-address=127.0.0.1`` alone is not enough: Ray resolves a loopback node address to the
    machine's interface address and its gRPC servers bind to every interface. Ray's single-machine mode
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on Windows and macOS) keeps every address on
    the loopback; the variable reaches the processes Ray starts, and the constant it sets is set here too
    because this process has imported Ray already. ``tests/runtime/test_ray_faults.py`` reads where the
    started processes listen, so a Ray that changes this fails there."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ[LOOPBACK_ENV] = "1"  # and the replicas' own gRPC server: replica_on_loopback
    ray_constants.ENABLE_RAY_CLUSTER = False
