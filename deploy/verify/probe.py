"""One APISIX call through the runner: PrepareConf naming PLUGIN, then an HTTPReqCall.

Usage: python probe.py SOCKET PLUGIN. Prints what APISIX would read, e.g.
``err=None action=stop status=201``; exit status 0 if the runner answered at all.
"""

import sys

from runner.testing import ApisixClient

path, plugin = sys.argv[1], sys.argv[2]
with ApisixClient(path, 5.0) as client:
    reply = client.http_req_call(client.prepare_conf([(plugin, "{}")]))
print(f"err={reply.err} action={reply.action} status={reply.status}")
