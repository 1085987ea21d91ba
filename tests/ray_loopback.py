"""``ray`` command line for the cluster tests: every node on 127.0.0.1 only.

Ray replaces a loopback ``--node-ip-address`` by the machine's outward address; this keeps the address as given
in the ``ray start`` process and, through ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, in the processes it starts.
Usage: ``python tests/ray_loopback.py start --head --node-ip-address=127.0.0.1 ...``.
"""
import os
import sys

import ray._private.services as services

services.get_node_ip_address = lambda address=None: "127.0.0.1"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # read by the node's processes when they import ray

from ray.scripts.scripts import main  # noqa: E402

sys.argv[0] = "ray"
main()
