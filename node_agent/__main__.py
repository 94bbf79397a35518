"""``python -m node_agent --config FILE``: run a node agent."""

import sys

from node_agent.main import main

sys.exit(main())
