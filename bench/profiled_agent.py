"""``python -m bench.profiled_agent --config FILE``: a node agent under cProfile (CPU time).

``bench.agent_cost_bench --profile`` starts its cluster's agent this way; the stats go to
``$HPCBATCH_BENCH_PROFILE`` when the agent stops (SIGTERM: ``cluster down``).
"""

import cProfile
import os
import sys
import time

from node_agent.main import main

profile = cProfile.Profile(time.process_time)  # CPU, not wall (a loaded machine waits)
try:
    code = profile.runcall(main)
finally:
    profile.dump_stats(os.environ.get("HPCBATCH_BENCH_PROFILE", "agent.pstats"))
sys.exit(code)
