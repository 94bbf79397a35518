"""``python -m hpcbatch.head --config FILE``: run the head daemon."""

import argparse
import sys

from hpcbatch.head.daemon import main

parser = argparse.ArgumentParser(prog="hpcbatch-head", description="Run the hpcbatch head daemon.")
parser.add_argument("--config", required=True, help="path of the head's TOML config file")
sys.exit(main(parser.parse_args().config))
